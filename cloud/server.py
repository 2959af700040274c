"""Serving the API with uvicorn inside the collector's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI


class ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the collector's runner owns the signals."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        super().__init__(
            uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off")
        )

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    @property
    def port(self) -> int | None:
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return None

    async def run_until_cancelled(self) -> None:
        task = asyncio.create_task(self._serve_or_fail())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self.should_exit = True
            await asyncio.wait({task}, timeout=10)
            raise

    async def _serve_or_fail(self) -> None:
        try:
            await self.serve()
        except SystemExit as exc:  # uvicorn exits when it cannot listen
            c = self.config
            raise OSError(f"the API cannot listen on {c.host}:{c.port} (in use, or not allowed)") from exc
        if not self.started and not self.should_exit:
            c = self.config
            raise OSError(f"the API cannot listen on {c.host}:{c.port} (in use, or not allowed)")
