"""One row per site for the map: where it is, how wet, what its board and gate do, its tickets."""

from __future__ import annotations

import json
from typing import Any

from cloud.db import sites
from cloud.db import tickets as ticket_db
from cloud.db.store import Store
from floodgate.vocab import ALERT_KINDS, LEVEL_RANK, kinds

WATER = kinds(water=True)
RANK = LEVEL_RANK


async def site_overview(store: Store, node: str | None = None) -> list[dict[str, Any]]:
    rows, active, acts, open_tickets = await sites.overview_rows(store, node)
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        # Until a board or gate changes, what the box last said of them (birth, heartbeat).
        health = json.loads(r["health"]) if r["health"] else {}
        said: dict[str, Any] = next(iter((health.get("responses") or {}).values()), {})
        out[r["node"]] = {
            "node": r["node"],
            "name": r["site_name"] or r["node"],
            "address": r["address"],
            "lat": r["lat"],
            "lon": r["lon"],
            "online": bool(r["online"]),
            "last_seen_ms": r["last_seen_ms"],
            "exercise": bool(r["exercise"]),
            "level": "clear",
            "forecast": None,
            "faults": [],
            "gate": said.get("gate"),
            "gate_closing": None,
            "sign": said.get("sign"),
            "tickets": [],
        }
    for a in active:
        site = out.get(a["node"])
        if site is None:
            continue
        if a["kind"] in WATER and not ALERT_KINDS[a["kind"]].observed:
            # Forecast water is not measured water: its own field, never the site's level.
            if site["forecast"] is None or RANK[a["level"]] > RANK[site["forecast"]]:
                site["forecast"] = a["level"]
        elif a["kind"] in WATER:
            if RANK[a["level"]] > RANK[site["level"]]:
                site["level"] = a["level"]
        else:
            site["faults"].append({"dev": a["dev"], "kind": a["kind"], "reason": a["reason"]})
    for e in acts:
        site = out.get(e["node"])
        if site is None:
            continue
        d = json.loads(e["detail"]) if e["detail"] else {}
        if "text" in d:
            site["sign"] = d["text"]
        elif "state" in d:
            site["gate"] = d["state"]
            site["gate_closing"] = _closing(d, e["ts"])
        elif "do" in d:
            site["gate"] = "closing" if d["do"] == "close" else "opening"
    forecast_only, _ = await ticket_db.forecast_of(
        store, [t["id"] for t in open_tickets], kinds(water=True, observed=False)
    )
    for t in open_tickets:
        site = out.get(t["node"])
        if site is not None:
            site["tickets"].append({**dict(t), "forecast": t["id"] in forecast_only})
    return list(out.values())


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _closing(d: dict[str, Any], ts: int) -> dict[str, Any] | None:
    """The close the edge has announced for its gate (``closing: pending``), or None.

    The edge says when it will close (``closes_at``, once its board's warning is
    confirmed): the dashboard counts down to that, it does not guess.
    """
    if d.get("closing") != "pending":
        return None
    at = _num(d.get("closes_at"))
    return {
        "closes_at": None if at is None else int(at),
        "min_warning_s": _num(d.get("min_warning_s")),
        "announced_ms": ts,
    }
