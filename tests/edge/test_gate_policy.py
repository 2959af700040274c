"""The gate and board policy (edge.rules.gate): pure, so each rule is one call with the time in it."""

from __future__ import annotations

from typing import Any

import msgspec

from edge.config.site import Response
from edge.rules.gate import KEPT_CLOSED, Force, SensorState, Situation, decide, judge, warning_texts

WARN, DANGER, FAULT = "前方积水 减速慢行", "隧道积水 禁止通行", "水位监测故障"
RESP = Response(
    id="entrance",
    sensors=["lvl-1", "imm-1"],
    sign="sign-1",
    gate="gate-1",
    messages={"clear": "", "warning": WARN, "danger": DANGER, "fault": FAULT},
    close_gate_at="danger",
    gate_min_warning_s=30,
    gate_reopen_hold_s=60,
)
DRY = SensorState(known=True)
T0 = 1_000_000


def sit(lvl: SensorState = DRY, imm: SensorState = DRY, **kw: Any) -> Situation:
    return Situation(sensors={"lvl-1": lvl, "imm-1": imm}, now_ms=T0, **kw)


def test_danger_then_warning_with_the_contact_still_wet_keeps_the_gate_closed() -> None:
    # The storm of the issue: 221 mm (warning) while the immersion contact is still wet.
    d = decide(
        sit(
            SensorState("warning", known=True), SensorState("warning", wet=True, known=True), gate_closed=True
        ),
        RESP,
    )
    assert (d.gate, d.move_gate, d.rule) == ("closed", False, KEPT_CLOSED)
    assert d.why == "water level is warning; imm-1 reads warning; lvl-1 reads warning"
    assert d.board == DANGER, "the board says the road is closed while it is"


def test_the_gate_closes_only_after_the_board_has_warned_for_the_minimum_time() -> None:
    danger = SensorState("danger", known=True)
    assert decide(sit(danger, gate_closed=False), RESP).move_gate is False  # the board does not warn yet
    d = decide(sit(danger, gate_closed=False, warning_since_ms=T0 - 29_999), RESP)
    assert (d.gate, d.move_gate, d.wake_ms) == ("closed", False, T0 + 1)
    d = decide(sit(danger, gate_closed=False, warning_since_ms=T0 - 30_000), RESP)
    assert (d.gate, d.move_gate, d.board) == ("closed", True, DANGER)


def test_a_closed_gate_reopens_only_after_every_sensor_is_clear_and_dry_for_the_hold() -> None:
    d = decide(sit(gate_closed=True, settled_since_ms=T0 - 59_000), RESP)
    assert (d.gate, d.move_gate, d.wake_ms) == ("closed", False, T0 + 1000)
    assert d.board == DANGER
    d = decide(sit(gate_closed=True, settled_since_ms=T0 - 60_000), RESP)
    assert (d.gate, d.move_gate, d.board) == ("open", True, "")


def test_a_faulted_wet_or_unread_sensor_never_lets_the_gate_open_by_itself() -> None:
    cases = {
        "lvl-1 is faulted (timeout)": sit(SensorState(fault="timeout", known=True), gate_closed=True),
        "imm-1 still detects water": sit(imm=SensorState(wet=True, known=True), gate_closed=True),
        "lvl-1 has not been read yet": sit(SensorState(), gate_closed=True),
    }
    for why, s in cases.items():
        d = decide(s, RESP)
        assert (d.gate, d.move_gate, d.why) == ("closed", False, why)
        assert not judge("gate.open", s, RESP).ok


def test_a_depth_above_the_reopen_level_counts_as_water() -> None:
    strict = msgspec.structs.replace(RESP, gate_reopen_below_mm=20)
    # The controller marks a level sensor wet at or above the reopen level; the policy keeps it closed.
    d = decide(sit(SensorState(wet=True, known=True), gate_closed=True), strict)
    assert (d.gate, d.why) == ("closed", "lvl-1 still detects water")


def test_the_override_drives_nothing_and_refuses_every_command() -> None:
    s = sit(SensorState("danger", known=True), gate_closed=False, override=True, warning_since_ms=0)
    d = decide(s, RESP)
    assert (d.board, d.gate, d.move_gate) == (None, None, False)
    for kind in ("gate.close", "gate.open", "sign.clear"):
        assert judge(kind, s, RESP).reason.startswith("override")


def test_people_open_against_the_policy_only_by_force_with_a_reason_and_a_role() -> None:
    wet = sit(imm=SensorState("warning", wet=True, known=True), gate_closed=True)
    refused = judge("gate.open", wet, RESP)
    assert not refused.ok and refused.reason.startswith("unsafe: water level is warning")
    weak = judge("gate.open", wet, RESP, Force("cmd:1 by user:li", "operator", "in a hurry"))
    assert not weak.ok and weak.reason.startswith("forbidden")
    blank = judge("gate.open", wet, RESP, Force("cmd:1 by user:li", "admin", "  "))
    assert not blank.ok and blank.reason.startswith("bad_command")
    forced = judge("gate.open", wet, RESP, Force("cmd:1 by user:li", "dispatcher", "police on site"))
    assert forced.ok and forced.forced and forced.reason.startswith("water level is warning")
    # A clear, dry road opens without force and without waiting for the hold.
    assert judge("gate.open", sit(gate_closed=True, settled_since_ms=T0), RESP).ok


def test_no_command_closes_the_gate_before_the_board_has_warned() -> None:
    early = judge("gate.close", sit(warning_since_ms=T0 - 10_400), RESP)
    # What a person must do, in words an operator understands (it said "send sign.show first").
    assert not early.ok and early.reason == (
        "unsafe: the board has warned drivers for 10 s of the 30 s needed before the gate closes:"
        " close the gate again in 20 s"
    )
    silent = judge("gate.close", sit(), RESP)
    assert not silent.ok and silent.reason == (
        "unsafe: the board shows no warning; drivers must be warned for 30 s before the gate closes:"
        " put a warning on the board first, then close the gate 30 s later"
    )
    at_once = judge("gate.close", sit(), msgspec.structs.replace(RESP, gate_min_warning_s=0.0))
    assert at_once.reason == (
        "unsafe: the board shows no warning; put a warning on the board first, then close the gate"
    )
    assert judge("gate.close", sit(warning_since_ms=T0 - 30_000), RESP).ok


def test_the_board_keeps_saying_the_road_is_closed_and_cannot_be_cleared_while_it_is() -> None:
    closed = sit(gate_closed=True, settled_since_ms=T0)
    assert decide(closed, RESP).board == DANGER
    assert judge("sign.clear", closed, RESP).reason == "unsafe: the gate is closed; the board must say so"
    assert decide(sit(SensorState(fault="stuck", known=True), gate_closed=False), RESP).board == FAULT
    assert decide(sit(gate_closed=False, board_default="黄埔区 安全出行"), RESP).board == "黄埔区 安全出行"


def test_a_persons_target_holds() -> None:
    s = sit(SensorState("danger", known=True), gate_closed=True, manual_gate=False)
    d = decide(s, RESP)
    assert (d.gate, d.move_gate, d.rule) == ("open", True, "opened by a person")


def test_a_forecast_pre_warns_on_the_board_and_moves_no_gate() -> None:
    ahead = "前方可能积水 注意"
    resp = msgspec.structs.replace(RESP, messages={**RESP.messages, "forecast": ahead})
    expecting = SensorState(known=True, forecast=True)
    # Clear water, a forecast: the pre-warning; an open gate stays open, however long it has shown.
    d = decide(sit(expecting, gate_closed=False, warning_since_ms=T0 - 3_600_000), resp)
    assert (d.board, d.gate, d.move_gate) == (ahead, "open", False)
    # Measured water and a fault come first; without a forecast message the board stays clear.
    assert decide(sit(SensorState("warning", known=True, forecast=True)), resp).board == WARN
    assert decide(sit(SensorState(known=True, forecast=True, fault="no_echo")), resp).board == FAULT
    assert decide(sit(expecting), RESP).board == ""
    # A closed gate is not held closed by a forecast: it reopens after the hold like any other time.
    d = decide(sit(expecting, gate_closed=True, settled_since_ms=T0 - 60_000), resp)
    assert (d.gate, d.move_gate, d.board) == ("open", True, ahead)
    # Only the warning and danger messages (and a person's) count as the board warning.
    assert ahead not in warning_texts(resp)
