"""The gate safety suite: generated sequences against the agent's decision path, invariants after every step.

Hypothesis drives :mod:`simulators.gate_model` (the agent's drivers, bus owner,
sink and response controller, in-process against the simulated devices, on a
manual clock; see there for what is left out and why) with sequences of level
changes, timeouts, stuck values, status faults, board power cycles, gate limit
switches that disagree or never arrive, the override key, remote commands
(some interleaved with a poll), the broker and the bus adapter going down, and the calm
after a storm.
``bench/gate_safety.py`` runs the same model for 100,000 steps and more.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from floodgate import wire
from simulators.gate_model import (
    AHEAD,
    COMMANDS,
    DEPTHS,
    FAULTS,
    LEVELS,
    STEPS_MS,
    WARN,
    Action,
    World,
    model_site,
    quiet,
)

SITE = model_site(Path(tempfile.mkdtemp(prefix="floodgate-gate-model-")))
QUIETED = ("floodgate.edge", "floodgate.edge.bus", "floodgate.edge.actuation")


@pytest.fixture(autouse=True)
def loud_again() -> Iterator[None]:
    """``quiet()`` silences the edge's loggers for the model; later tests in this process want them."""
    levels = {name: logging.getLogger(name).level for name in QUIETED}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


class GateSafety(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        quiet()
        self.loop = asyncio.new_event_loop()
        self.world = World(SITE)

    @initialize()
    def start(self) -> None:
        self.loop.run_until_complete(self.world.start())

    def do(self, action: Action) -> None:
        self.loop.run_until_complete(self.world.apply(action))

    @rule(dev=st.sampled_from(LEVELS), mm=st.sampled_from(DEPTHS) | st.floats(0, 600))
    def depth(self, dev: str, mm: float) -> None:
        self.do(Action("depth", (dev, mm)))

    @rule(dev=st.sampled_from(LEVELS), mm=st.sampled_from(DEPTHS))
    def rise(self, dev: str, mm: float) -> None:
        self.do(Action("rise", (dev, mm)))

    @rule(wet=st.booleans())
    def contact(self, wet: bool) -> None:
        self.do(Action("contact", (wet,)))

    @rule(ms=st.sampled_from(STEPS_MS) | st.integers(0, 60_000))
    def advance(self, ms: int) -> None:
        self.do(Action("advance", (ms,)))

    @rule(which=st.sampled_from(FAULTS), on=st.booleans())
    def fault(self, which: tuple[str, str], on: bool) -> None:
        self.do(Action("fault", (*which, on)))

    @rule()
    def power_cycle(self) -> None:
        self.do(Action("power_cycle"))

    @rule(mode=st.sampled_from(["ok", "both", "jammed"]))
    def limits(self, mode: str) -> None:
        self.do(Action("limits", (mode,)))

    @rule(on=st.booleans())
    def override(self, on: bool) -> None:
        self.do(Action("override", (on,)))

    @rule(up=st.booleans())
    def broker(self, up: bool) -> None:
        self.do(Action("broker", (up,)))

    @rule(up=st.booleans())
    def link(self, up: bool) -> None:
        self.do(Action("link", (up,)))

    @rule()
    def calm(self) -> None:
        self.do(Action("calm"))

    @rule(cmd=st.sampled_from(COMMANDS), interleaved=st.booleans())
    def command(self, cmd: tuple[str, dict[str, object]], interleaved: bool) -> None:
        self.do(Action("command", (cmd[0], cmd[1], interleaved)))

    @invariant()
    def safe(self) -> None:
        assert self.world.checker.violations == [], self.world.checker.violations

    def teardown(self) -> None:
        self.loop.close()


GateSafety.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_gate_safety = GateSafety.TestCase


def test_a_forecast_comes_first_and_never_closes_the_gate() -> None:
    """A steady rise: forecast before the water is measured; the gate closes only for measured danger."""
    quiet()
    loop = asyncio.new_event_loop()
    world = World(SITE)
    try:
        loop.run_until_complete(world.start())
        seen = world.checker.seen
        # 300 mm/min up to 230 mm: warning (150) is measured, danger (270) only expected.
        loop.run_until_complete(world.apply(Action("rise", ("lvl-1", 230.0))))
        assert seen["forecast warning"] == 1 and seen["forecast danger"] == 1, seen
        assert world.checker.response_level == "warning"
        assert seen["gate closed"] == 0
        warn, danger = (
            msgspec.convert(a, wire.Alert) for a in world.checker.forecast_alerts
        )  # the contract's
        assert (warn.level, warn.threshold, danger.level, danger.threshold) == ("warning", 150, "danger", 270)
        assert warn.eta_s is not None and danger.eta_s is not None and 0 < danger.eta_s <= 120
        assert warn.id == danger.id and warn.actions == [] and danger.actions == []
        # The board pre-warned (the response's forecast message) before the water was measured.
        shown = [text for _, text in world.sim_sign.shown]
        assert AHEAD in shown and WARN in shown and shown.index(AHEAD) < shown.index(WARN), shown
        for _ in range(6):  # the rise stops and holds: the forecast clears, the gate stays open
            loop.run_until_complete(world.apply(Action("advance", (4000,))))
        assert seen["forecast clear"] == 1
        assert seen["gate closed"] == 0 and world.sim_gate.relay_writes == []
        loop.run_until_complete(world.apply(Action("rise", ("lvl-1", 300.0))))  # measured danger
        for _ in range(3):
            loop.run_until_complete(world.apply(Action("advance", (2000,))))
        assert world.checker.response_level == "danger"
        assert seen["gate closed"] == 1
        assert world.checker.violations == []
    finally:
        loop.close()
