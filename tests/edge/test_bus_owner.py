"""The bus owner survives a device whose poll fails in a way nobody planned for."""

from __future__ import annotations

import asyncio

from edge.bus.link import PymodbusLink
from edge.bus.owner import BusOwner, DeviceIO
from edge.config.site import TcpBus
from floodgate.errors import BusError
from floodgate.runner import stop_if_cancelled


class Buggy:
    """A driver with a bug: its poll raises something that is not a bus error."""

    id = "buggy"
    unit = 1
    poll_s = 1.0
    poll_fast_s = 1.0
    urgency = None

    def __init__(self) -> None:
        self.failures: list[BusError] = []

    async def poll(self, io: DeviceIO) -> None:
        raise RuntimeError("driver bug")

    def on_failure(self, exc: BusError, ts_ms: int) -> None:
        self.failures.append(exc)


async def test_an_unexpected_error_is_a_device_failure_not_a_crash() -> None:
    dev = Buggy()
    owner = BusOwner("bus-1", PymodbusLink(TcpBus(id="bus-1", host="127.0.0.1", port=1)), [dev])
    owner.connected = True
    for _ in range(3):
        await owner.poll_once(dev)
    c = owner.counters["buggy"]
    assert c.state in {"failing", "quarantined"} and c.consecutive_failures == 3
    assert len(dev.failures) == 3
    assert "RuntimeError: driver bug" in str(dev.failures[0])
    assert owner.connected is False, "the link is reopened after a surprise"


async def test_a_swallowed_cancel_still_stops_a_polling_loop() -> None:
    """Python 3.11's wait_for can eat a cancel (seen in pymodbus); a check after the call re-raises it."""
    swallowed = asyncio.Event()

    async def library_call() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            swallowed.set()  # the cancel is lost here, as in the wait_for race

    async def poll_loop() -> None:
        while True:
            await library_call()
            stop_if_cancelled()  # as PymodbusLink does after every request

    task = asyncio.create_task(poll_loop())
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done and swallowed.is_set() and task.cancelled()
