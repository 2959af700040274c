"""``check-config --explain``: what a site will do at each level, in words.

Read from the validated config with the same rules the agent applies
(``edge.actuation``): which sensors raise which level and when it clears,
what each board shows, when the gate closes and opens, and what a fault or
the manual override changes.
"""

from __future__ import annotations

from typing import Any

from edge.commission.budget import as_lines as budget_lines
from edge.commission.budget import budgets
from edge.config.site import LoadedSite

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
                "poll_s": d.poll_s,
                "poll_fast_s": d.poll_fast_s,
            }
            if kind == "level" and d.thresholds is not None:
                th = d.thresholds
                entry["warning"] = {
                    "on_mm": th.warning.on,
                    "clear_mm": th.warning.clear,
                    "dwell_s": th.warning.dwell_s,
                }
                entry["danger"] = {
                    "on_mm": th.danger.on,
                    "clear_mm": th.danger.clear,
                    "dwell_s": th.danger.dwell_s,
                }
                entry["confirm_readings"] = d.filter.confirm
                entry["level_mode"] = prof.level_mode
                entry["mount_height_mm"] = d.mount_height_mm
                entry["zero_offset_mm"] = d.zero_offset_mm
            elif kind in ("immersion",):
                entry["wet_means"] = d.wet_level
            sensors.append(entry)
        levels: dict[str, Any] = {}
        for level in LEVELS:
            step: dict[str, Any] = {}
            if r.sign:
                text = r.messages.get(level)  # type: ignore[call-overload]
                if level == "clear" and not text:
                    step["sign"] = "the board's own default text"
                elif text is None:
                    step["sign"] = "unchanged (no message for this level)"
                else:
                    step["sign"] = f"“{text}”"
            if r.gate:
                if level == "fault":
                    step["gate"] = "stays as it is: never opened automatically while a sensor is faulted"
                elif level == "clear":
                    step["gate"] = "opens"
                elif LEVELS.index(level) >= LEVELS.index(r.close_gate_at):
                    step["gate"] = (
                        f"closes once the board has shown a warning for {r.gate_min_warning_s:g} s "
                        f"(travel about {r.gate_travel_s:g} s)"
                    )
                else:
                    step["gate"] = "stays open"
            levels[level] = step
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
    return text


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
                lines.append(
                    f"  {s['id']} ({s['kind']}, every {s['poll_s']:g} s): wet means {s['wet_means']}"
                )
            else:
                lines.append(f"  {s['id']} ({s['kind']})")
            lines.append(f"    {_reads(s)}")
        lines.append(f"  ({r['level_rule']})")
        for level, step in r["levels"].items():
            what = "; ".join(f"{k}: {v}" for k, v in step.items()) or "nothing to drive"
            lines.append(f"  at {level:<8} {what}")
        if r["override"]:
            lines.append(f"  override: {r['override']}")
    lines.extend(budget_lines(e["buses"]))
    return "\n".join(lines)
