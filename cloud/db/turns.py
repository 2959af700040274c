"""Jobs that one collector at a time runs (the forecast round, the InfluxDB export): a turn on a lease.

On PostgreSQL a turn is a session advisory lock, tried (never waited for) on a connection of
its own in autocommit, so no transaction stays open while the job runs (a slow InfluxDB made
one idle in transaction) and a collector that does not get the turn holds nothing. A collector
that dies releases it with its connection. One that hangs (frozen, or stuck awaiting something
that never comes) loses it on a lease: the server ends the lock connection after ``lease_ms``
idle (``idle_session_timeout``, PostgreSQL 14+), and the holder renews it, a query every third
of it, only while it is alive and for at most ``max_ms``. SQLite has one collector: always its turn.

A holder that loses its turn is stopped: when its job runs past ``max_ms``, or it finds its lock
connection ended (it was frozen past the lease, and another collector may have the turn), the
job's task is cancelled and the block raises ``LeaseLost``. A job stuck and later let go, or a
process thawed, would otherwise go on writing after the collector that took the turn over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from cloud.db.store import Conn, Store

LEASE_MS = 60_000
MAX_MS = 3_600_000
KEY = 4245  # pg_advisory_lock(KEY, hashtext(name)): one lock per job name
LOST = "the turn was lost"  # the cancel message of a job stopped so
log = logging.getLogger("floodgate.cloud.turns")


class LeaseLost(Exception):
    """The job's turn was lost while it ran (``turn``): it was stopped."""


async def _renew(lock: Conn, lease_ms: int, max_ms: int, stop: asyncio.Event, lost: list[str]) -> None:
    """Keep the lock connection from idling out while the job runs, at most ``max_ms``; why the
    turn is lost goes in ``lost`` (then the job is stopped)."""
    deadline = time.monotonic() + max_ms / 1000
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            lost.append(f"it ran past its longest, {max_ms / 1000:g} s")
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(lease_ms / 3000, left))
        if stop.is_set():
            return
        try:
            await lock.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            lost.append(f"its lock connection ended ({type(exc).__name__}): held past the lease")
            return


@contextlib.asynccontextmanager
async def turn(
    store: Store, name: str, lease_ms: int = LEASE_MS, max_ms: int = MAX_MS
) -> AsyncIterator[bool]:
    """Whether this collector has job ``name``'s turn, held until the block ends (on a lease)."""
    if store.dialect != "postgresql":
        yield True
        return
    key = {"name": name}
    async with store.engine.connect() as raw:
        lock = await raw.execution_options(isolation_level="AUTOCOMMIT")
        got = (await lock.execute(text(f"SELECT pg_try_advisory_lock({KEY}, hashtext(:name))"), key)).scalar()
        if not got:
            yield False
            return
        stop = asyncio.Event()
        renew: asyncio.Task[None] | None = None
        lost: list[str] = []
        owner = asyncio.current_task()
        assert owner is not None

        def stop_job(_: asyncio.Task[None]) -> None:
            if lost and not stop.is_set():  # the job still running (not yet on its way out)
                owner.cancel(LOST)

        try:
            await lock.execute(text(f"SET idle_session_timeout = {int(lease_ms)}"))
            renew = asyncio.create_task(_renew(lock, lease_ms, max_ms, stop, lost))
            renew.add_done_callback(stop_job)
            yield True
        except asyncio.CancelledError:
            # Ours (the turn lost) and nobody else's: said as such; any other is passed on.
            if lost and owner.uncancel() == 0:
                raise LeaseLost(f"{name} stopped: {lost[0]}") from None
            raise
        finally:
            stop.set()
            if renew is not None:
                await asyncio.gather(renew, return_exceptions=True)
            try:
                await lock.execute(text(f"SELECT pg_advisory_unlock({KEY}, hashtext(:name))"), key)
                await lock.execute(text("SET idle_session_timeout = 0"))  # back to the pool as it came
            except SQLAlchemyError as exc:
                log.warning(
                    "%s outlasted its turn's lease (the server ended its lock connection): another"
                    " collector may have taken the turn meanwhile",
                    name,
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
                await raw.invalidate()
