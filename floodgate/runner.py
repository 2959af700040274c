"""Run a long-lived coroutine until SIGTERM or SIGINT; run several side by side; process settings."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

# The cyclic GC's thresholds for a service (CPython's defaults are 700, 10, 10).
SERVICE_GC_THRESHOLDS = (50_000, 20, 100)
# How long a thread that wants the GIL waits for the one that has it (CPython's default is 5 ms).
SERVICE_SWITCH_INTERVAL_S = 0.0005


def tune_for_service() -> None:
    """Set the process up for a long-running, busy service: the GC and the GIL.

    At ingest rates the collector churns through short-lived objects (MQTT
    messages, rows); with the default thresholds a young collection ran every
    few dozen messages and a full one, which walks every object in the
    process, every few hundred batches, stalling the event loop and the
    database thread that waits for the GIL (commits of 35 ms took 100+).
    What start-up built (modules, configuration, the app) is frozen, so full
    collections skip it; collections run after 50,000 new objects, not 700.
    Memory held by cyclic garbage between collections stays small.

    The GIL: SQLite's commit runs on aiosqlite's thread and releases the GIL
    in each statement; taking it back, it waited for the event loop's thread
    to give it up, up to 5 ms each time and seven times a batch, longer than
    SQLite's own work. At 0.5 ms the collector stored 16 % more (``bench/ingest.py``).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVICE_GC_THRESHOLDS)
    sys.setswitchinterval(SERVICE_SWITCH_INTERVAL_S)


log = logging.getLogger("floodgate.runner")


def closed_socket_race(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: aiomqtt's write registration for a socket closed meanwhile is no error.

    aiomqtt (2.2) asks the loop to watch the socket for writing from a
    callback scheduled with ``call_soon_threadsafe``; when the broker drops
    the connection between the two, the socket is closed by then and the
    loop's ``add_writer`` fails with EBADF, which asyncio logs as an
    unhandled "Exception in callback". The connection is gone either way and
    is handled as a lost link; this says so at DEBUG. Anything else goes to
    asyncio's own handler.
    """
    if is_closed_socket_race(context):
        log.debug("a write was registered for a socket the broker had closed meanwhile (aiomqtt)")
        return
    loop.default_exception_handler(context)


def is_closed_socket_race(context: dict[str, Any]) -> bool:
    """Whether an exception handler's ``context`` is the loop's add_writer failing on a closed socket."""
    exc = context.get("exception")
    return (
        isinstance(exc, OSError) and exc.errno == errno.EBADF and "add_writer" in repr(context.get("handle"))
    )


def run_until_signal(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run`` the coroutine ``make()`` builds; a stop signal cancels it."""

    async def main() -> None:
        task = asyncio.create_task(make())
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(closed_socket_race)
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
