"""PostgreSQL: ``readings`` partitioned by reading time, a week per partition.

Years of readings at city scale (billions of rows) stay cheap to keep and to
expire: ``readings`` is a natively partitioned table (``PARTITION BY RANGE
(ts)``), one partition per week (Monday 00:00 UTC to the next), named
``readings_wYYYYMMDD`` after its first day, and a default partition,
``readings_default``, that takes what falls outside them (a box whose clock is
years off, a backlog older than the oldest week): nothing is refused for its
time. Every partition carries the parent's indexes: the primary key
``(id, ts)`` (the rollup and the InfluxDB export follow readings by id) and
``(series, ts)`` (history, latest, peaks).

The collector's retention job (``cloud.retention``) makes the partitions of
this week and the next ``AHEAD`` ones ahead of time (moving any of their rows
out of the default partition), and drops a week once all of it is older than
the raw horizon and every follower of the table is past its ids. One
collector does it at a time (an advisory lock; the others skip the round).
Dropping or attaching a partition briefly takes a lock that stalls ingest, so
it waits at most ``LOCK_TIMEOUT`` and otherwise tries again on the next round.

SQLite keeps one plain table.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from cloud.db.schema import JOB_ROWS

if TYPE_CHECKING:  # the store imports the migrations, which import this
    from cloud.db.store import Store

log = logging.getLogger("floodgate.cloud.partitions")

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
MONDAY_MS = 4 * DAY_MS  # 1970-01-01 was a Thursday: weeks start 4 days later, on Mondays
AHEAD = 2  # weeks made ahead of the current one
DEFAULT = "readings_default"
LOCK = 4244  # advisory lock: one collector at a time looks after the partitions
LOCK_TIMEOUT = "1s"


def week_of(ts: int) -> int:
    """The first millisecond of the week (Monday 00:00 UTC) holding ``ts``."""
    return (ts - MONDAY_MS) // WEEK_MS * WEEK_MS + MONDAY_MS


def name_of(week: int) -> str:
    day = dt.datetime.fromtimestamp(week / 1000, dt.UTC)
    return f"readings_w{day:%Y%m%d}"


def week_of_name(name: str) -> int | None:
    """The week a partition's name stands for (None for the default partition or another table)."""
    if not name.startswith("readings_w"):
        return None
    day = dt.datetime.strptime(name[len("readings_w") :], "%Y%m%d").replace(tzinfo=dt.UTC)
    return int(day.timestamp() * 1000)


def create_parent(sequence: str) -> list[str]:
    """SQL making the parent and its default partition (migration 17), ids from ``sequence``.

    ``sequence`` is the one the plain table's ids came from: ids go on where they were.
    """
    return [
        "CREATE TABLE readings ("
        f" id BIGINT NOT NULL DEFAULT nextval('{sequence}'),"
        " series INTEGER NOT NULL,"
        " ts BIGINT NOT NULL,"
        " value DOUBLE PRECISION NOT NULL,"
        " quality VARCHAR(8) NOT NULL,"
        " CONSTRAINT readings_pkey PRIMARY KEY (id, ts)"
        ") PARTITION BY RANGE (ts)",
        "CREATE INDEX readings_series_ts ON readings (series, ts)",
        f"ALTER SEQUENCE {sequence} OWNED BY readings.id",
        f"CREATE TABLE {DEFAULT} PARTITION OF readings DEFAULT",
    ]


def make_week(week: int) -> list[str]:
    """SQL making the partition of ``week`` (which must not exist), its rows moved out of the default.

    Made apart and attached, which locks the parent less than ``CREATE TABLE … PARTITION OF``.
    """
    name, lo, hi = name_of(week), week, week + WEEK_MS
    return [
        f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'",
        # What ATTACH takes anyway, taken first: a lock raised midway (from a weaker one) would
        # deadlock with a rollup that read the default and is about to delete from it.
        f"LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE",
        f"CREATE TABLE {name} (LIKE readings INCLUDING DEFAULTS)",
        f"ALTER TABLE {name} ADD CONSTRAINT {name}_range CHECK (ts >= {lo} AND ts < {hi})",
        f"WITH moved AS (DELETE FROM {DEFAULT} WHERE ts >= {lo} AND ts < {hi}"  # noqa: S608
        f" RETURNING id, series, ts, value, quality) INSERT INTO {name} SELECT * FROM moved",
        f"ALTER TABLE readings ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})",
        f"ALTER TABLE {name} DROP CONSTRAINT {name}_range",
    ]


WEEKS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'readings'::regclass"
)


def is_partitioned(run: Callable[[str], Any]) -> bool:
    return bool(run("SELECT relkind = 'p' FROM pg_class WHERE oid = 'readings'::regclass").scalar())


async def _weeks(conn: Any) -> list[int]:
    names = (await conn.execute(text(WEEKS))).scalars().all()
    return sorted(w for w in map(week_of_name, names) if w is not None)


async def make_ahead(store: Store, now: int) -> list[str]:
    """Make this week's partition and the next ``AHEAD`` weeks' if missing; returns the names made.

    Each in a transaction of its own; skipped while another collector holds the job's lock, and a
    week whose lock is not had within ``LOCK_TIMEOUT`` is left to the next round.
    """
    made: list[str] = []
    if store.dialect != "postgresql":
        return made
    first = week_of(now)
    for week in range(first, first + (AHEAD + 1) * WEEK_MS, WEEK_MS):
        try:
            async with store.begin() as conn:
                if not (await conn.execute(text(f"SELECT pg_try_advisory_xact_lock({LOCK})"))).scalar():
                    return made
                if week in await _weeks(conn):
                    continue
                for sql in make_week(week):
                    await conn.execute(text(sql))
        except Exception as exc:  # a lock not had in time: the next round tries again
            log.warning("could not make partition %s: %s", name_of(week), exc)
            return made
        made.append(name_of(week))
        log.info("partition %s made", name_of(week))
    return made


async def drop_expired(store: Store, now: int, raw_ms: int) -> tuple[int, int]:
    """Drop every week wholly older than ``now - raw_ms`` whose ids every follower is past.

    Returns (weeks dropped, their rows as the planner last counted them: ``reltuples``, kept
    by autovacuum's analyze, as counting a week of a city's readings would take minutes).
    """
    dropped = rows = 0
    if store.dialect != "postgresql":
        return dropped, rows
    async with store.read() as conn:
        weeks = await _weeks(conn)
    for week in weeks:
        if week + WEEK_MS > now - raw_ms:
            break
        name = name_of(week)
        try:
            async with store.begin() as conn:
                if not (await conn.execute(text(f"SELECT pg_try_advisory_xact_lock({LOCK})"))).scalar():
                    break
                jobs = {f"j{i}": name for i, name in enumerate(JOB_ROWS)}  # not followers: hold nothing back
                names = ", ".join(":" + k for k in jobs)
                followers = f"SELECT min(done_id) FROM rollup_state WHERE name NOT IN ({names})"  # noqa: S608
                done = (await conn.execute(text(followers), jobs)).scalar() or 0
                top = (await conn.execute(text(f"SELECT max(id) FROM {name}"))).scalar()  # noqa: S608
                if top is not None and top > done:
                    break  # not rolled up (or exported) yet
                known = f"SELECT reltuples FROM pg_class WHERE oid = '{name}'::regclass"  # noqa: S608
                count = (await conn.execute(text(known))).scalar()
                await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                await conn.execute(text(f"DROP TABLE {name}"))
        except Exception as exc:
            log.warning("could not drop partition %s: %s", name, exc)
            break
        dropped += 1
        rows += max(0, int(count or 0))
        log.info("partition %s dropped (about %d readings)", name, max(0, int(count or 0)))
    return dropped, rows
