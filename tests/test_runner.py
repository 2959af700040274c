"""The process settings a service runs with."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys

import pytest

from floodgate.runner import (
    SERVICE_GC_THRESHOLDS,
    SERVICE_SWITCH_INTERVAL_S,
    closed_socket_race,
    tune_for_service,
)
from tests.helpers import wait_until


def test_tune_for_service_freezes_start_up_and_sets_the_gc_and_gil() -> None:
    before, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        tune_for_service()
        assert gc.get_threshold() == SERVICE_GC_THRESHOLDS
        assert sys.getswitchinterval() == SERVICE_SWITCH_INTERVAL_S
        assert gc.get_freeze_count() > 0, "what start-up built is out of the collector's way"
        young = gc.get_count()[0]
        garbage = [[] for _ in range(1000)]  # fewer new objects than the threshold: no collection yet
        assert gc.get_count()[0] >= young + 1000
        del garbage
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        sys.setswitchinterval(interval)


async def test_a_write_registered_for_a_socket_closed_meanwhile_is_no_unhandled_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What aiomqtt does when the broker drops the link at the wrong moment: the loop's add_writer
    for a socket closed before the callback runs (issue 14 §3: no unhandled exception logged)."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(closed_socket_race)
    caplog.set_level(logging.DEBUG)
    try:
        a, b = socket.socketpair()
        fd = a.fileno()
        loop.call_soon_threadsafe(loop.add_writer, fd, lambda: None)  # as aiomqtt schedules it
        a.close()
        b.close()
        await wait_until(
            lambda: any("closed meanwhile" in r.getMessage() for r in caplog.records), 5, "the race handled"
        )
        loop.call_soon(lambda: 1 / 0)  # anything else is still an unhandled error
        await wait_until(
            lambda: any(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR),
            5,
            "the error logged",
        )
    finally:
        loop.set_exception_handler(None)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.exc_info[0] for r in errors if r.exc_info] == [ZeroDivisionError]
    assert any("closed meanwhile" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
