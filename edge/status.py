"""The agent's local status endpoint: ``GET /status`` on 127.0.0.1 only, JSON.

For ``floodgate edge status`` at the roadside. No web framework (the box stays
small): a few lines of HTTP/1.1 over asyncio streams, one request per
connection, bound to localhost so nothing on the network can read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("floodgate.edge.status")
MAX_REQUEST = 8192


class StatusServer:
    def __init__(
        self, port: int, status: Callable[[], Awaitable[dict[str, Any]]], host: str = "127.0.0.1"
    ) -> None:
        self.host = host
        self.port = port
        self.status = status
        self.server: asyncio.Server | None = None

    @property
    def bound_port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def run(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        log.info("status endpoint on http://%s:%d/status", self.host, self.bound_port)
        try:
            await asyncio.Event().wait()  # serve until cancelled
        finally:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            line = head[: min(len(head), MAX_REQUEST)].split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) != 3 or parts[0] != "GET":
                await self._reply(writer, 405, {"error": "only GET /status"})
            elif parts[1].split("?")[0] != "/status":
                await self._reply(writer, 404, {"error": "try /status"})
            else:
                await self._reply(writer, 200, await self.status())
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False, default=str).encode()
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[code]
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()
