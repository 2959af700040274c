"""Live updates for the dashboard: a hub that fans events out to SSE streams.

The collector publishes what it has committed (alert transitions, node
states, ticket changes); each open ``GET /api/v1/stream`` holds a bounded
queue. A browser that cannot keep up loses its oldest events and is told to
reload (``resync``) rather than slowing ingest down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
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

    async def stream(self, keepalive_s: float = 15.0) -> AsyncIterator[bytes]:
        """Server-sent events, until the client goes away."""
        q: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(QUEUE_MAX)
        self._queues.add(q)
        getter: asyncio.Task[tuple[str, dict[str, Any]]] | None = None
        try:
            yield b"event: hello\ndata: {}\n\n"
            while True:
                # A get that timed out is kept for the next turn, never cancelled:
                # cancelling it could drop the event it just took.
                getter = getter or asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({getter}, timeout=keepalive_s)
                if not done:
                    yield b": keepalive\n\n"
                    continue
                kind, data = getter.result()
                getter = None
                body = json.dumps(data, ensure_ascii=False, default=str)
                yield f"event: {kind}\ndata: {body}\n\n".encode()
        finally:
            if getter is not None:
                getter.cancel()
            self._queues.discard(q)
