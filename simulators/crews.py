"""Simulated crews for the demo: the drainage stations that nobody at the keyboard plays.

In the demo a person plays one unit (the ``unit`` login) and the dispatcher; the other
units' tickets would otherwise sit until they escalate, and the measures page would show
every unit at 0 % on time. The office dispatches a crew's warning tickets (danger ones
the registry dispatches itself), the crew accepts a ticket dispatched to its unit after a
delay drawn from its own habits and reports it handled a while later, and the office
evaluates a verified ticket with a score: some crews are quick, some often late (and escalated), so
the measures rank them as an office would see a real month.

Delays are in real seconds on the collector's clock (the storms play faster; people do
not). A crew acts through the ticket service, as its members would through the API, so
the timeline, the live dashboard and the measures see the same as for a person.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from floodgate.clock import Clock

if TYPE_CHECKING:
    from cloud.tickets import Tickets

log = logging.getLogger("floodgate.sim.crews")


@dataclass(frozen=True)
class Habits:
    """How a crew works, as shares of the ticket's own deadlines (drawn uniformly from each
    range): from dispatch to accepting, of the time it has to accept; from accepting to
    reporting, of the time it has to handle it (from dispatch); and the scores the office
    gives its work. A share over 1 is late."""

    accept: tuple[float, float]
    handle: tuple[float, float]
    scores: tuple[int, ...] = (4, 5)


# From quick to slow, handed out to the units in turn: the first is always on time, the
# second now and then late, the last late about half the time (and escalated).
HABITS = [
    Habits(accept=(0.05, 0.5), handle=(0.1, 0.4), scores=(4, 5, 5)),
    Habits(accept=(0.2, 1.1), handle=(0.2, 0.9), scores=(3, 4, 5)),
    Habits(accept=(0.4, 1.6), handle=(0.4, 1.3), scores=(2, 3, 4)),
]
DISPATCH = (0.1, 0.8)  # the office dispatches a crew's open ticket: share of its dispatch time
EVALUATE = (0.05, 0.3)  # and evaluates a verified one: share of its accept time, after verifying


@dataclass
class Crews:
    """Crews for ``units`` (unit id → habits), acting on ``tickets`` by ``clock``."""

    tickets: Tickets
    clock: Clock
    units: dict[str, Habits]
    seed: int = 1
    office: str = "user:office"  # who evaluates the crews' work
    acted: dict[str, int] = field(default_factory=dict)  # action → how many, for the tests
    _due: dict[tuple[str, str], int] = field(default_factory=dict)  # (ticket, action) → when
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @classmethod
    def for_units(cls, tickets: Tickets, clock: Clock, units: list[str], seed: int = 1) -> Crews:
        """One crew per unit, habits handed out in turn (quick, middling, slow, quick, …)."""
        return cls(tickets, clock, {u: HABITS[i % len(HABITS)] for i, u in enumerate(units)}, seed)

    def _when(self, key: tuple[str, str], since_ms: int, span_ms: int, share: tuple[float, float]) -> int:
        if key not in self._due:
            self._due[key] = since_ms + int(self._rng.uniform(*share) * max(span_ms, 1000))
        return self._due[key]

    async def step(self) -> int:
        """Do what is due now; how many actions were taken."""
        now = self.clock.now_ms()
        done = 0
        for unit, habits in self.units.items():
            _, tickets = await self.tickets.list(
                state=["open", "dispatched", "accepted", "verified"], unit=unit, limit=200
            )
            for t in tickets:
                done += await self._one(t, unit, habits, now)
        return done

    async def _one(self, t: dict[str, Any], unit: str, habits: Habits, now: int) -> int:
        tid, state = t["id"], t["state"]
        dispatched, accept_ms = t["dispatched_ms"], _span(t["dispatched_ms"], t["accept_due_ms"])
        if state == "open":
            action, since, span, share = (
                "dispatch",
                t["opened_ms"],
                _span(t["opened_ms"], t["dispatch_due_ms"]),
                DISPATCH,
            )
        elif state == "dispatched":
            action, since, span, share = "accept", dispatched, accept_ms, habits.accept
        elif state == "accepted":
            action, since, span, share = (
                "report",
                dispatched,
                _span(dispatched, t["handle_due_ms"]),
                habits.handle,
            )
        else:
            action, since, span, share = "evaluate", t["verified_ms"], accept_ms or 60_000, EVALUATE
        if since is None or span is None or now < self._when((tid, f"{action}@{since}"), since, span, share):
            return 0
        actor = self.office if action in ("dispatch", "evaluate") else f"unit:{unit}:crew"
        kw: dict[str, Any] = {}
        if action == "report":
            kw["note"] = "已抽排，路面积水已退 (simulated crew)"
        if action == "evaluate":
            kw["score"] = self._rng.choice(habits.scores)
        try:
            await self.tickets.act(tid, action, actor, **kw)
        except Exception as exc:  # a person moved it meanwhile (a conflict): look again next round
            log.debug("crew %s: %s on %s not done: %s", unit, action, tid, exc)
            return 0
        self.acted[action] = self.acted.get(action, 0) + 1
        return 1

    async def run(self, every_s: float = 1.0) -> None:
        """Act on what is due every ``every_s`` seconds until cancelled."""
        while True:
            try:
                await self.step()
            except Exception:  # the demo goes on; the next round tries again
                log.exception("simulated crews")
            await asyncio.sleep(every_s)


def _span(start: int | None, due: int | None) -> int | None:
    return due - start if start is not None and due is not None else None
