"""Live events between collectors sharing one PostgreSQL: NOTIFY after the commit, LISTEN in each.

A collector sends what it committed (``notify``) on the channel ``floodgate_live``;
every collector, itself included (PostgreSQL delivers a session's own
notifications to it), holds one connection that LISTENs (:class:`Listener`) and
hands each payload to its live hub. So every hub gets every event once,
whichever collector made it.

A payload is at most ``PAYLOAD_MAX`` bytes (NOTIFY refuses more than 8000): the
caller chunks (``cloud.live``). PostgreSQL folds identical payloads sent in one
transaction into one, so each carries a sequence number of its sender.

The listening connection is checked every ``check_s`` (a query: a connection
dead without a FIN would otherwise stay silent); when it goes, the listener
reconnects with backoff and jitter, and after each reconnection calls
``on_gap``: what was sent meanwhile was not heard, so the hub tells its clients
to fetch again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

import asyncpg
from sqlalchemy import text

from cloud.db.store import Store

log = logging.getLogger("floodgate.cloud.live")
CHANNEL = "floodgate_live"
PAYLOAD_MAX = 7900  # bytes; PostgreSQL's limit is 8000
_NOTIFY = text(
    "SELECT pg_notify(:channel, p)"
    " FROM unnest(CAST(:payloads AS text[])) WITH ORDINALITY AS u(p, i) ORDER BY i"
)


async def notify(store: Store, payloads: Sequence[str], channel: str = CHANNEL) -> None:
    """Send ``payloads`` (each at most ``PAYLOAD_MAX`` bytes), in order, in one transaction."""
    if payloads:
        async with store.begin() as conn:
            await conn.execute(_NOTIFY, {"channel": channel, "payloads": list(payloads)})


def dsn(url: str) -> str:
    """asyncpg's form of a ``postgresql://`` (or ``postgresql+asyncpg://``) url."""
    return "postgresql://" + url.split("://", 1)[1]


class Listener:
    """One connection LISTENing on ``channel``, reconnected when it goes."""

    def __init__(
        self,
        url: str,
        on_payload: Callable[[str], None],
        on_gap: Callable[[str], None],
        *,
        channel: str = CHANNEL,
        check_s: float = 5.0,
        retry_max_s: float = 5.0,
    ) -> None:
        self.dsn = dsn(url)
        self.on_payload = on_payload
        self.on_gap = on_gap
        self.channel = channel
        self.check_s = check_s
        self.retry_max_s = retry_max_s
        self.listening = asyncio.Event()
        self.connections = 0  # successful LISTENs so far (the first, then each reconnection)
        self.conn: asyncpg.Connection | None = None

    async def run(self) -> None:
        delay = 0.1
        failing = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(self.channel, self._heard)
                self.conn = conn
                self.connections += 1
                self.listening.set()
                delay = 0.1
                if failing:
                    log.warning("live feed listening again; clients are told to fetch again")
                    failing = False
                if self.connections > 1:
                    self.on_gap("the live feed reconnected: events may have been missed")
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), self.check_s)
                    except TimeoutError:
                        await conn.fetchval("SELECT 1", timeout=self.check_s)
                raise ConnectionError("the listening connection closed")
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if not failing:
                    log.error("live feed cannot listen: %s; retrying", exc or type(exc).__name__)
                    failing = True
                else:
                    log.debug("live feed still cannot listen: %s", exc)
            finally:
                self.listening.clear()
                self.conn = None
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            delay = min(delay * 2, self.retry_max_s)

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            self.on_payload(payload)
        except Exception:
            log.exception("a live payload could not be handled")

    def backend_pid(self) -> int | None:
        """The server process of the listening connection (tests end it to cut the link)."""
        conn = self.conn
        return None if conn is None else int(conn.get_server_pid())
