"""The ``rain`` kind: a rain gauge at the site, by profile a tipping-bucket counter or an intensity register.

Every poll reports two readings: ``rainfall_mm``, the rain since the previous
poll, and ``rain_intensity_mm_h``.

- **Counter** (point ``tips``, its ``scale`` the mm per tip): the rain is the
  tips since the last poll. The counter wraps at its width (65536 for a
  uint16): a count lower than the last one is a roll-over, and the tips
  counted across it are kept. A jump that no rain could make between two
  polls (more than :data:`MAX_MM_H` for the time between them: a gauge that
  restarted and counts from zero again, or a corrupt read) counts nothing and
  starts again from the new count. The intensity is the rain of the last
  :data:`WINDOW_S` seconds per hour (until the window is full, the rain since
  the first poll over that time, but at least :data:`MIN_SPAN_S`: one tip
  just after the start is not a cloudburst).
- **Intensity** (point ``intensity``, mm/h): the rain since the last poll is
  the intensity times the time between them (the mean of the two readings).

A status point that reads a fault (a jammed bucket, a heater fault), a value
outside the profile's ``range`` and a gauge that does not answer are
``sensor_fault`` alerts, like any sensor's; its readings are then ``bad``. A
rain gauge raises no flood alert and is no sensor of a response: the board and
the gate answer to the water only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

from edge.bus.owner import DeviceIO
from edge.config.profile import Profile
from edge.config.site import Device
from edge.devices.base import Sensor, Sink, read_points
from edge.devices.codec import engineering, plausible
from floodgate.clock import Clock
from floodgate.vocab import DeviceKind
from floodgate.wire import Level

WINDOW_S = 300.0  # the intensity of a counter: the rain of the last 5 minutes, per hour
MIN_SPAN_S = 60.0  # ... or of the time since the first poll, but never less than a minute
MAX_MM_H = 1000.0  # no rain is heavier (the world record is about 300 mm in an hour)
RAINFALL, INTENSITY = "rainfall_mm", "rain_intensity_mm_h"


class RainGauge(Sensor):
    """Rain at the site in mm and mm/h, from a tip counter or an intensity register."""

    kind: ClassVar[DeviceKind] = "rain"

    def __init__(self, dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> None:
        super().__init__(dev, profile, sink, clock)
        self.role = "tips" if "tips" in profile.points else "intensity"
        self.point = profile.points[self.role]
        self.names = self._with_status([self.role])
        self.modulus = 1 << (16 * self.point.width)  # where the counter wraps
        self._last: tuple[int, float] | None = None  # ts and raw count (or intensity) of the last good poll
        self._window: deque[tuple[int, float]] = deque()  # (ts, mm) of each poll in the window
        self._first_ts: int | None = None
        self.total_mm = 0.0  # since the agent started

    @property
    def level(self) -> Level:
        return "clear"

    def _poll_names(self) -> Sequence[str]:
        return self.names

    @staticmethod
    def explain(dev: Device, profile: Profile) -> dict[str, Any]:
        if "tips" in profile.points:
            return {"rain": "tip counter", "mm_per_tip": profile.points["tips"].scale}
        return {"rain": "intensity register", "unit": "mm/h"}

    def _bad(self, ts: int, reason: str, detail: dict[str, Any]) -> None:
        self._set_fault(ts, reason, detail)
        self._last = None  # after a fault, counting starts again from the next good read
        self.sink.reading(self.id, ts, RAINFALL, 0.0, "bad")
        self.sink.reading(self.id, ts, INTENSITY, 0.0, "bad")

    async def poll(self, io: DeviceIO) -> None:
        raws = await read_points(io, self.profile, self.names)
        ts = self.clock.now_ms()
        status = self.status_fault(raws)
        if status is not None:
            self._bad(ts, status[0], status[1])
            return
        if self.role == "tips":
            mm, register = self._counted(ts, int(raws["tips"])), None
        else:
            value = float(engineering(self.profile, "intensity", raws))
            if not plausible(self.point, value) or not 0 <= value <= MAX_MM_H:
                self._bad(ts, "out_of_range", {"value": round(value, 1)})
                return
            mm, register = self._integrated(ts, value), value
        self._set_fault(ts, None)
        self.total_mm += mm
        self.sink.reading(self.id, ts, RAINFALL, round(mm, 2), "good")
        self.sink.reading(self.id, ts, INTENSITY, round(self._intensity(ts, mm, register), 1), "good")

    def _counted(self, ts: int, raw: int) -> float:
        """The mm of rain since the last poll from the tip count, across a roll-over."""
        last, self._last = self._last, (ts, float(raw))
        if last is None:
            return 0.0
        tips = (raw - int(last[1])) % self.modulus
        mm = tips * self.point.scale
        hours = max(ts - last[0], 1000) / 3_600_000
        if mm > MAX_MM_H * hours:
            return 0.0  # a restart (counting from zero again) or a corrupt count: no rain could do it
        return mm

    def _integrated(self, ts: int, mm_h: float) -> float:
        last, self._last = self._last, (ts, mm_h)
        if last is None:
            return 0.0
        return (last[1] + mm_h) / 2 * (ts - last[0]) / 3_600_000

    def _intensity(self, ts: int, mm: float, register: float | None) -> float:
        self._first_ts = ts if self._first_ts is None else self._first_ts
        self._window.append((ts, mm))
        while self._window and self._window[0][0] <= ts - WINDOW_S * 1000:
            self._window.popleft()
        if register is not None:
            return register
        span_s = min(WINDOW_S, max(MIN_SPAN_S, (ts - self._first_ts) / 1000))
        return min(MAX_MM_H, sum(m for _, m in self._window) / span_s * 3600)
