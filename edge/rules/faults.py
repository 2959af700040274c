"""Sensor fault tracking: a fault is its own state, never "dry" and never "flooded".

Reasons: ``timeout`` (no answer), ``modbus_exception``, ``out_of_range``,
``stuck`` (the raw value has not changed for ``stuck_after_s``), and whatever a
profile's status points report (``cable_break``, ``comms_loss``, ``no_echo``,
``over_range``, ``status_<code>``: the device's own verdict on its reading).
"""

from __future__ import annotations

from dataclasses import dataclass

from floodgate.ids import new_ulid


@dataclass(frozen=True)
class FaultChange:
    episode: str
    faulted: bool
    reason: str
    ts: int


@dataclass
class FaultTracker:
    stuck_after_s: float = 0.0
    reason: str | None = None
    episode: str | None = None
    _raw: object = None
    _raw_since: int = 0

    @property
    def faulted(self) -> bool:
        return self.reason is not None

    def raw_value(self, ts: int, raw: object) -> str | None:
        """Feed the undecoded raw value; returns ``stuck`` when it has been frozen too long."""
        if raw != self._raw:
            self._raw = raw
            self._raw_since = ts
            return None
        if self.stuck_after_s > 0 and ts - self._raw_since >= self.stuck_after_s * 1000:
            return "stuck"
        return None

    def update(self, ts: int, reason: str | None) -> FaultChange | None:
        """The current reason (None = healthy); returns a change when the state flips."""
        if reason == self.reason or (reason is not None and self.reason is not None):
            if reason is not None:
                self.reason = reason  # keep the newest reason, no new episode
            return None
        if reason is not None:
            self.episode = new_ulid(ts)
            self.reason = reason
            return FaultChange(self.episode, True, reason, ts)
        change = FaultChange(self.episode or new_ulid(ts), False, self.reason or "", ts)
        self.reason = None
        self.episode = None
        return change
