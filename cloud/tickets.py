"""Tickets: from alert to closed case, as ../shared/design/tickets.md describes.

- Alerts open or update tickets (:meth:`Tickets.on_alert`, called inside the
  ingest transaction, so an alert is never stored without its ticket change).
  One open ticket per (site, kind): the unique ``open_key`` column enforces it
  across collectors. A rising level raises the priority in place; a new
  episode within the reopen window after a close reopens the ticket.
- People move tickets through the state machine (:meth:`Tickets.act`); every
  change, by a person or by ``system``, is a row on the append-only timeline.
- Deadlines are stored on the ticket with the time of its next check;
  :meth:`Tickets.escalate_due` (run by ``cloud.scheduler`` from a ``Clock``)
  raises the escalation level: 1 when a deadline passes (the unit's leader is
  told), 2 when it is missed by its own length again (the supervision office).

Ticket kinds group alert kinds: ``flood`` (depth, immersion, forecast),
``sensor_fault`` and ``comms_lost``. Priorities: ``danger``, ``warning``
(flood tickets, from the alert level) and ``fault`` (the other kinds).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.registry import Notify, Registry
from cloud.store import (
    Store,
    alert_transitions,
    alerts,
    messages,
    nodes,
    ticket_alerts,
    ticket_timeline,
    tickets,
)
from floodgate import wire
from floodgate.clock import Clock
from floodgate.errors import RequestError
from floodgate.ids import new_ulid
from floodgate.vocab import (
    ACTIONS,
    ACTIVE,
    DEADLINE_STATES,
    LADDER,
    LEVEL_RANK,
    PRIORITY_RANK,
    TICKET_KINDS,
    priority_of,
    ticket_kind,
)

log = logging.getLogger("floodgate.cloud.tickets")

MINUTE_MS = 60_000
FROM: dict[str, tuple[str, ...]] = {k: a.from_states for k, a in ACTIONS.items()}  # action -> from states


@dataclass(frozen=True)
class Target:
    """Who an escalation goes to: ``name`` for the timeline, ``notify`` for notifications."""

    name: str
    unit: str
    notify: Notify | None


def escalation_target(registry: Registry, unit_id: str, level: int) -> Target:
    """The escalation ladder's rung for ``level`` (``floodgate.vocab.LADDER``), resolved in the registry.

    ``leader``: the ticket's unit's leader, told through its ``leader_notify``,
    else its ``notify``. ``supervision``: the registry's supervision unit, or
    its fallback unit when it names none, told through that unit's ``notify``.
    """
    rung = max((r for r in LADDER if r.level <= level), key=lambda r: r.level)
    if rung.to == "leader":
        unit = registry.units.get(unit_id)
        if unit is None:
            return Target(unit_id, unit_id, None)
        return Target(unit.leader or unit_id, unit_id, unit.leader_notify or unit.notify)
    to = registry.supervision_unit or registry.fallback_unit
    sup = registry.units.get(to)
    return Target(to, to, sup.notify if sup else None)


def allowed_actions(state: str, unit: str, role: str, caller_unit: str | None) -> list[str]:
    """The actions a caller with ``role`` (and ``caller_unit``) may take on a ticket now."""
    return [
        name
        for name, a in ACTIONS.items()
        if state in a.from_states and role in a.roles and (role != "unit" or caller_unit == unit)
    ]


class TicketError(RequestError):
    """A ticket action that cannot be done; ``code`` is not_found, conflict or invalid."""


@dataclass(frozen=True)
class TicketEvent:
    """A change worth telling someone about (after the commit): notifications, live views."""

    ticket_id: str
    action: str
    actor: str
    ts: int
    state: str
    unit: str
    priority: str
    node: str
    kind: str
    title: str
    escalation: int = 0
    note: str | None = None


class Tickets:
    def __init__(self, store: Store, registry: Registry, clock: Clock) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        # Called inside the transaction that made the events, so that what they
        # call for (notifications) is stored with the change or not at all.
        self.recorders: list[Callable[[AsyncConnection, list[TicketEvent]], Awaitable[object]]] = []

    async def _recorded(self, conn: AsyncConnection, events: list[TicketEvent]) -> None:
        if events:
            for record in self.recorders:
                await record(conn, events)

    # ------------------------------------------------------------------ alerts

    async def on_alerts(
        self, conn: AsyncConnection, items: list[tuple[str, wire.Alert]], out: list[TicketEvent]
    ) -> None:
        """Alert transitions just stored, in the caller's transaction (under ``Store.lock_tickets``).

        What reaches the tickets is not ``items`` as they came but each episode's
        transitions in the episode's own order (:meth:`_in_order`): a ``clear``
        stored by a batch that committed before the one holding its ``warning``
        waits for it, then both apply, warning first.
        """
        start = len(out)
        ready, late = await self._in_order(conn, sorted({a.id for _, a in items}))
        for node, a in late:
            await self._late(conn, node, a)
        await self._alerts(conn, ready, out)
        await self._recorded(conn, out[start:])

    async def on_alert(self, conn: AsyncConnection, node: str, a: wire.Alert, out: list[TicketEvent]) -> None:
        """One alert transition just stored (``on_alerts``)."""
        await self.on_alerts(conn, [(node, a)], out)

    async def _in_order(
        self, conn: AsyncConnection, episodes: list[str]
    ) -> tuple[list[tuple[str, wire.Alert]], list[tuple[str, wire.Alert]]]:
        """The stored transitions of ``episodes`` that may reach their tickets now; marks them.

        An episode's transitions are ordered by time, then by (boot, seq) of
        their messages. They form a chain: the first rises from ``clear``, each
        next one's ``prev`` is the level before it. Walking that order, a
        transition not yet applied is ready when it continues the chain; the
        first that does not (its predecessor is still in flight, in a batch not
        committed yet) holds itself and all after it until a later batch brings
        the missing one. One that arrives after later ones were applied is
        ``late``: it goes on the timeline and changes nothing else.

        Returns (ready, late), ready in time order across episodes.
        """
        if not episodes:
            return [], []
        t = alert_transitions
        q = (
            select(
                t.c.msg_id,
                t.c.alert_id,
                t.c.level,
                t.c.prev,
                t.c.value,
                t.c.ts,
                t.c.ticketed,
                alerts.c.node,
                alerts.c.dev,
                alerts.c.kind,
                alerts.c.unit,
                messages.c.boot,
                messages.c.seq,
            )
            .select_from(
                t.join(alerts, alerts.c.id == t.c.alert_id).outerjoin(
                    messages, messages.c.msg_id == t.c.msg_id
                )
            )
            .where(t.c.alert_id.in_(episodes))
        )

        def order(r: Any) -> tuple[Any, ...]:
            return (r.ts, -1 if r.boot is None else r.boot, -1 if r.seq is None else r.seq, r.msg_id)

        by_episode: dict[str, list[Any]] = {}
        for r in sorted((await conn.execute(q)).all(), key=order):
            by_episode.setdefault(r.alert_id, []).append(r)
        ready: list[Any] = []
        late: list[Any] = []
        copies: list[Any] = []
        for chain in by_episode.values():
            head, held = "clear", False
            last_applied = max((i for i, r in enumerate(chain) if r.ticketed), default=-1)
            seen: set[tuple[str, str, int]] = set()
            for i, r in enumerate(chain):
                same = (r.level, r.prev, r.ts)
                if same in seen and not r.ticketed:
                    copies.append(r)  # the same transition sent again under a new msg_id
                    continue
                seen.add(same)
                if r.ticketed:
                    head = r.level
                elif i < last_applied:
                    late.append(r)
                elif not held and r.prev == head:
                    ready.append(r)
                    head = r.level
                else:
                    held = True
        done = [r.msg_id for r in (*ready, *late, *copies)]
        if done:
            await conn.execute(update(t).where(t.c.msg_id.in_(done)).values(ticketed=True))
        ready.sort(key=order)

        def alert(r: Any) -> tuple[str, wire.Alert]:
            a = wire.Alert(
                id=r.alert_id,
                dev=r.dev,
                kind=r.kind,
                level=r.level,
                prev=r.prev,
                value=r.value,
                unit=r.unit,
                ts=r.ts,
            )
            return r.node, a

        return [alert(r) for r in ready], [alert(r) for r in late]

    async def _late(self, conn: AsyncConnection, node: str, a: wire.Alert) -> None:
        """A transition that arrived after later ones of its episode: on the timeline, nothing more."""
        linked_id = (
            await conn.execute(select(ticket_alerts.c.ticket_id).where(ticket_alerts.c.alert_id == a.id))
        ).scalar()
        if linked_id is not None:
            note = f"{self._what(a)}, arrived after later ones"
            await self._log(conn, {"id": linked_id}, "alert", "system", note=note, detail=_transition(a))

    async def _alerts(
        self, conn: AsyncConnection, items: list[tuple[str, wire.Alert]], out: list[TicketEvent]
    ) -> None:
        """A batch of alert transitions, in order.

        The common case in a storm, an alert that opens a ticket for a site and
        kind with no ticket open or recently closed, is done for the whole batch
        in a few statements; everything else goes through :meth:`on_alert`
        one by one, after, in the batch's order (per site and kind the order is
        kept: only the first alert of a key can take the fast path).
        """
        if not items:
            return
        keys = {(node, ticket_kind(a.kind)) for node, a in items if a.level != "clear"}
        linked = set(
            (
                await conn.execute(
                    select(ticket_alerts.c.alert_id).where(
                        ticket_alerts.c.alert_id.in_([a.id for _, a in items])
                    )
                )
            ).scalars()
        )
        busy: set[tuple[str, str]] = set()
        if keys:
            window = self.clock.now_ms() - int(self.registry.reopen_window_h * 3600_000)
            nodes_ = sorted({n for n, _ in keys})
            q = select(tickets.c.node, tickets.c.kind).where(
                tickets.c.node.in_(nodes_),
                or_(
                    tickets.c.open_key.is_not(None),
                    and_(tickets.c.state == "closed", tickets.c.closed_ms >= window),
                ),
            )
            busy = {(r.node, r.kind) for r in (await conn.execute(q)).all()}
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
            slow = [*(await self._open_many(conn, fast, out)), *slow]
        for node, a in slow:
            await self._alert(conn, node, a, out)

    async def _open_many(
        self, conn: AsyncConnection, items: list[tuple[str, wire.Alert]], out: list[TicketEvent]
    ) -> list[tuple[str, wire.Alert]]:
        """Open one ticket per item in bulk; returns the items another writer beat us to."""
        now = self.clock.now_ms()
        sites = {
            r["node"]: r
            for r in (
                await conn.execute(select(nodes).where(nodes.c.node.in_(sorted({n for n, _ in items}))))
            ).mappings()
        }
        rows: list[dict[str, Any]] = []
        for node, a in items:
            kind = ticket_kind(a.kind)
            priority = priority_of(kind, a.level)
            row = self._new_row(node, kind, priority, sites.get(node), now)
            row["last_alert_id"] = a.id
            if self.registry.auto_dispatches(node, kind, priority):
                acc, han = self._dues(priority, now)
                row |= {
                    "state": "dispatched",
                    "dispatched_ms": now,
                    "accept_due_ms": acc,
                    "handle_due_ms": han,
                }
                row["next_check_ms"] = self._next_check(row, 0, now)
            rows.append(row)
        stmt = (
            self.store.insert(tickets)
            .on_conflict_do_nothing(index_elements=["open_key"])
            .returning(tickets.c.id)
        )
        made = set((await conn.execute(stmt, rows)).scalars())
        timeline: list[dict[str, Any]] = []
        links: list[dict[str, Any]] = []
        lost: list[tuple[str, wire.Alert]] = []
        for (node, a), row in zip(items, rows, strict=True):
            if row["id"] not in made:
                lost.append((node, a))
                continue
            why = self._what(a)
            links.append({"alert_id": a.id, "ticket_id": row["id"]})
            timeline.append(
                self._entry(
                    row["id"],
                    now,
                    "system",
                    "open",
                    None,
                    "open",
                    why,
                    {"routed_to": row["unit"], **_transition(a)},
                )
            )
            out.append(self._event({**row, "state": "open"}, "open", "system", why))
            if row["state"] == "dispatched":
                detail = {
                    "unit": row["unit"],
                    "accept_due_ms": row["accept_due_ms"],
                    "handle_due_ms": row["handle_due_ms"],
                }
                note = "auto-dispatch rule"
                timeline.append(
                    self._entry(row["id"], now, "system", "dispatch", "open", "dispatched", note, detail)
                )
                out.append(self._event(row, "dispatch", "system", note))
        if links:
            await conn.execute(
                self.store.insert(ticket_alerts).on_conflict_do_nothing(index_elements=["alert_id"]), links
            )
            await conn.execute(ticket_timeline.insert(), timeline)
        return lost

    def _new_row(self, node: str, kind: str, priority: str, site: Any, now: int) -> dict[str, Any]:
        """A new open ticket, routed; every column set."""
        dept, unit = self.registry.route(node, kind)
        return {
            "id": new_ulid(now),
            "node": node,
            "kind": kind,
            "title": self._title(kind, node, site),
            "state": "open",
            "priority": priority,
            "department": dept,
            "unit": unit,
            "open_key": f"{node}/{kind}",
            "created_ms": now,
            "updated_ms": now,
            "dispatched_ms": None,
            "accept_due_ms": None,
            "handle_due_ms": None,
            "next_check_ms": None,
            "escalation": 0,
            "escalations": 0,
            "reopened": 0,
            "last_alert_id": None,
            "lat": site["lat"] if site is not None else None,
            "lon": site["lon"] if site is not None else None,
        }

    @staticmethod
    def _entry(
        tid: str,
        ts: int,
        actor: str,
        action: str,
        frm: str | None,
        to: str | None,
        note: str | None,
        detail: Any,
    ) -> dict[str, Any]:
        return {
            "ticket_id": tid,
            "ts": ts,
            "actor": actor,
            "action": action,
            "from_state": frm,
            "to_state": to,
            "note": note,
            "detail": json.dumps(detail, ensure_ascii=False) if detail else None,
        }

    @staticmethod
    def _what(a: wire.Alert) -> str:
        what = f"{a.dev} {a.kind} {a.prev} → {a.level}"
        if a.value is not None:
            what += f" ({a.value:g}{' ' + a.unit if a.unit else ''})"
        return what

    def _title(self, kind: str, node: str, site: Any) -> str:
        name = self.registry.site_name(node)
        if name == node and site is not None and site["site_name"]:
            name = site["site_name"]
        return f"{TICKET_KINDS[kind].title} {name}"  # type: ignore[index]

    async def _alert(self, conn: AsyncConnection, node: str, a: wire.Alert, out: list[TicketEvent]) -> None:
        """Open, update, raise or reopen the ticket for one alert transition."""
        kind = ticket_kind(a.kind)
        what = self._what(a)
        detail = _transition(a)
        linked_id = (
            await conn.execute(select(ticket_alerts.c.ticket_id).where(ticket_alerts.c.alert_id == a.id))
        ).scalar()
        linked = await self._row(conn, linked_id) if linked_id else None
        if a.level == "clear":
            if linked is not None:
                await self._log(conn, linked, "alert", "system", note=what, detail=detail)
                if linked["state"] == "handled" and await self._all_clear(conn, linked["id"]):
                    await self._verify_by_sensor(conn, linked, out)
            return
        rising = LEVEL_RANK[a.level] > LEVEL_RANK[a.prev]
        if linked is not None and (linked["state"] in ACTIVE or not rising):
            await self._log(conn, linked, "alert", "system", note=what, detail=detail)
            if linked["state"] in ACTIVE:
                await self._raise(conn, linked, priority_of(kind, a.level), out)
            return
        t = await self._open_for(conn, node, kind)
        if t is None:
            t = await self._reopen_recent(conn, node, kind, what, out)
        if t is None:
            t = await self._create(conn, node, kind, priority_of(kind, a.level), what, "system", out, detail)
            created = True
        else:
            created = False
        await conn.execute(
            self.store.insert(ticket_alerts)
            .values(alert_id=a.id, ticket_id=t["id"])
            .on_conflict_do_nothing(index_elements=["alert_id"])
        )
        await conn.execute(update(tickets).where(tickets.c.id == t["id"]).values(last_alert_id=a.id))
        if not created:
            await self._log(conn, t, "alert", "system", note=what, detail=detail)
            await self._raise(conn, t, priority_of(kind, a.level), out)

    async def _open_for(self, conn: AsyncConnection, node: str, kind: str) -> RowMapping | None:
        q = select(tickets).where(tickets.c.open_key == f"{node}/{kind}")
        return (await conn.execute(self._locked(q))).mappings().first()

    async def _reopen_recent(
        self, conn: AsyncConnection, node: str, kind: str, why: str, out: list[TicketEvent]
    ) -> RowMapping | None:
        window = int(self.registry.reopen_window_h * 3600_000)
        q = (
            select(tickets)
            .where(
                tickets.c.node == node,
                tickets.c.kind == kind,
                tickets.c.state == "closed",
                tickets.c.closed_ms >= self.clock.now_ms() - window,
            )
            .order_by(tickets.c.closed_ms.desc())
            .limit(1)
        )
        t = (await conn.execute(self._locked(q))).mappings().first()
        if t is None:
            return None
        return await self._reopen(conn, t, "system", f"the water is back: {why}", out)

    async def _create(
        self,
        conn: AsyncConnection,
        node: str,
        kind: str,
        priority: str,
        why: str,
        actor: str,
        out: list[TicketEvent],
        detail: dict[str, Any] | None = None,
    ) -> RowMapping:
        """A new ticket, or the one another writer opened first; ``detail`` goes on its open entry."""
        now = self.clock.now_ms()
        site = (await conn.execute(select(nodes).where(nodes.c.node == node))).mappings().first()
        row = self._new_row(node, kind, priority, site, now)
        tid, unit = row["id"], row["unit"]
        got = (
            await conn.execute(
                self.store.insert(tickets)
                .values(**row)
                .on_conflict_do_nothing(index_elements=["open_key"])
                .returning(tickets.c.id)
            )
        ).scalar()
        if got is None:  # another collector opened it first: use theirs
            t = await self._open_for(conn, node, kind)
            assert t is not None
            return t
        t = await self._row(conn, tid)
        assert t is not None
        await self._log(
            conn, t, "open", actor, to_state="open", note=why, detail={"routed_to": unit, **(detail or {})}
        )
        out.append(self._event(t, "open", actor, why))
        if self.registry.auto_dispatches(node, kind, priority):
            t = await self._dispatch(conn, t, unit, "system", "auto-dispatch rule", out)
        return t

    async def _raise(
        self, conn: AsyncConnection, t: RowMapping, priority: str, out: list[TicketEvent]
    ) -> None:
        if PRIORITY_RANK[priority] <= PRIORITY_RANK[t["priority"]]:
            return
        values: dict[str, Any] = {"priority": priority}
        if t["dispatched_ms"] is not None:
            # Tighter deadlines apply from the original dispatch, never looser ones.
            acc, han = self._dues(priority, t["dispatched_ms"])
            values["accept_due_ms"] = min(acc, t["accept_due_ms"])
            values["handle_due_ms"] = min(han, t["handle_due_ms"])
        t2 = await self._set(conn, t, values)
        await self._refresh_check(conn, t2)
        note = f"priority {t['priority']} → {priority}"
        await self._log(conn, t2, "priority", "system", note=note)
        out.append(self._event(t2, "priority", "system", note))
        if t2["state"] == "open" and self.registry.auto_dispatches(t2["node"], t2["kind"], priority):
            # Now the rule matches (a warning became danger): no dispatcher in the loop.
            await self._dispatch(conn, t2, t2["unit"], "system", "auto-dispatch rule", out)

    async def _all_clear(self, conn: AsyncConnection, ticket_id: str) -> bool:
        q = (
            select(func.count())
            .select_from(ticket_alerts.join(alerts, alerts.c.id == ticket_alerts.c.alert_id))
            .where(ticket_alerts.c.ticket_id == ticket_id, alerts.c.level != "clear")
        )
        return int((await conn.execute(q)).scalar() or 0) == 0

    async def _verify_by_sensor(self, conn: AsyncConnection, t: RowMapping, out: list[TicketEvent]) -> None:
        note = "the sensor shows the water gone"
        t2 = await self._move(conn, t, "verified", {"verified_ms": self.clock.now_ms()})
        await self._log(conn, t2, "verify", "system", from_state=t["state"], to_state="verified", note=note)
        out.append(self._event(t2, "verify", "system", note))

    # ------------------------------------------------------------------ people

    async def open_manual(
        self, actor: str, node: str, kind: str, priority: str, note: str
    ) -> tuple[dict[str, Any], list[TicketEvent]]:
        """A ticket opened by a person (a call, a patrol)."""
        if kind not in TICKET_KINDS:
            raise TicketError("invalid", f"unknown ticket kind {kind!r}")
        if priority not in PRIORITY_RANK:
            raise TicketError("invalid", f"unknown priority {priority!r}")
        out: list[TicketEvent] = []
        async with self.store.engine.begin() as conn:
            await self.store.lock_tickets(conn)
            t = await self._open_for(conn, node, kind)
            if t is not None:
                raise TicketError("conflict", f"ticket {t['id']} is already open for {node}/{kind}")
            t = await self._create(conn, node, kind, priority, note, actor, out)
            tid = t["id"]
            await self._recorded(conn, out)
        return await self.get(tid), out

    async def act(
        self,
        ticket_id: str,
        action: str,
        actor: str,
        *,
        unit: str | None = None,
        note: str | None = None,
        score: int | None = None,
        photo_url: str | None = None,
        of: str | None = None,
    ) -> tuple[dict[str, Any], list[TicketEvent]]:
        """Do one action on a ticket; returns the ticket after it and what to tell people."""
        if action not in ACTIONS:
            raise TicketError("invalid", f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        out: list[TicketEvent] = []
        async with self.store.engine.begin() as conn:
            await self.store.lock_tickets(conn)
            t = await self._row(conn, ticket_id, lock=True)
            if t is None:
                raise TicketError("not_found", f"no ticket {ticket_id}")
            if t["state"] not in FROM[action]:
                allowed = " or ".join(FROM[action])
                raise TicketError(
                    "conflict", f"cannot {action} a ticket that is {t['state']} (needs {allowed})"
                )
            await getattr(self, f"_do_{action}")(
                conn, t, actor, out, unit=unit, note=note, score=score, photo_url=photo_url, of=of
            )
            await self._recorded(conn, out)
        return await self.get(ticket_id), out

    async def _do_dispatch(
        self, conn: AsyncConnection, t: RowMapping, actor: str, out: list[TicketEvent], **kw: Any
    ) -> None:
        unit = kw["unit"] or t["unit"]
        if unit not in self.registry.units:
            raise TicketError("invalid", f"unknown unit {unit!r}")
        await self._dispatch(conn, t, unit, actor, kw["note"], out)

    async def _dispatch(
        self,
        conn: AsyncConnection,
        t: RowMapping,
        unit: str,
        actor: str,
        note: str | None,
        out: list[TicketEvent],
    ) -> RowMapping:
        now = self.clock.now_ms()
        acc, han = self._dues(t["priority"], now)
        t2 = await self._move(
            conn,
            t,
            "dispatched",
            {
                "unit": unit,
                "dispatched_ms": now,
                "accept_due_ms": acc,
                "handle_due_ms": han,
                "accepted_ms": None,
                "handled_ms": None,
                "escalation": 0,
            },
        )
        t2 = await self._refresh_check(conn, t2)
        detail = {"unit": unit, "accept_due_ms": acc, "handle_due_ms": han}
        await self._log(
            conn,
            t2,
            "dispatch",
            actor,
            from_state=t["state"],
            to_state="dispatched",
            note=note,
            detail=detail,
        )
        out.append(self._event(t2, "dispatch", actor, note))
        return t2

    async def _do_accept(
        self, conn: AsyncConnection, t: RowMapping, actor: str, out: list[TicketEvent], **kw: Any
    ) -> None:
        now = self.clock.now_ms()
        t2 = await self._move(
            conn, t, "accepted", {"accepted_ms": now, "accepted_on_time": now <= t["accept_due_ms"]}
        )
        await self._refresh_check(conn, t2)
        await self._log(
            conn, t2, "accept", actor, from_state=t["state"], to_state="accepted", note=kw["note"]
        )
        out.append(self._event(t2, "accept", actor, kw["note"]))

    async def _do_reject(
        self, conn: AsyncConnection, t: RowMapping, actor: str, out: list[TicketEvent], **kw: Any
    ) -> None:
        note = kw["note"]
        if not note:
            raise TicketError("invalid", "a rejection needs a note saying why")
        t2 = await self._move(conn, t, "open", {"next_check_ms": None, "dispatched_ms": None})
        await self._log(conn, t2, "reject", actor, from_state=t["state"], to_state="open", note=note)
        out.append(self._event(t2, "reject", actor, note))
        # With no dispatcher in the loop (auto-dispatch), the fallback unit takes it.
        fallback = self.registry.fallback_unit
        if t["unit"] != fallback and self.registry.auto_dispatches(t["node"], t["kind"], t["priority"]):
            await self._dispatch(
                conn, t2, fallback, "system", f"rejected by {t['unit']}: to the fallback unit", out
            )

    async def _do_report(
        self, conn: AsyncConnection, t: RowMapping, actor: str, out: list[TicketEvent], **kw: Any
    ) -> None:
        note = kw["note"]
        if not note:
            raise TicketError("invalid", "a report needs a note saying what was done")
        now = self.clock.now_ms()
        t2 = await self._move(
            conn,
            t,
            "handled",
            {"handled_ms": now, "handled_on_time": now <= t["handle_due_ms"], "next_check_ms": None},
        )
        detail = {"photo_url": kw["photo_url"]} if kw["photo_url"] else None
        await self._log(
            conn, t2, "report", actor, from_state=t["state"], to_state="handled", note=note, detail=detail
        )
        out.append(self._event(t2, "report", actor, note))
        if t["kind"] == "flood" and await self._all_clear(conn, t["id"]) and t["last_alert_id"]:
            await self._verify_by_sensor(conn, t2, out)

    async def _do_verify(
        self, conn: AsyncConnection, t: RowMapping, actor: str, out: list[TicketEvent], **kw: Any
    ) -> None:
        t2 = await self._move(conn, t, "verified", {"verified_ms": self.clock.now_ms()})
        await self._log(
            conn, t2, "verify", actor, from_state=t["state"], to_state="verified", note=kw["note"]
        )
        out.append(self._event(t2, "verify", actor, kw["note"]))

    async def _do_evaluate(
        self, conn: AsyncConnection, t: RowMapping, actor: str, out: list[TicketEvent], **kw: Any
    ) -> None:
        score = kw["score"]
        if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
            raise TicketError("invalid", "an evaluation needs a score from 1 to 5")
        values = {"closed_ms": self.clock.now_ms(), "score": score, "comment": kw["note"], "open_key": None}
        t2 = await self._move(conn, t, "closed", values)
        detail = {"score": score}
        await self._log(
            conn,
            t2,
            "evaluate",
            actor,
            from_state=t["state"],
            to_state="closed",
            note=kw["note"],
            detail=detail,
        )
        out.append(self._event(t2, "close", actor, kw["note"]))

    async def _do_reopen(
        self, conn: AsyncConnection, t: RowMapping, actor: str, out: list[TicketEvent], **kw: Any
    ) -> None:
        if not kw["note"]:
            raise TicketError("invalid", "reopening needs a note saying why")
        if t["state"] == "closed" and await self._open_for(conn, t["node"], t["kind"]) is not None:
            raise TicketError(
                "conflict", f"another ticket is open for {t['node']}/{t['kind']}; merge instead"
            )
        await self._reopen(conn, t, actor, kw["note"], out)

    async def _reopen(
        self, conn: AsyncConnection, t: RowMapping, actor: str, note: str, out: list[TicketEvent]
    ) -> RowMapping:
        values = {
            "open_key": f"{t['node']}/{t['kind']}",
            "reopened": t["reopened"] + 1,
            "closed_ms": None,
            "verified_ms": None,
            "score": None,
            "next_check_ms": None,
        }
        t2 = await self._move(conn, t, "open", values)
        await self._log(conn, t2, "reopen", actor, from_state=t["state"], to_state="open", note=note)
        out.append(self._event(t2, "reopen", actor, note))
        if self.registry.auto_dispatches(t2["node"], t2["kind"], t2["priority"]):
            t2 = await self._dispatch(conn, t2, t2["unit"], "system", "auto-dispatch rule", out)
        return t2

    async def _do_merge(
        self, conn: AsyncConnection, t: RowMapping, actor: str, out: list[TicketEvent], **kw: Any
    ) -> None:
        of = kw["of"]
        if not of or of == t["id"]:
            raise TicketError("invalid", "merge needs 'of': the id of another ticket")
        other = await self._row(conn, of, lock=True)
        if other is None:
            raise TicketError("invalid", f"no ticket {of} to merge into")
        if other["state"] == "duplicate":
            raise TicketError("invalid", f"ticket {of} is itself a duplicate of {other['duplicate_of']}")
        # Its alerts follow it, so later transitions land on the ticket that stays.
        await conn.execute(
            update(ticket_alerts).where(ticket_alerts.c.ticket_id == t["id"]).values(ticket_id=of)
        )
        t2 = await self._move(
            conn, t, "duplicate", {"duplicate_of": of, "open_key": None, "next_check_ms": None}
        )
        await self._log(
            conn,
            t2,
            "merge",
            actor,
            from_state=t["state"],
            to_state="duplicate",
            note=kw["note"],
            detail={"of": of},
        )
        await self._log(conn, other, "merged", actor, note=kw["note"], detail={"duplicate": t["id"]})
        out.append(self._event(t2, "merge", actor, kw["note"]))

    async def _do_comment(
        self, conn: AsyncConnection, t: RowMapping, actor: str, out: list[TicketEvent], **kw: Any
    ) -> None:
        if not kw["note"]:
            raise TicketError("invalid", "a comment needs a note")
        await self._log(conn, t, "comment", actor, note=kw["note"])

    # -------------------------------------------------------------- escalation

    def _dues(self, priority: str, dispatched_ms: int) -> tuple[int, int]:
        d = self.registry.deadline(priority)
        return (
            dispatched_ms + int(d.accept_min * MINUTE_MS),
            dispatched_ms + int(d.handle_min * MINUTE_MS),
        )

    def _ladder(self, t: RowMapping | dict[str, Any]) -> list[tuple[int, int, str, int]]:
        """(time, level, deadline name, due) steps that apply in the ticket's state."""
        if t["dispatched_ms"] is None:
            return []
        steps: list[tuple[int, int, str, int]] = []
        acc, han = t["accept_due_ms"], t["handle_due_ms"]
        if t["state"] == "dispatched":
            span = acc - t["dispatched_ms"]
            steps += [(acc, 1, "accept", acc), (acc + span, 2, "accept", acc)]
        if t["state"] in DEADLINE_STATES:
            span = han - t["dispatched_ms"]
            steps += [(han, 1, "handle", han), (han + span, 2, "handle", han)]
        return steps

    def _next_check(self, t: RowMapping | dict[str, Any], level: int, now: int) -> int | None:
        future = [at for at, lvl, _, _ in self._ladder(t) if lvl > level and at > now]
        return min(future) if future else None

    async def _refresh_check(self, conn: AsyncConnection, t: RowMapping) -> RowMapping:
        nxt = self._next_check(t, t["escalation"], self.clock.now_ms())
        if nxt == t["next_check_ms"]:
            return t
        return await self._set(conn, t, {"next_check_ms": nxt})

    async def next_check(self) -> int | None:
        async with self.store.read() as conn:
            q = select(func.min(tickets.c.next_check_ms)).where(tickets.c.state.in_(DEADLINE_STATES))
            v = (await conn.execute(q)).scalar()
            return int(v) if v is not None else None

    async def escalate_due(self) -> list[TicketEvent]:
        """Raise the escalation of every ticket whose deadline has passed; idempotent."""
        now = self.clock.now_ms()
        out: list[TicketEvent] = []
        async with self.store.engine.begin() as conn:
            await self.store.lock_tickets(conn)
            q = (
                select(tickets)
                .where(tickets.c.next_check_ms <= now, tickets.c.state.in_(DEADLINE_STATES))
                .order_by(tickets.c.next_check_ms)
            )
            for t in (await conn.execute(self._locked(q))).mappings().all():
                passed = [(lvl, name, due) for at, lvl, name, due in self._ladder(t) if at <= now]
                level, name, due = max(passed, default=(0, "", 0))
                values: dict[str, Any] = {
                    "next_check_ms": self._next_check(t, max(level, t["escalation"]), now)
                }
                if level > t["escalation"]:
                    values |= {"escalation": level, "escalations": t["escalations"] + level - t["escalation"]}
                result = await conn.execute(
                    update(tickets)
                    .where(
                        tickets.c.id == t["id"],
                        tickets.c.escalation == t["escalation"],
                        tickets.c.state == t["state"],
                    )
                    .values(**values, updated_ms=now if level > t["escalation"] else t["updated_ms"])
                )
                if result.rowcount != 1 or level <= t["escalation"]:
                    continue
                to = escalation_target(self.registry, t["unit"], level).name
                late = (now - due) // MINUTE_MS
                note = f"{name} deadline missed by {late} min: level {level}, to {to}"
                t2 = {**t, **values}
                await self._log(
                    conn,
                    t2,
                    "escalate",
                    "system",
                    note=note,
                    detail={"level": level, "deadline": name, "due_ms": due, "to": to},
                )
                ev = self._event(t2, "escalate", "system", note)
                out.append(ev)
                log.warning(
                    "ticket %s escalated to level %d",
                    t["id"],
                    level,
                    extra={"unit": t["unit"], "deadline": name},
                )
            await self._recorded(conn, out)
        return out

    # ------------------------------------------------------------------- reads

    async def get(self, ticket_id: str) -> dict[str, Any]:
        async with self.store.read() as conn:
            t = await self._row(conn, ticket_id)
            if t is None:
                raise TicketError("not_found", f"no ticket {ticket_id}")
            timeline = (
                (
                    await conn.execute(
                        select(ticket_timeline)
                        .where(ticket_timeline.c.ticket_id == ticket_id)
                        .order_by(ticket_timeline.c.id)
                    )
                )
                .mappings()
                .all()
            )
            linked = (
                (
                    await conn.execute(
                        select(alerts)
                        .join(ticket_alerts, ticket_alerts.c.alert_id == alerts.c.id)
                        .where(ticket_alerts.c.ticket_id == ticket_id)
                        .order_by(alerts.c.first_ts)
                    )
                )
                .mappings()
                .all()
            )
        now = self.clock.now_ms()
        out = self._public(t, now)
        out["timeline"] = [
            {**dict(e), "detail": json.loads(e["detail"]) if e["detail"] else None} for e in timeline
        ]
        out["alerts"] = [dict(a) for a in linked]
        return out

    async def list(
        self,
        *,
        state: Sequence[str] = (),
        unit: str | None = None,
        node: str | None = None,
        kind: str | None = None,
        overdue: bool | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[int, list[dict[str, Any]]]:
        now = self.clock.now_ms()
        cond: list[ColumnElement[bool]] = []
        if state:
            cond.append(tickets.c.state.in_(list(state)))
        if unit:
            cond.append(tickets.c.unit == unit)
        if node:
            cond.append(tickets.c.node == node)
        if kind:
            cond.append(tickets.c.kind == kind)
        if overdue is not None:
            o = overdue_clause(now)
            cond.append(o if overdue else ~o)
        where = and_(*cond) if cond else None
        q = (
            select(tickets)
            .order_by(tickets.c.created_ms.desc(), tickets.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        n = select(func.count()).select_from(tickets)
        if where is not None:
            q, n = q.where(where), n.where(where)
        async with self.store.read() as conn:
            total = int((await conn.execute(n)).scalar() or 0)
            rows = (await conn.execute(q)).mappings().all()
        return total, [self._public(r, now) for r in rows]

    # ----------------------------------------------------------------- helpers

    def _public(self, t: RowMapping, now: int) -> dict[str, Any]:
        out = {k: v for k, v in dict(t).items() if k not in ("open_key", "next_check_ms")}
        out["overdue"] = is_overdue(t, now)
        return out

    def _locked(self, q: Any) -> Any:
        # SQLite has one writer at a time already (BEGIN IMMEDIATE).
        return q.with_for_update() if self.store.dialect == "postgresql" else q

    async def _row(self, conn: AsyncConnection, ticket_id: str, lock: bool = False) -> RowMapping | None:
        q = select(tickets).where(tickets.c.id == ticket_id)
        return (await conn.execute(self._locked(q) if lock else q)).mappings().first()

    async def _set(self, conn: AsyncConnection, t: RowMapping, values: dict[str, Any]) -> RowMapping:
        values = {**values, "updated_ms": self.clock.now_ms()}
        await conn.execute(update(tickets).where(tickets.c.id == t["id"]).values(**values))
        row = await self._row(conn, t["id"])
        assert row is not None
        return row

    async def _move(
        self, conn: AsyncConnection, t: RowMapping, to: str, values: dict[str, Any]
    ) -> RowMapping:
        """Change state only from the state we read (another writer may have moved it)."""
        values = {**values, "state": to, "updated_ms": self.clock.now_ms()}
        result = await conn.execute(
            update(tickets).where(tickets.c.id == t["id"], tickets.c.state == t["state"]).values(**values)
        )
        if result.rowcount != 1:
            raise TicketError("conflict", f"ticket {t['id']} changed meanwhile; read it again")
        row = await self._row(conn, t["id"])
        assert row is not None
        return row

    async def _log(
        self,
        conn: AsyncConnection,
        t: RowMapping | dict[str, Any],
        action: str,
        actor: str,
        *,
        from_state: str | None = None,
        to_state: str | None = None,
        note: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        await conn.execute(
            ticket_timeline.insert().values(
                ticket_id=t["id"],
                ts=self.clock.now_ms(),
                actor=actor,
                action=action,
                from_state=from_state,
                to_state=to_state,
                note=note,
                detail=json.dumps(detail, ensure_ascii=False) if detail else None,
            )
        )

    def _event(
        self, t: RowMapping | dict[str, Any], action: str, actor: str, note: str | None
    ) -> TicketEvent:
        return TicketEvent(
            ticket_id=t["id"],
            action=action,
            actor=actor,
            ts=self.clock.now_ms(),
            state=t["state"],
            unit=t["unit"],
            priority=t["priority"],
            node=t["node"],
            kind=t["kind"],
            title=t["title"],
            escalation=t["escalation"],
            note=note,
        )


def _transition(a: wire.Alert) -> dict[str, Any]:
    """An alert transition as a timeline entry's detail."""
    return {"alert_id": a.id, "dev": a.dev, "level": a.level, "prev": a.prev, "value": a.value, "ts": a.ts}


def is_overdue(t: RowMapping | dict[str, Any], now: int) -> bool:
    if t["state"] == "dispatched" and t["accept_due_ms"] is not None and now > t["accept_due_ms"]:
        return True
    return bool(t["state"] in DEADLINE_STATES and t["handle_due_ms"] is not None and now > t["handle_due_ms"])


def overdue_clause(now: int) -> Any:
    return or_(
        and_(tickets.c.state == "dispatched", tickets.c.accept_due_ms < now),
        and_(tickets.c.state.in_(DEADLINE_STATES), tickets.c.handle_due_ms < now),
    )
