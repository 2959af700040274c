"""The storm path: a batch of alert transitions onto tickets in a few statements.

In a storm most transitions open a ticket for a site and kind with nothing
open or recently closed; those are opened for the whole batch at once (one
INSERT … ON CONFLICT on ``open_key``, their links and timeline entries in one
statement each). Everything else, and any the bulk insert lost to another
writer, goes through the service one by one after, in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloud.db import tickets as db
from cloud.db.store import Conn
from cloud.tickets.machine import TicketEvent, dues, event, next_check, transition, what
from cloud.tickets.rows import new_row
from floodgate import wire
from floodgate.vocab import priority_of, ticket_kind

if TYPE_CHECKING:
    from cloud.tickets.service import Tickets


async def apply_alerts(
    svc: Tickets, conn: Conn, items: list[tuple[str, wire.Alert]], out: list[TicketEvent]
) -> None:
    """A batch of alert transitions, in order.

    The common case in a storm, an alert that opens a ticket for a site and
    kind with no ticket open or recently closed, is done for the whole batch
    in a few statements; everything else goes through ``Tickets.on_one``
    one by one (``Tickets.on_one``), after, in the batch's order (per site and kind the order is
    kept: only the first alert of a key can take the fast path).
    """
    if not items:
        return
    keys = {(node, ticket_kind(a.kind)) for node, a in items if a.level != "clear"}
    linked = await db.linked_of(conn, [a.id for _, a in items])
    busy: set[tuple[str, str]] = set()
    if keys:
        window = svc.clock.now_ms() - int(svc.registry.reopen_window_h * 3600_000)
        busy = await db.busy(conn, sorted({n for n, _ in keys}), window)
    fast: list[tuple[str, wire.Alert]] = []
    slow: list[tuple[str, wire.Alert]] = []
    taken: set[tuple[str, str]] = set()
    for node, a in items:
        key = (node, ticket_kind(a.kind))
        if a.level != "clear" and a.id not in linked and key not in busy and key not in taken:
            fast.append((node, a))
        else:
            slow.append((node, a))
        taken.add(key)
    if fast:
        slow = [*(await open_many(svc, conn, fast, out)), *slow]
    for node, a in slow:
        await svc.on_one(conn, node, a, out)


async def open_many(
    svc: Tickets, conn: Conn, items: list[tuple[str, wire.Alert]], out: list[TicketEvent]
) -> list[tuple[str, wire.Alert]]:
    """Open one ticket per item in bulk; returns the items another writer beat us to."""
    now = svc.clock.now_ms()
    sites = await db.sites(conn, sorted({n for n, _ in items}))
    rows: list[dict[str, Any]] = []
    for node, a in items:
        kind = ticket_kind(a.kind)
        priority = priority_of(kind, a.level)
        row = new_row(svc.registry, node, kind, priority, sites.get(node), now)
        row["last_alert_id"] = a.id
        if svc.registry.auto_dispatches(node, kind, priority):
            acc, han = dues(svc.registry, priority, now)
            row |= {
                "state": "dispatched",
                "dispatched_ms": now,
                "accept_due_ms": acc,
                "handle_due_ms": han,
            }
            row["next_check_ms"] = next_check(row, 0, now)
        rows.append(row)
    made = await db.add_many(conn, rows)
    timeline: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    lost: list[tuple[str, wire.Alert]] = []
    for (node, a), row in zip(items, rows, strict=True):
        if row["id"] not in made:
            lost.append((node, a))
            continue
        why = what(a)
        links.append({"alert_id": a.id, "ticket_id": row["id"]})
        timeline.append(
            db.entry(
                row["id"],
                now,
                "system",
                "open",
                None,
                "open",
                why,
                {"code": "routed", "routed_to": row["unit"], **transition(a)},
            )
        )
        out.append(event({**row, "state": "open"}, "open", "system", why, now))
        if row["state"] == "dispatched":
            detail = {
                "unit": row["unit"],
                "accept_due_ms": row["accept_due_ms"],
                "handle_due_ms": row["handle_due_ms"],
                "code": "auto_dispatch",
            }
            note = "auto-dispatch rule"
            timeline.append(
                db.entry(row["id"], now, "system", "dispatch", "open", "dispatched", note, detail)
            )
            out.append(event(row, "dispatch", "system", note, now))
    if links:
        await db.link(conn, links)
        await db.log_many(conn, timeline)
    return lost
