"""Live updates for the dashboard: a hub that fans events out to SSE streams.

The collector publishes what it has committed (alert transitions, node
states, ticket changes); each open ``GET /api/v1/stream`` holds a bounded
queue. A browser that cannot keep up loses its oldest events and is told to
reload (``resync``) rather than slowing ingest down. A stream ends, with an
``end`` event saying why, when what it was opened with stops holding (its
token expires or is revoked).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

QUEUE_MAX = 1000


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
