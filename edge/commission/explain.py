"""``check-config --explain``: what a site will do at each level, in words.

Board and gate come from the policy the agent applies (:func:`edge.rules.gate.decide`),
asked once with the gate open and once with it closed: which sensors raise
which level and when it clears, what each board shows, when the gate closes
and when it opens again, and what a fault or the manual override changes.
"""

from __future__ import annotations

from typing import Any

from edge.commission.budget import as_lines as budget_lines
from edge.commission.budget import budgets
from edge.config.site import LoadedSite, Response
from edge.devices.kinds import KINDS
from edge.rules.gate import Decision, SensorState, Situation, decide

LEVELS = ("clear", "warning", "danger", "fault")


def explain(site: LoadedSite) -> dict[str, Any]:
    c = site.config
    devices = {d.id: d for d in c.devices}
    out: dict[str, Any] = {"node": c.node, "site": c.site.name, "responses": []}
    for r in c.responses:
        sensors = []
        for sid in r.sensors:
            d = devices[sid]
            prof = site.profiles[d.profile]
            kind = prof.kind
            entry: dict[str, Any] = {
                "id": sid,
                "kind": kind,
                "model": prof.model,
                "status_faults": prof.fault_reasons(),
                "poll_s": d.poll_s,
                "poll_fast_s": d.poll_fast_s,
            }
            entry.update(KINDS[kind].explain(d, prof))
            sensors.append(entry)
        levels = {level: _at(level, r) for level in LEVELS}
        out["responses"].append(
            {
                "id": r.id,
                "sensors": sensors,
                "sign": r.sign,
                "gate": r.gate,
                "levels": levels,
                "override": (
                    f"while {r.override.device}.{r.override.point} is on, the agent drives neither "
                    "board nor gate and refuses commands for them"
                )
                if r.override
                else None,
                "level_rule": "the response takes the highest level of its sensors",
                "reopen_rule": _reopen_rule(r) if r.gate else None,
            }
        )
    out["buses"] = budgets(site)
    return out


def _reads(s: dict[str, Any]) -> str:
    """Which model a sensor is and how its depth comes about."""
    text = f"model {s['model']}"
    if s.get("level_mode") == "distance":
        h = s["mount_height_mm"]
        text += f", distance mode: mounted {h:g} mm above the road, depth = {h:g} mm - distance"
    elif s.get("level_mode") == "depth":
        text += ", depth mode: reads the depth itself"
    if s.get("zero_offset_mm"):
        text += f", less zero_offset_mm {s['zero_offset_mm']:g}"
    if s.get("status_faults"):
        text += f"; faults its status reports: {', '.join(s['status_faults'])}"
    if s.get("forecast_horizon_s"):
        text += (
            f"; forecasts a threshold the rise reaches within {s['forecast_horizon_s']:g} s "
            "(a forecast alert; it drives neither board nor gate)"
        )
    return text


def _decide(level: str, r: Response, gate_closed: bool) -> Decision:
    """The policy's decision with every sensor of ``r`` at ``level`` (``fault``: all faulted)."""
    faulted = level == "fault"
    state = SensorState(
        level="clear" if faulted else level,  # type: ignore[arg-type]
        wet=level != "clear",
        fault="fault" if faulted else None,
        known=True,
    )
    sit = Situation(
        sensors=dict.fromkeys(r.sensors, state),
        now_ms=0,
        gate_closed=gate_closed,
        settled_since_ms=0 if level == "clear" else None,
    )
    return decide(sit, r)


def _at(level: str, r: Response) -> dict[str, str]:
    step: dict[str, str] = {}
    was_open = _decide(level, r, gate_closed=False)
    was_closed = _decide(level, r, gate_closed=True)
    if r.sign:
        text = was_open.board
        step["sign"] = f"“{text}”" if text else "the board's own default text"
        if r.gate and was_closed.board != text and was_closed.gate == "closed":
            step["sign"] += f" (“{was_closed.board}” while the gate is closed)"
    if r.gate:
        if was_open.gate == "closed":
            step["gate"] = f"{was_open.rule} (travel about {r.gate_travel_s:g} s)"
        else:
            step["gate"] = f"{was_open.rule}; a closed gate {was_closed.rule}"
    return step


def _reopen_rule(r: Response) -> str:
    dry = "no contact wet" + (
        f", no depth at or above {r.gate_reopen_below_mm:g} mm" if r.gate_reopen_below_mm is not None else ""
    )
    return (
        f"a closed gate opens by itself only when every sensor has been read, is clear, not faulted and "
        f"dry ({dry}) for {r.gate_reopen_hold_s:g} s; a person's open against that needs a force "
        "with a reason"
    )


def as_text(e: dict[str, Any]) -> str:
    lines = [f"Site {e['site']} (node {e['node']}):"]
    for r in e["responses"]:
        lines.append("")
        parts = [f"board {r['sign']}" if r["sign"] else None, f"gate {r['gate']}" if r["gate"] else None]
        lines.append(f"Response {r['id']}: {', '.join(p for p in parts if p) or 'no actuators'}")
        for s in r["sensors"]:
            if "warning" in s:
                w, d = s["warning"], s["danger"]
                lines.append(
                    f"  {s['id']} ({s['kind']}, every {s['poll_s']:g} s): warning at ≥ {w['on_mm']:g} mm "
                    f"(clears below {w['clear_mm']:g} mm), danger at ≥ {d['on_mm']:g} mm "
                    f"(clears below {d['clear_mm']:g} mm); {s['confirm_readings']} readings in a row confirm"
                )
            elif "wet_means" in s:
                hold = f", clear once dry for {s['dry_hold_s']:g} s" if s.get("dry_hold_s") else ""
                lines.append(
                    f"  {s['id']} ({s['kind']}, every {s['poll_s']:g} s): wet means {s['wet_means']}{hold}"
                )
            else:
                lines.append(f"  {s['id']} ({s['kind']})")
            lines.append(f"    {_reads(s)}")
        lines.append(f"  ({r['level_rule']})")
        for level, step in r["levels"].items():
            what = "; ".join(f"{k}: {v}" for k, v in step.items()) or "nothing to drive"
            lines.append(f"  at {level:<8} {what}")
        if r["reopen_rule"]:
            lines.append(f"  reopening: {r['reopen_rule']}")
        if r["override"]:
            lines.append(f"  override: {r['override']}")
    lines.extend(budget_lines(e["buses"]))
    return "\n".join(lines)
