"""The collector's clock-driven jobs: ticket escalation, the release of alert transitions held
too long, command timeouts, silent sites, retention.

What is due is stored in the database (each ticket's next check, each
command's expiry), never held in timers, so a restarted collector, or another
one, carries on where this one stopped. The scheduler sleeps on a ``Clock``
until the earliest stored time (or ``idle_check_ms``), and ``poke()`` makes it
look again at once when something may have set an earlier time.
"""

from __future__ import annotations

import asyncio
import logging

from cloud.commands import Commands
from cloud.events import Bus, TicketsChanged
from cloud.retention import Retention
from cloud.silence import Silence
from cloud.tickets import Tickets
from floodgate.clock import sleep_until_or

log = logging.getLogger("floodgate.cloud.scheduler")


class Scheduler:
    def __init__(
        self,
        tickets: Tickets,
        commands: Commands | None = None,
        silence: Silence | None = None,
        retention: Retention | None = None,
        bus: Bus | None = None,
        idle_check_ms: int = 60_000,
    ) -> None:
        self.tickets = tickets
        self.commands = commands
        self.silence = silence
        self.retention = retention
        self._retention_due = 0
        self._silence_due = 0
        self.bus = bus or Bus()
        self.idle_check_ms = idle_check_ms
        self._poke = asyncio.Event()
        self.runs = 0

    def poke(self) -> None:
        self._poke.set()

    async def run_due(self) -> int | None:
        """Do what is due now; returns the next time something will be."""
        events = await self.tickets.escalate_due()
        events += await self.tickets.release_held()
        times = [await self.tickets.next_check(), await self.tickets.next_release()]
        now = self.tickets.clock.now_ms()
        if self.silence is not None:
            # On its own cadence: a poke (a new deadline) must not cost a scan of every site.
            if now >= self._silence_due:
                events += await self.silence.check()
                self._silence_due = await self.silence.next_check()
            times.append(self._silence_due)
        if self.retention is not None:
            if now >= self._retention_due:
                await self.retention.run_once()
                self._retention_due = await self.retention.next_run()
            times.append(self._retention_due)
        if events:
            await self.bus.publish(TicketsChanged(events))
        if self.commands is not None:
            await self.commands.expire_due()
            times.append(await self.commands.next_expiry())
        due = [t for t in times if t is not None]
        return min(due) if due else None

    async def run(self) -> None:
        clock = self.tickets.clock
        while True:
            self._poke.clear()
            try:
                nxt = await self.run_due()
            except Exception:
                log.exception("scheduled jobs failed; trying again shortly")
                nxt = None
            self.runs += 1
            target = clock.now_ms() + self.idle_check_ms if nxt is None else nxt
            await sleep_until_or(clock, target, self._poke)
