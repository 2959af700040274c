"""Device drivers: what to read from each kind of device, and how to drive actuators.

Each kind is one module in :mod:`edge.devices.kinds` on the shared base
(:mod:`edge.devices.base`); :func:`make_driver` picks the class from the
:data:`~edge.devices.kinds.KINDS` table. This module re-exports what the rest
of the edge imports.
"""

from __future__ import annotations

from edge.config.profile import Profile
from edge.config.site import Device
from edge.devices.base import (
    MAX_SPAN,
    DeviceDriver,
    Read,
    Sensor,
    Sink,
    depth_mm,
    failure_reason,
    plan_reads,
    read_points,
    tenth,
)
from edge.devices.kinds import KINDS
from edge.devices.kinds.board import SignDevice, SignState
from edge.devices.kinds.gate import GateDevice, GateState
from edge.devices.kinds.immersion import ImmersionSensor
from edge.devices.kinds.level import LevelSensor
from edge.devices.kinds.rain import RainGauge
from floodgate.clock import Clock
from floodgate.errors import ConfigError, ConfigIssue

__all__ = [
    "KINDS",
    "MAX_SPAN",
    "DeviceDriver",
    "Driver",
    "GateDevice",
    "GateState",
    "ImmersionSensor",
    "LevelSensor",
    "RainGauge",
    "Read",
    "Sensor",
    "SignDevice",
    "SignState",
    "Sink",
    "depth_mm",
    "failure_reason",
    "make_driver",
    "plan_reads",
    "read_points",
    "tenth",
]

Driver = LevelSensor | ImmersionSensor | SignDevice | GateDevice | RainGauge


def make_driver(dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> Driver:
    """The driver of ``dev`` for its profile's kind; an unknown kind is a ConfigError (never a gate)."""
    cls = KINDS.get(profile.kind)
    if cls is None:
        known = ", ".join(KINDS)
        issue = ConfigIssue(
            f"profile {profile.model}", None, "kind", f"unknown kind {profile.kind!r}; one of {known}"
        )
        raise ConfigError([issue])
    driver = cls(dev, profile, sink, clock)
    assert isinstance(driver, LevelSensor | ImmersionSensor | SignDevice | GateDevice | RainGauge)
    return driver
