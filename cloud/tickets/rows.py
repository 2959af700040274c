"""A new ticket's row: routed, titled, placed (``cloud.db.tickets`` stores it)."""

from __future__ import annotations

from typing import Any

from cloud.registry import Registry
from cloud.tickets.machine import dispatch_due, title
from floodgate.ids import new_ulid


def new_row(registry: Registry, node: str, kind: str, priority: str, site: Any, now: int) -> dict[str, Any]:
    """A new open ticket, routed; every column set. ``site``: the node's row, if any."""
    dept, unit = registry.route(node, kind)
    return {
        "id": new_ulid(now),
        "node": node,
        "kind": kind,
        "title": title(registry, kind, node, site["site_name"] if site is not None else None),
        "state": "open",
        "priority": priority,
        "department": dept,
        "unit": unit,
        "open_key": f"{node}/{kind}",
        "created_ms": now,
        "updated_ms": now,
        "dispatched_ms": None,
        "opened_ms": now,
        "dispatch_due_ms": (due := dispatch_due(registry, priority, now)),
        "accept_due_ms": None,
        "handle_due_ms": None,
        "next_check_ms": due,
        "escalation": 0,
        "escalations": 0,
        "reopened": 0,
        "last_alert_id": None,
        "lat": site["lat"] if site is not None else None,
        "lon": site["lon"] if site is not None else None,
    }
