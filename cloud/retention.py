"""Telemetry retention: raw readings for ``raw_days``, one-minute aggregates kept; and the
forecasts' (``forecast_days``): rainfall forecasts and site runs, hourly, once across collectors
(``cloud.db.forecast.expire``), every fit kept.

Aggregates are built from readings by insert order (the ``id``), not by
reading time, so a backlog that a box sends hours late is still counted.
Each run rolls up the ids up to the highest id the previous run saw (a
``rollup_interval`` ago), so a writer's transaction still in flight when an id
was taken has had that long to commit. Raw rows are deleted only once they
are older than ``raw_days`` and already rolled up. On PostgreSQL, readings are
partitioned by week: a week goes as a whole once all of it is older than
``raw_days`` and rolled up (so raw rows stay up to a week longer), and each run
makes the coming weeks' partitions first (``cloud.db.partitions``).

History queries (:meth:`Retention.history`) read raw rows inside the raw
horizon and aggregates beyond it.
"""

from __future__ import annotations

import logging
from typing import Any

from cloud.db import forecast, partitions, readings
from cloud.db.store import Store
from floodgate.clock import Clock

log = logging.getLogger("floodgate.cloud.retention")

DAY_MS = 86_400_000
FORECAST_EXPIRY_MS = 3_600_000  # the forecasts' retention runs hourly (once across collectors)
NAME = readings.ROLLUP


class Retention:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        raw_days: float = 30.0,
        interval_ms: int = 60_000,
        forecast_days: float | None = None,
    ) -> None:
        self.store = store
        # Rainfall forecasts and site runs kept this long (None: not expired here); hourly.
        self.forecast_ms = None if forecast_days is None else int(forecast_days * DAY_MS)
        self.forecasts_deleted = 0
        self.clock = clock
        self.raw_ms = int(raw_days * DAY_MS)
        self.interval_ms = interval_ms
        self.rolled = 0
        self.deleted = 0
        self.weeks_dropped = 0

    async def run_once(self) -> tuple[int, int]:
        """Roll up what is safe to, then drop expired raw rows; returns (rolled, deleted)."""
        now = self.clock.now_ms()
        await partitions.make_ahead(self.store, now)
        rolled, deleted = await readings.roll_up_and_expire(self.store, now, self.raw_ms)
        weeks, rows = await partitions.drop_expired(self.store, now, self.raw_ms)
        deleted += rows
        self.weeks_dropped += weeks
        if self.forecast_ms is not None:
            done = await forecast.expire(self.store, now, self.forecast_ms, FORECAST_EXPIRY_MS)
            if done is not None:
                self.forecasts_deleted += sum(done)
                if any(done):
                    log.info(
                        "expired forecasts",
                        extra={"rainfall_forecasts": done[0], "site_runs": done[1]},
                    )
        self.rolled += rolled
        self.deleted += deleted
        return rolled, deleted

    async def next_run(self) -> int:
        return self.clock.now_ms() + self.interval_ms

    async def history(
        self,
        node: str,
        dev: str,
        metric: str,
        start: int | None,
        end: int | None,
        resolution_s: int,
        limit: int,
        good_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Points between ``start`` and ``end``: raw (resolution 0) or per bucket with min/avg/max/n
        (``good_only``: of the readings of quality good, avg and n; ``readings.history``)."""
        horizon = self.clock.now_ms() - self.raw_ms
        return await readings.history(
            self.store, node, dev, metric, start, end, resolution_s, limit, horizon, good_only
        )
