"""``comms_lost``: a node, or a sensor on a live node, silent for longer than expected.

The collector raises these alerts itself (the box cannot say it is silent).
A node is silent when nothing has been received from it for ``after_ms``; a
level or immersion sensor is silent when its newest reading is that old while
its node still talks. Each silence is an alert episode like any other
(``node`` is the device id for a whole node), stored with its transitions and
turned into a ticket by the same rules; hearing from it again clears it.
"""

from __future__ import annotations

from collections.abc import Callable

from cloud.db import sites
from cloud.db.store import Conn, Store
from cloud.ingest import Ingestor, Transition
from cloud.tickets import TicketEvent, Tickets
from floodgate import wire
from floodgate.clock import Clock
from floodgate.ids import new_ulid
from floodgate.vocab import DEVICE_KINDS

NODE_DEV = "node"
CHUNK = 100  # transitions a transaction at most (each one holds the ticket lock)
SENSOR_KINDS = tuple(k for k, d in DEVICE_KINDS.items() if d.sensor)


class Silence:
    def __init__(
        self,
        store: Store,
        ingestor: Ingestor,
        tickets: Tickets | None,
        clock: Clock,
        after_ms: int = 300_000,
        behind: Callable[[], int | None] | None = None,
        chunk: int = CHUNK,
    ) -> None:
        self.store = store
        self.ingestor = ingestor
        self.tickets = tickets
        self.clock = clock
        self.after_ms = after_ms
        # How far behind now this collector's intake is (``CaughtUp.behind_ms``), None while
        # it has not caught up since it started: what is not taken in yet is not silence.
        self.behind = behind
        self.chunk = chunk
        self.held = 0  # checks that judged nothing: the intake had not caught up since start

    async def check(self) -> list[TicketEvent]:
        """Raise and clear comms_lost alerts as things stand now.

        A node is judged against how far the intake has taken in what the broker holds, not
        against now: with the collectors ten minutes behind, every node heard ten minutes ago
        is late, not silent (those were thousands of false tickets on a city's backlog).

        Once across collectors: with something to do, the check takes the ticket lock
        (``Store.lock_tickets``, which every change of an episode or a ticket takes) and looks
        again, so a collector that checked at the same moment finds the episodes the first one
        opened or closed rather than opening its own. At most ``chunk`` transitions a
        transaction: a thousand silences at once do not hold the lock every alert waits on.
        """
        lag = 0 if self.behind is None else self.behind()
        if lag is None:
            self.held += 1
            return []
        now = self.clock.now_ms()
        limit = now - lag - self.after_ms
        out: list[TicketEvent] = []
        # This collector's last heard times written first (``Store.flush_heard``): a node heard
        # a moment ago is not found silent. Other collectors' lag by ``HEARD_FLUSH_S`` at most,
        # against a silence of minutes (``after_ms``).
        await self.store.flush_heard()
        async with self.store.read() as conn:
            if not await self._changes(conn, now, limit):
                return out  # most checks: a read, no write lock (SQLite's begin() is BEGIN IMMEDIATE)
        while True:
            async with self.store.begin() as conn:
                await self.store.lock_tickets(conn)
                changes = await self._changes(conn, now, limit)
                for key, alert_id, level, prev, since in changes[: self.chunk]:
                    await self._transition(conn, key, alert_id, level, prev, now, since, out)
            if len(changes) <= self.chunk:
                return out

    async def _changes(
        self, conn: Conn, now: int, limit: int
    ) -> list[tuple[tuple[str, str], str, str, str, int | None]]:
        """The transitions due now: (key, alert id, level, prev, silent since), raised then cleared;
        silent: nothing heard since ``limit``."""
        last_seen = await sites.last_seen(conn)
        sensors = await sites.sensor_reading_times(conn, SENSOR_KINDS)
        open_ = await sites.open_alerts(conn, "comms_lost")
        silent: dict[tuple[str, str], int] = {}
        for node, seen in last_seen.items():
            if seen is not None and seen < limit:
                silent[(node, NODE_DEV)] = seen
        for node, dev, ts in sensors:
            if (node, NODE_DEV) in silent or last_seen.get(node) is None:
                continue
            if ts is not None and ts < limit:
                silent[(node, dev)] = ts
        changes: list[tuple[tuple[str, str], str, str, str, int | None]] = [
            (key, new_ulid(now), "warning", "clear", since)
            for key, since in sorted(silent.items())
            if key not in open_
        ]
        changes += [
            (key, row["id"], "clear", row["level"], None)
            for key, row in sorted(open_.items())
            if key not in silent
        ]
        return changes

    async def _transition(
        self,
        conn: Conn,
        key: tuple[str, str],
        alert_id: str,
        level: str,
        prev: str,
        now: int,
        since: int | None,
        out: list[TicketEvent],
    ) -> None:
        node, dev = key
        reason = f"nothing heard for {(now - since) // 1000} s" if since is not None else "heard again"
        a = wire.Alert(id=alert_id, dev=dev, kind="comms_lost", level=level, prev=prev, ts=now, reason=reason)  # type: ignore[arg-type]
        # Raised here, not received: stored under an id of the collector's, with no envelope.
        await self.ingestor.record_transitions(conn, [Transition(new_ulid(now), node, a)])
        if self.tickets is not None:
            await self.tickets.on_alert(conn, node, a, out)

    async def next_check(self) -> int:
        return self.clock.now_ms() + min(self.after_ms // 4, 60_000)
