"""Live updates for the dashboard: a hub that fans events out to SSE streams.

The collector publishes what it has committed (alert transitions, node
states, ticket changes); each open ``GET /api/v1/stream`` holds a bounded
queue. A browser that cannot keep up loses its oldest events and is told to
reload (``resync``) rather than slowing ingest down. A stream ends, with an
``end`` event saying why, when what it was opened with stops holding (its
token expires or is revoked).

With several collectors on one PostgreSQL, :class:`Feed` carries each event to
every collector's hub (``cloud.db.live``: NOTIFY and LISTEN), so a dashboard
sees everything whichever collector it is served by.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from cloud.db import live as live_db
from cloud.db.store import Store
from floodgate.ids import new_ulid

log = logging.getLogger("floodgate.cloud.live")
QUEUE_MAX = 1000
OUTGOING_MAX = 20_000  # live events queued for the NOTIFY sender before they give way to a resync


class Hub:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()

    @property
    def listeners(self) -> int:
        return len(self._queues)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        for q in list(self._queues):
            if q.full():
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(("resync", {}))
            else:
                q.put_nowait((kind, data))

    async def stream(
        self, keepalive_s: float = 15.0, until: Callable[[], Awaitable[str]] | None = None
    ) -> AsyncIterator[bytes]:
        """Server-sent events, until the client goes away or ``until()`` returns (then an ``end``
        event with its reason, and the response ends)."""
        q: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(QUEUE_MAX)
        self._queues.add(q)
        getter: asyncio.Future[tuple[str, dict[str, Any]]] | None = None
        ender: asyncio.Future[str] | None = None
        try:
            yield b"event: hello\ndata: {}\n\n"
            if until is not None:
                ender = asyncio.ensure_future(until())
            while True:
                # A get that timed out is kept for the next turn, never cancelled:
                # cancelling it could drop the event it just took.
                getter = getter or asyncio.ensure_future(q.get())
                waiting: set[asyncio.Future[Any]] = {getter} if ender is None else {getter, ender}
                done, _ = await asyncio.wait(
                    waiting, timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED
                )
                if ender is not None and ender in done:
                    reason = json.dumps({"reason": ender.result()})
                    yield f"event: end\ndata: {reason}\n\n".encode()
                    return
                if not done:
                    yield b": keepalive\n\n"
                    continue
                kind, data = getter.result()
                getter = None
                body = json.dumps(data, ensure_ascii=False, default=str)
                yield f"event: {kind}\ndata: {body}\n\n".encode()
        finally:
            for f in (getter, ender):
                if f is not None:
                    f.cancel()
            self._queues.discard(q)


Event = tuple[str, dict[str, Any]]


class Feed:
    """Where the collector's live events go: this process's :class:`Hub` alone (SQLite: one
    collector), or, on PostgreSQL, every collector's hub through ``cloud.db.live`` (NOTIFY after
    the commit, LISTEN in each), the sender's included, so each hub hears each event once.

    Events are packed into as few NOTIFY payloads as fit (``PAYLOAD_MAX`` bytes each); one
    event too large for a payload alone goes as a ``resync`` (the dashboard fetches again). If
    the NOTIFY fails, the events go to this hub alone (the other collectors' clients catch up
    at their next event or reload). While the listening connection is down nothing is heard;
    once it is back every client gets a ``resync``.
    """

    def __init__(self, hub: Hub, store: Store, *, check_s: float = 5.0) -> None:
        self.hub = hub
        self.store = store
        self.shared = store.dialect == "postgresql"
        self._sent = 0
        self._origin = new_ulid()[-10:]
        self._queue: list[Event] = []
        self._wake = asyncio.Event()
        self.listener: live_db.Listener | None = None
        if self.shared:
            self.listener = live_db.Listener(store.url, self.heard, self.gap, check_s=check_s)

    @property
    def listening(self) -> bool:
        return self.listener is None or self.listener.listening.is_set()

    async def publish(self, events: list[Event]) -> None:
        """Events committed by this collector, to every hub. On PostgreSQL they are queued for
        the sender (``run``), which sends what has queued up in one transaction: the ingest
        path never waits for a NOTIFY."""
        if not events:
            return
        if not self.shared:
            if self.hub.listeners:
                for kind, data in events:
                    self.hub.publish(kind, data)
            return
        if len(self._queue) + len(events) > OUTGOING_MAX:
            # The database is slow or away: what is queued goes, a resync takes its place.
            self._queue = [("resync", {"reason": "the live feed fell behind"})]
        else:
            self._queue += events
        self._wake.set()

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            events, self._queue = self._queue, []
            if not events:
                continue
            try:
                await live_db.notify(self.store, self.pack(events))
            except Exception as exc:
                log.warning("live events not shared with the other collectors: %s", exc)
                for kind, data in events:
                    self.hub.publish(kind, data)

    def pack(self, events: list[Event]) -> list[str]:
        """``events`` as NOTIFY payloads, in order, none over ``PAYLOAD_MAX`` bytes."""
        payloads: list[str] = []
        parts: list[str] = []
        size = 0
        room = live_db.PAYLOAD_MAX - 64  # the envelope: origin and number

        def flush() -> None:
            nonlocal parts, size
            if parts:
                self._sent += 1
                payloads.append(f'{{"o":"{self._origin}","n":{self._sent},"e":[{",".join(parts)}]}}')
                parts, size = [], 0

        for kind, data in events:
            one = json.dumps([kind, data], ensure_ascii=False, default=str, separators=(",", ":"))
            n = len(one.encode())
            if n > room:
                log.info("a live %s event of %d bytes is too large to share: a resync instead", kind, n)
                one = json.dumps(["resync", {"reason": f"a {kind} event too large for the live feed"}])
                n = len(one.encode())
            if size + n + 1 > room:
                flush()
            parts.append(one)
            size += n + 1
        flush()
        return payloads

    def heard(self, payload: str) -> None:
        """A payload from the channel (any collector's, this one's included): to this hub."""
        for kind, data in json.loads(payload)["e"]:
            self.hub.publish(kind, data)

    def gap(self, why: str) -> None:
        self.hub.publish("resync", {"reason": why})

    async def run(self) -> None:
        if self.listener is not None:
            sender = asyncio.create_task(self._send(), name="live-sender")
            try:
                await self.listener.run()
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        else:
            await asyncio.Future()  # nothing to listen to: one process
