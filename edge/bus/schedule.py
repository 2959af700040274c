"""Which device a bus owner polls next: urgent sensors first, the others in the gaps.

Each device has a due time. Of the devices that are due:

1. an urgent one (wet, rising, near a threshold: see ``edge.rules.urgency``)
   goes first, the longest overdue of them first; a device that has waited
   a whole interval past its due time counts as urgent, so slow devices slip
   when the bus is busy but are never starved;
2. then the longest overdue of the others, but only if its poll (its
   expected duration) ends before the next urgent poll is due, so a slow
   device does not delay an urgent one while the bus has room for both.

Pure: the caller passes the time in (seconds of any monotonic clock) and says
how long each poll took, so the decisions can be tested with a driven clock.
"""

from __future__ import annotations

from dataclasses import dataclass

EWMA = 0.2  # weight of the newest poll duration in the expected duration


@dataclass
class Slot:
    due: float
    expected_s: float  # how long a poll of this device takes (computed, then measured)
    interval_s: float = 1.0
    urgent: bool = False


class PollSchedule:
    def __init__(self) -> None:
        self.slots: dict[str, Slot] = {}

    def add(self, dev_id: str, due: float, expected_s: float, interval_s: float) -> None:
        self.slots[dev_id] = Slot(due, expected_s, interval_s)

    def soon(self, dev_id: str, now: float) -> None:
        """Poll this device at the next chance (after a write, to read the result back)."""
        self.slots[dev_id].due = min(self.slots[dev_id].due, now)

    def polled(self, dev_id: str, started: float, ended: float, interval_s: float, urgent: bool) -> None:
        """A poll ran from ``started`` to ``ended``; the next is due ``interval_s`` after its start."""
        s = self.slots[dev_id]
        s.expected_s += EWMA * ((ended - started) - s.expected_s)
        s.interval_s = interval_s
        s.urgent = urgent
        s.due = max(started + interval_s, ended)

    def next(self, now: float) -> tuple[str | None, float]:
        """The device to poll now, or None and the time to look again."""
        ready_urgent: list[tuple[float, str]] = []
        starved: list[tuple[float, str]] = []
        waiting: list[tuple[float, str]] = []
        next_urgent = wake = float("inf")
        for k, s in self.slots.items():
            if s.urgent:
                next_urgent = min(next_urgent, s.due)
                if s.due <= now:
                    ready_urgent.append((s.due, k))
            elif s.due > now:
                wake = min(wake, s.due)
            elif now - s.due >= s.interval_s:
                starved.append((s.due, k))
            else:
                waiting.append((s.due, k))
        if starved or ready_urgent:
            return min(starved + ready_urgent)[1], now
        for _, k in sorted(waiting):
            if now + self.slots[k].expected_s <= next_urgent:
                return k, now
        # Whatever waits becomes starved one interval after its due time.
        starving = min((d + self.slots[k].interval_s for d, k in waiting), default=float("inf"))
        return None, min(wake, next_urgent, starving)
