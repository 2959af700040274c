"""Run a long-lived coroutine until SIGTERM or SIGINT; run several side by side."""

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


async def run_together(coros: dict[str, Coroutine[Any, Any, object]]) -> None:
    """Run named coroutines as tasks until one ends (a failure is raised) or we are cancelled.

    Plain tasks rather than a TaskGroup: Python 3.11's TaskGroup leaves the
    parent task marked as cancelled after a child fails during its exit, which
    breaks reconnect loops that catch the error and go on.
    """
    tasks = {asyncio.create_task(c, name=name) for name, c in coros.items()}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        exc = t.exception()
        if exc is not None:
            raise exc


def stop_if_cancelled() -> None:
    """Raise CancelledError when this task was asked to stop but the request got lost.

    Python 3.11's ``asyncio.wait_for`` (used inside pymodbus) can swallow a
    cancellation that arrives just as its future completes; a polling loop
    would then run on forever. Call this right after awaiting such code.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
