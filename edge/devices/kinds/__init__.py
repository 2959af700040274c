"""Device kinds, one module each on the shared base (:mod:`edge.devices.base`), in one table.

:data:`KINDS` maps a profile's ``kind`` to its driver class; everything that
depends on the kind (driver making, the bus budget's writes, ``check-config
--explain``, the simulators) asks the class. The points a kind's profile must
map are in :data:`floodgate.vocab.DEVICE_KINDS` (shared with the collector);
a test checks the two tables name the same kinds.

Adding a kind: a module here with a subclass of ``DeviceDriver`` (or ``Sensor``)
naming its ``kind``, its row below, its row in ``DEVICE_KINDS``, a profile and a
simulator class (``simulators.devices.SIM_KINDS``).
"""

from __future__ import annotations

from edge.devices.base import DeviceDriver
from edge.devices.kinds.board import SignDevice
from edge.devices.kinds.gate import GateDevice
from edge.devices.kinds.immersion import ImmersionSensor
from edge.devices.kinds.level import LevelSensor
from edge.devices.kinds.rain import RainGauge

KINDS: dict[str, type[DeviceDriver]] = {
    cls.kind: cls for cls in (LevelSensor, ImmersionSensor, SignDevice, GateDevice, RainGauge)
}
