"""Optional export of readings to InfluxDB: line protocol over HTTP to ``/write``.

``/write`` is what InfluxDB 1.x serves, and 2.x (v1 compatibility) and 3.x
accept too. The export follows the readings table by id, like the one-minute
rollup (``rollup_state`` row ``influx``): each round posts the next batch of
rows up to the id mark the previous round saw and moves the watermark only
after InfluxDB answered 204. A failed post is retried with backoff; nothing is
held in memory, so a restart or a long InfluxDB outage loses nothing (raw rows
are not deleted before they are exported). Posting a batch twice (two
collectors, a crash between post and watermark) is harmless: a point with the
same series and time overwrites itself.

Points: measurement ``reading``, tags ``node``, ``dev``, ``metric``; fields
``value`` (float) and ``quality`` (string); time in milliseconds.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

import httpx

from cloud.db import readings, turns
from cloud.db.store import Store
from floodgate.clock import Clock

log = logging.getLogger("floodgate.cloud.influx")
NAME = "influx"
# An export round (one batch: a read and one /write) renews its turn's lease for at most this long.
EXPORT_MAX_MS = 300_000


def _tag(v: str) -> str:
    return v.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _str_field(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line(node: str, dev: str, metric: str, ts: int, value: float, quality: str) -> str:
    return (
        f"reading,node={_tag(node)},dev={_tag(dev)},metric={_tag(metric)} "
        f"value={float(value)!r},quality={_str_field(quality)} {ts}"
    )


@dataclass(frozen=True)
class InfluxSettings:
    url: str
    database: str = "floodgate"
    username: str | None = None
    password: str | None = None
    batch_max: int = 5000
    interval_ms: int = 5_000
    retry_max_ms: int = 60_000


class InfluxExport:
    def __init__(
        self, store: Store, clock: Clock, settings: InfluxSettings, http: httpx.AsyncClient | None = None
    ):
        self.store = store
        self.clock = clock
        self.s = settings
        self.http = http or httpx.AsyncClient(timeout=15)
        self.exported = 0
        self.failures = 0
        self.last_error: str | None = None

    async def run_once(self) -> int:
        """Export the next batch; returns how many points went out. Raises when InfluxDB refuses.

        With several collectors, one exports at a time (``turns.turn``, on a lease: one that
        hangs mid-export loses it); the others' rounds send nothing."""
        try:
            async with turns.turn(self.store, NAME, max_ms=EXPORT_MAX_MS) as mine:
                if not mine:
                    return 0
                return await self._export()
        except turns.LeaseLost as exc:  # not InfluxDB's failure: another collector exports now
            log.warning("%s", exc)
            return 0

    async def _export(self) -> int:
        st = await readings.follower_state(self.store, NAME, self.clock.now_ms())
        done, mark = st["done_id"], st["mark_id"]
        top, rows = await readings.named_after(self.store, done, mark, self.s.batch_max)
        if rows:
            body = "\n".join(
                line(r["node"], r["dev"], r["metric"], r["ts"], r["value"], r["quality"]) for r in rows
            ).encode()
            params = {"db": self.s.database, "precision": "ms"}
            r = await self.http.post(
                self.s.url.rstrip("/") + "/write", params=params, content=body, headers=self._auth()
            )
            if r.status_code != 204:
                raise RuntimeError(f"InfluxDB answered {r.status_code}: {r.text[:200]}")
        new_done = int(rows[-1]["id"]) if rows else done
        caught_up = len(rows) < self.s.batch_max
        await readings.follower_moved(
            self.store,
            NAME,
            done,
            max(new_done, mark) if caught_up else new_done,
            max(mark, top) if caught_up else mark,
            self.clock.now_ms(),
        )
        self.exported += len(rows)
        return len(rows)

    def _auth(self) -> dict[str, str]:
        """The credentials go in the Authorization header (Basic), never in the URL, where access
        logs, proxies and httpx's own request log would show them."""
        if not self.s.username:
            return {}
        pair = f"{self.s.username}:{self.s.password or ''}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}

    async def ensure_database(self) -> None:
        """CREATE DATABASE (1.x); a 2.x or 3.x server maps databases itself and may refuse it."""
        params: dict[str, str] = {"q": f'CREATE DATABASE "{self.s.database}"'}
        try:
            await self.http.post(self.s.url.rstrip("/") + "/query", params=params, headers=self._auth())
        except httpx.HTTPError as exc:
            log.warning("InfluxDB not reachable yet: %s", exc)

    async def run(self) -> None:
        delay = self.s.interval_ms
        await self.ensure_database()
        try:
            while True:
                try:
                    n = await self.run_once()
                    if self.last_error is not None:
                        log.info("InfluxDB export recovered")
                    self.last_error = None
                    delay = 0 if n >= self.s.batch_max else self.s.interval_ms
                except Exception as exc:
                    self.failures += 1
                    if self.last_error is None:
                        log.error("InfluxDB export failing (will retry): %s", exc)
                    self.last_error = str(exc)
                    delay = min(max(delay * 2, 1000), self.s.retry_max_ms)
                await self.clock.sleep_until(self.clock.now_ms() + delay)
        finally:
            await self.http.aclose()
