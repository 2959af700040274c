"""Run a long-lived coroutine until SIGTERM or SIGINT, then cancel it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any


def run_until_signal(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run`` the coroutine ``make()`` builds; a stop signal cancels it."""

    async def main() -> None:
        task = asyncio.create_task(make())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
