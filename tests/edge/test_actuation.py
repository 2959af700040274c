"""Local actuation on a clock the test drives: the agent's drivers, bus owner and response
controller in-process against the simulated devices (simulators.gate_model), so a rule that
needs a minute of dry road takes no time and "nothing happens" is checked over every step.

The same rules run end to end, in real time over a pty and TCP, in test_chain.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulators.gate_model import DANGER, WARN, Action, World, model_site

SITE = model_site(Path(tempfile.mkdtemp(prefix="floodgate-actuation-")))
MIN_WARNING_MS, HOLD_MS = 5000, 10_000  # the model site's gate_min_warning_s and gate_reopen_hold_s


@pytest.fixture
async def world() -> World:
    w = World(SITE)
    await w.start()
    return w


async def step(w: World, name: str, *args: Any) -> None:
    await w.apply(Action(name, args))
    assert w.checker.violations == []


async def wait(w: World, ms: int, every: int = 500) -> None:
    """Let ``ms`` pass on the clock, the agent polling every ``every`` ms."""
    for _ in range(ms // every):
        await step(w, "advance", every)


async def until(w: World, cond: Callable[[], bool], within_ms: int, what: str) -> int:
    """Poll every 200 ms of clock time until ``cond``; fail after ``within_ms``; returns the ms it took."""
    start = w.clock.now_ms()
    while not cond():
        if w.clock.now_ms() - start > within_ms:
            raise AssertionError(f"no {what} within {within_ms} ms of clock time")
        await step(w, "advance", 200)
    return w.clock.now_ms() - start


async def flood(w: World) -> None:
    await step(w, "depth", "lvl-1", 400.0)
    await step(w, "contact", True)
    await until(w, lambda: w.sim_gate.state == "closed", 20_000, "gate closed")
    assert w.sim_sign.text == DANGER


def gate_events(w: World) -> list[dict[str, Any]]:
    return [e["detail"] for e in w.events if e["type"] == "actuator.state" and e.get("dev") == "gate-1"]


async def test_the_gate_closes_only_after_the_board_has_warned_for_the_minimum_time(world: World) -> None:
    await step(world, "depth", "lvl-1", 400.0)
    # Warning first (danger has a dwell of 2 s on lvl-1): the warning time counts from it.
    await until(world, lambda: world.sim_sign.text in (WARN, DANGER), 5000, "a warning on the board")
    warned_at = world.clock.now_ms()
    took = await until(world, lambda: bool(world.sim_gate.relay_writes), 10_000, "the gate closing")
    assert MIN_WARNING_MS <= took <= MIN_WARNING_MS + 400, "at gate_min_warning_s, not before"
    [(t, closed)] = world.sim_gate.relay_writes
    assert closed and t * 1000 - warned_at >= MIN_WARNING_MS and world.sim_sign.text == DANGER


async def test_manual_override_always_wins(world: World) -> None:
    await step(world, "override", True)
    await step(world, "depth", "lvl-1", 400.0)
    await step(world, "contact", True)
    await wait(world, 60_000)  # a minute of danger: every poll sees the key
    assert world.sim_gate.relay_writes == [] and world.sim_gate.state == "open"
    assert world.sim_sign.shown == [], "nor the board"
    await step(world, "command", "gate.close", {}, False)
    assert world.outcomes[-1].reason.startswith("override")
    await step(world, "override", False)
    await until(
        world, lambda: world.sim_gate.state == "closed", 10_000, "the gate closing once people hand back"
    )
    types = [e["type"] for e in world.events]
    assert "override.on" in types and "override.off" in types


async def test_a_sensor_fault_during_a_flood_never_opens_the_gate(world: World) -> None:
    await flood(world)
    await step(world, "fault", "lvl-1", "no_answer", True)
    assert "lvl-1" in world.ctl.faulted
    await step(world, "contact", False)  # the contact dries; the level sensor is silent
    await step(world, "depth", "lvl-1", 0.0)
    await wait(world, 10 * 60_000, every=5000)  # ten minutes
    assert world.sim_gate.state == "closed", "a faulted sensor must not open the gate"
    assert world.sim_sign.text == DANGER
    await step(world, "fault", "lvl-1", "no_answer", False)
    took = await until(world, lambda: world.sim_gate.state == "open", 20_000, "the gate open")
    assert took >= HOLD_MS, "clear and dry for the hold time first"
    assert world.owner.counters["lvl-1"].last_good_ms == world.clock.now_ms(), "the bus owner's clock"


async def test_falling_to_warning_while_the_contact_is_wet_keeps_the_gate_closed(world: World) -> None:
    await flood(world)
    await step(world, "depth", "lvl-1", 221.0)  # danger -> warning: the storm of the issue
    await wait(world, 60_000)
    assert world.ctl.level == "warning" and world.sim_gate.state == "closed"
    assert world.sim_sign.text == DANGER, "the board keeps saying the road is closed"
    # Clear on the level sensor but above gate_reopen_below_mm (40): still water.
    await step(world, "depth", "lvl-1", 100.0)
    await step(world, "contact", False)
    await wait(world, 60_000)
    assert world.ctl.level == "clear" and world.sim_gate.state == "closed"
    await step(world, "depth", "lvl-1", 20.0)
    took = await until(world, lambda: world.sim_gate.state == "open", 20_000, "the gate open")
    assert took >= HOLD_MS
    [*_, do_open] = [d for d in gate_events(world) if "do" in d]
    # Caused by the alert that last changed the response's level: the contact drying.
    assert do_open["do"] == "open" and do_open["cause"].endswith("imm-1 clear")
    assert do_open["rule"] == "opens once every sensor has been clear and dry for 10 s"


async def test_a_dispatchers_close_names_the_command_on_every_gate_event(world: World) -> None:
    await step(world, "command", "sign.show", {"message": "road-closed"}, False)
    await wait(world, MIN_WARNING_MS)
    await step(world, "command", "gate.close", {}, False)
    assert world.outcomes[-1].status == "done"
    await until(world, lambda: world.sim_gate.state == "closed", 5000, "the gate closed")
    cause = f"cmd:{world.commands:08d} by user:model"
    gate = gate_events(world)
    assert [d.get("do", d.get("state")) for d in gate] == ["close", "moving", "closed"]
    assert {d["cause"] for d in gate} == {cause}, "not 'startup', not an old alert"


async def test_the_board_is_written_again_after_a_power_cut(world: World) -> None:
    await step(world, "depth", "lvl-1", 200.0)
    await until(world, lambda: world.sim_sign.text == WARN, 5000, "the warning shown")
    await step(world, "power_cycle")
    assert world.sim_sign.text == WARN
    [*_, last] = [e["detail"] for e in world.events if e.get("dev") == "sign-1"]
    assert last["cause"] == "reassert" and last["confirmed"] is True


def announcements(w: World) -> list[dict[str, Any]]:
    """The gate's announced closes (and their calling off): no write, no move."""
    return [d for d in gate_events(w) if "closing" in d and "confirmed" not in d]


async def test_the_office_is_told_when_the_gate_will_close_before_it_does(world: World) -> None:
    """The board warns, the road is still open for gate_min_warning_s: the agent says so, and when."""
    await step(world, "depth", "lvl-1", 400.0)
    await until(world, lambda: bool(announcements(world)), 5000, "the close announced")
    [told] = announcements(world)
    assert world.sim_gate.relay_writes == [] and world.sim_gate.state == "open"
    assert told["closing"] == "pending" and told["state"] == "open" and told["min_warning_s"] == 5
    assert told["cause"].endswith("lvl-1 danger") and told["rule"].startswith("closes once the board")
    warned = world.ctl.warning_since_ms
    assert warned is not None and told["closes_at"] == warned + MIN_WARNING_MS
    assert world.ctl.snapshot()["gate_closes_at"] == told["closes_at"]  # floodgate edge status
    await until(world, lambda: bool(world.sim_gate.relay_writes), 10_000, "the gate closing")
    [(t, closed)] = world.sim_gate.relay_writes
    assert closed and told["closes_at"] <= t * 1000 <= told["closes_at"] + 400, "when it said"
    await until(world, lambda: world.sim_gate.state == "closed", 5000, "the gate closed")
    assert announcements(world) == [told], "said once; the close itself is its own event"
    assert "gate_closes_at" not in world.ctl.snapshot()
    assert all("closing" not in d for d in gate_events(world) if "do" in d or d.get("state") == "closed")


async def test_a_close_the_water_or_the_key_calls_off_is_said_to_be_off(world: World) -> None:
    await step(world, "depth", "lvl-1", 400.0)
    await until(world, lambda: bool(announcements(world)), 5000, "the close announced")
    await step(world, "depth", "lvl-1", 200.0)  # back under danger before the board has warned 5 s
    await until(world, lambda: len(announcements(world)) == 2, 5000, "the close called off")
    off = announcements(world)[-1]
    assert off["closing"] == "called_off" and off["state"] == "open" and "closes_at" not in off
    assert off["cause"].endswith("lvl-1 warning") and off["rule"] == "stays open"
    await wait(world, 20_000)
    assert world.sim_gate.relay_writes == [] and "gate_closes_at" not in world.ctl.snapshot()
    # Dry (the board stops warning), danger again, then the override key: nothing closes under
    # it, and the office is told.
    await step(world, "depth", "lvl-1", 0.0)
    await until(world, lambda: world.ctl.warning_since_ms is None, 20_000, "the board's warning gone")
    await step(world, "depth", "lvl-1", 400.0)
    await until(world, lambda: len(announcements(world)) == 3, 5000, "the close announced again")
    await step(world, "override", True)
    await until(world, lambda: len(announcements(world)) == 4, 5000, "the close called off by the key")
    assert announcements(world)[-1]["closing"] == "called_off"
    assert world.sim_gate.relay_writes == []
