"""The ticket service: the machine (``cloud.tickets.machine``) applied to the database.

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

Which alert kind opens which ticket kind, and the priorities, are
``floodgate.vocab``'s; the rules are in ``docs/tickets.md``.

A system entry on the timeline says why in its ``detail``: a ``code`` and its
parameters (``TIMELINE_CODES``), which the dashboard translates; its ``note``
stays the English sentence for other readers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

from cloud.db import forecast as forecast_db
from cloud.db import tickets as db
from cloud.db.store import Conn, Row, Store
from cloud.events import Bus, TicketsChanged
from cloud.forecast import FORECAST_DEV
from cloud.registry import Registry
from cloud.tickets import machine, rows, storm
from cloud.tickets.machine import MINUTE_MS, TicketError, TicketEvent, escalation_target, is_overdue
from floodgate import wire
from floodgate.clock import Clock
from floodgate.vocab import (
    ACTIONS,
    ACTIVE,
    ALERT_KINDS,
    DEADLINE_STATES,
    LEVEL_RANK,
    PRIORITY_RANK,
    TICKET_KINDS,
    kinds,
    priority_of,
    ticket_kind,
)

log = logging.getLogger("floodgate.cloud.tickets")

FORECAST_KINDS = kinds(water=True, observed=False)  # water expected, not measured


# How long a transition waits for its predecessor before it is released out of order
# (collector config ``release_held_after_s``).
RELEASE_HELD_AFTER_MS = 600_000

AUTO_DISPATCH = "auto-dispatch rule"
# The codes of system timeline entries (detail["code"]) and the parameters each carries
# beside it. An alert entry has none: its detail is the transition (dev, prev, level, value;
# ``late``: it arrived after later ones of its episode; ``out_of_order``: released without the one before).
TIMELINE_CODES = {
    "routed": ("routed_to",),  # opened, routed to the unit
    "auto_dispatch": ("unit",),  # dispatched by the registry's auto-dispatch rule
    "rejected_to_fallback": ("rejected_by", "unit"),  # rejected: to the fallback unit
    "priority": ("from", "to"),  # the priority rose with the alert
    "water_gone": (),  # verified: the sensors read dry
    "water_back": (),  # reopened: a new episode within the reopen window
    "escalated": ("level", "deadline", "due_ms", "to", "to_unit"),  # a deadline missed
    # a forecast's water is expected at ``expected_ms``: dispatch by ``dispatch_due_ms`` (cloud.forecast)
    "forecast_deadline": ("dispatch_due_ms", "expected_ms"),
    # the first measured alert joined a ticket of forecasts: the water is measured now (``at_ms`` at
    # the edge); ``expected_ms``: when the forecast expected its level, if it said
    "measured": ("alert_id", "kind", "dev", "level", "at_ms", "expected_ms"),
}


class Tickets:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        clock: Clock,
        bus: Bus | None = None,
        release_held_after_ms: int = RELEASE_HELD_AFTER_MS,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.bus = bus or Bus()
        self.release_held_after_ms = release_held_after_ms

    async def _recorded(self, conn: Conn, events: list[TicketEvent]) -> None:
        """The bus's ``with_commit`` subscribers (notification deliveries) hear of the events
        inside the transaction that made them. Publishing after the commit is the committer's."""
        if events:
            await self.bus.record(conn, TicketsChanged(events))

    # ------------------------------------------------------------------ alerts

    async def on_alerts(
        self, conn: Conn, items: list[tuple[str, wire.Alert]], out: list[TicketEvent]
    ) -> None:
        """Alert transitions just stored, in the caller's transaction (under ``Store.lock_tickets``).

        What reaches the tickets is not ``items`` as they came but each episode's
        transitions in the episode's own order (:meth:`_in_order`): a ``clear``
        stored by a batch that committed before the one holding its ``warning``
        waits for it, then both apply, warning first.
        """
        start = len(out)
        await self._walk(conn, sorted({a.id for _, a in items}), out)
        await self._recorded(conn, out[start:])

    async def _walk(self, conn: Conn, episodes: list[str], out: list[TicketEvent]) -> None:
        """What of ``episodes`` may reach the tickets now (``_in_order``), applied."""
        ready, late, released = await self._in_order(conn, episodes)
        for node, a in late:
            await self._late(conn, node, a)
        if not any(released):
            await storm.apply_alerts(self, conn, ready, out)
            return
        for (node, a), r in zip(ready, released, strict=True):  # rare: one by one, noted
            await self.on_one(conn, node, a, out, released=r)

    async def release_held(self) -> list[TicketEvent]:
        """Transitions held longer than ``release_held_after_ms`` (their predecessor lost, or
        dead-lettered) applied out of order, and what follows them in their episodes."""
        out: list[TicketEvent] = []
        since = self.clock.now_ms() - self.release_held_after_ms
        first = await db.first_held(self.store)
        if first is None or first > since:
            # Most runs: a read of an index of nothing, not the ticket lock that every
            # batch's ticket step takes (the scheduler runs after each batch that changes one).
            return out
        async with self.store.begin() as conn:
            await self.store.lock_tickets(conn)
            episodes = await db.held_episodes(conn, since)
            if episodes:
                await self._walk(conn, episodes, out)
                await self._recorded(conn, out)
        return out

    async def next_release(self) -> int | None:
        """When the longest-held transition is to be released, if one is held."""
        first = await db.first_held(self.store)
        return None if first is None else first + self.release_held_after_ms

    async def on_alert(self, conn: Conn, node: str, a: wire.Alert, out: list[TicketEvent]) -> None:
        """One alert transition just stored (``on_alerts``)."""
        await self.on_alerts(conn, [(node, a)], out)

    async def _in_order(
        self, conn: Conn, episodes: list[str]
    ) -> tuple[list[tuple[str, wire.Alert]], list[tuple[str, wire.Alert]], list[bool]]:
        """The stored transitions of ``episodes`` that may reach their tickets now (``machine.in_order``),
        marked as applied, the held ones marked held; returns (ready, late, whether each of
        ready is released out of order)."""
        if not episodes:
            return [], [], []
        now = self.clock.now_ms()
        walk = machine.in_order(
            await db.episode_transitions(conn, episodes), now - self.release_held_after_ms
        )
        await db.mark_ticketed(conn, [r.msg_id for r in (*walk.ready, *walk.late, *walk.copies)])
        await db.mark_held(conn, [r.msg_id for r in walk.held if r.held_ms is None], now)
        released = {r.msg_id for r in walk.released}
        for r in walk.released:
            log.warning(
                "alert %s: %s → %s released out of order, held %d s without the transition before it",
                r.alert_id,
                r.prev,
                r.level,
                (now - r.held_ms) // 1000,
            )

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
                eta_s=r.eta_s,
                reason=r.reason,
            )
            return r.node, a

        return (
            [alert(r) for r in walk.ready],
            [alert(r) for r in walk.late],
            [r.msg_id in released for r in walk.ready],
        )

    async def _late(self, conn: Conn, node: str, a: wire.Alert) -> None:
        """A transition that arrived after later ones of its episode: on the timeline, nothing more."""
        linked_id = await db.linked(conn, a.id)
        if linked_id is not None:
            note = f"{machine.what(a)}, arrived after later ones"
            detail = {**machine.transition(a), "late": True}
            await self._log(conn, {"id": linked_id}, "alert", "system", note=note, detail=detail)

    async def on_one(
        self, conn: Conn, node: str, a: wire.Alert, out: list[TicketEvent], released: bool = False
    ) -> None:
        """Open, update, raise or reopen the ticket for one alert transition (ready: ``_in_order``).

        ``released``: held too long for the one before it, applied out of order, and noted so."""
        kind = ticket_kind(a.kind)
        what = machine.what(a)
        detail = machine.transition(a)
        if released:
            what += ", released out of order: the transition before it never arrived"
            detail["out_of_order"] = True
        linked_id = await db.linked(conn, a.id)
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
        measured = None if created else await self._measured_now(conn, t["id"], a)
        await db.link_one(conn, a.id, t["id"])
        await db.set_values(conn, t["id"], {"last_alert_id": a.id})
        if not created:
            await self._log(conn, t, "alert", "system", note=what, detail=detail)
            if measured is not None:
                await self._log(conn, t, "measured", "system", note=measured[0], detail=measured[1])
            await self._raise(conn, t, priority_of(kind, a.level), out)

    async def _measured_now(
        self, conn: Conn, ticket_id: str, a: wire.Alert
    ) -> tuple[str, dict[str, Any]] | None:
        """When ``a`` is the first measured alert to join a ticket of forecasts (before it is linked):
        the timeline entry that says the ticket is measured now (note, detail)."""
        info = ALERT_KINDS.get(a.kind)
        if info is None or not info.water or not info.observed:
            return None
        if not await db.forecast_only(conn, [ticket_id], FORECAST_KINDS):
            return None
        pred = await db.prediction(conn, ticket_id, FORECAST_KINDS)
        expected = None
        if pred is not None and pred["eta_s"] is not None:
            expected = int(pred["ts"] + pred["eta_s"] * 1000)
        detail = {
            "code": "measured",
            "alert_id": a.id,
            "kind": a.kind,
            "dev": a.dev,
            "level": a.level,
            "at_ms": a.ts,
            "expected_ms": expected,
        }
        note = f"measured at the site: {a.dev} {a.level} at {machine.utc(a.ts)}, no longer a forecast"
        if expected is not None:
            note += f" (the forecast expected it at {machine.utc(expected)})"
        return note, detail

    async def dispatch_by(self, conn: Conn, alert_id: str, due_ms: int, expected_ms: int) -> None:
        """The ticket of ``alert_id``, while open, is to be dispatched by ``due_ms`` (never later
        than its priority says; never before now): a forecast's water is expected at
        ``expected_ms``. Called in the transaction that applied the alert, under the ticket lock."""
        ticket_id = await db.linked(conn, alert_id)
        t = await self._row(conn, ticket_id) if ticket_id else None
        if t is None or t["state"] != "open" or t["dispatch_due_ms"] is None:
            return
        due = max(due_ms, self.clock.now_ms())
        if due >= t["dispatch_due_ms"]:
            return
        t2 = await self._refresh_check(conn, await self._set(conn, t, {"dispatch_due_ms": due}))
        note = f"water expected at {machine.utc(expected_ms)}: dispatch by {machine.utc(due)}"
        detail = {"code": "forecast_deadline", "dispatch_due_ms": due, "expected_ms": expected_ms}
        await self._log(conn, t2, "deadline", "system", note=note, detail=detail)

    async def _open_for(self, conn: Conn, node: str, kind: str) -> Row | None:
        return await db.open_for(conn, node, kind)

    async def _reopen_recent(
        self, conn: Conn, node: str, kind: str, why: str, out: list[TicketEvent]
    ) -> Row | None:
        window = int(self.registry.reopen_window_h * 3600_000)
        t = await db.closed_since(conn, node, kind, self.clock.now_ms() - window)
        if t is None:
            return None
        return await self._reopen(conn, t, "system", f"the water is back: {why}", out, {"code": "water_back"})

    async def _create(
        self,
        conn: Conn,
        node: str,
        kind: str,
        priority: str,
        why: str,
        actor: str,
        out: list[TicketEvent],
        detail: dict[str, Any] | None = None,
    ) -> Row:
        """A new ticket, or the one another writer opened first; ``detail`` goes on its open entry."""
        now = self.clock.now_ms()
        site = await db.site(conn, node)
        row = rows.new_row(self.registry, node, kind, priority, site, now)
        tid, unit = row["id"], row["unit"]
        if not await db.add(conn, row):  # another collector opened it first: use theirs
            t = await self._open_for(conn, node, kind)
            assert t is not None
            return t
        t = await self._row(conn, tid)
        assert t is not None
        await self._log(
            conn,
            t,
            "open",
            actor,
            to_state="open",
            note=why,
            detail={"code": "routed", "routed_to": unit, **(detail or {})},
        )
        out.append(self._event(t, "open", actor, why))
        if self.registry.auto_dispatches(node, kind, priority):
            t = await self._dispatch(conn, t, unit, "system", AUTO_DISPATCH, out, {"code": "auto_dispatch"})
        return t

    async def _raise(self, conn: Conn, t: Row, priority: str, out: list[TicketEvent]) -> None:
        if PRIORITY_RANK[priority] <= PRIORITY_RANK[t["priority"]]:
            return
        values: dict[str, Any] = {"priority": priority}
        if t["state"] == "open" and t["opened_ms"] is not None and t["dispatch_due_ms"] is not None:
            # A tighter dispatch deadline from when it became open, never a looser one.
            due = machine.dispatch_due(self.registry, priority, t["opened_ms"])
            values["dispatch_due_ms"] = min(due, t["dispatch_due_ms"])
        elif t["dispatched_ms"] is not None:
            # Tighter deadlines apply from the original dispatch, never looser ones.
            acc, han = self._dues(priority, t["dispatched_ms"])
            values["accept_due_ms"] = min(acc, t["accept_due_ms"])
            values["handle_due_ms"] = min(han, t["handle_due_ms"])
        t2 = await self._set(conn, t, values)
        await self._refresh_check(conn, t2)
        note = f"priority {t['priority']} → {priority}"
        detail = {"code": "priority", "from": t["priority"], "to": priority}
        await self._log(conn, t2, "priority", "system", note=note, detail=detail)
        out.append(self._event(t2, "priority", "system", note))
        if t2["state"] == "open" and self.registry.auto_dispatches(t2["node"], t2["kind"], priority):
            # Now the rule matches (a warning became danger): no dispatcher in the loop.
            await self._dispatch(
                conn, t2, t2["unit"], "system", AUTO_DISPATCH, out, {"code": "auto_dispatch"}
            )

    async def _all_clear(self, conn: Conn, ticket_id: str) -> bool:
        return await db.active_alerts(conn, ticket_id) == 0

    async def _verify_by_sensor(self, conn: Conn, t: Row, out: list[TicketEvent]) -> None:
        note = "the sensor shows the water gone"
        t2 = await self._move(conn, t, "verified", {"verified_ms": self.clock.now_ms()})
        await self._log(
            conn,
            t2,
            "verify",
            "system",
            from_state=t["state"],
            to_state="verified",
            note=note,
            detail={"code": "water_gone"},
        )
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
        async with self.store.begin() as conn:
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
        counted: bool = True,
        confirm: bool = False,
    ) -> tuple[dict[str, Any], list[TicketEvent]]:
        """Do one action on a ticket; returns the ticket after it and what to tell people.

        ``counted=False``: someone acting for the unit (an admin); an accept or a
        report then leaves its on-time flag empty, out of the unit's measures.
        ``confirm``: verify a flood ticket while its site still reads water (refused without)."""
        if action not in machine.FROM:
            machine.check(action, "")
        out: list[TicketEvent] = []
        async with self.store.begin() as conn:
            await self.store.lock_tickets(conn)
            t = await self._row(conn, ticket_id, lock=True)
            if t is None:
                raise TicketError("not_found", f"no ticket {ticket_id}")
            machine.check(action, t["state"], note)
            await getattr(self, f"_do_{action}")(
                conn,
                t,
                actor,
                out,
                unit=unit,
                note=note,
                score=score,
                photo_url=photo_url,
                of=of,
                counted=counted,
                confirm=confirm,
            )
            await self._recorded(conn, out)
        return await self.get(ticket_id), out

    async def _do_dispatch(self, conn: Conn, t: Row, actor: str, out: list[TicketEvent], **kw: Any) -> None:
        unit = kw["unit"] or t["unit"]
        if unit not in self.registry.units:
            raise TicketError("invalid", f"unknown unit {unit!r}")
        await self._dispatch(conn, t, unit, actor, kw["note"], out)

    async def _dispatch(
        self,
        conn: Conn,
        t: Row,
        unit: str,
        actor: str,
        note: str | None,
        out: list[TicketEvent],
        why: dict[str, Any] | None = None,
    ) -> Row:
        """Dispatch to ``unit``; ``why``: the structured reason of a system's dispatch (its ``code``)."""
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
        detail = {"unit": unit, "accept_due_ms": acc, "handle_due_ms": han, **(why or {})}
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

    async def _step(
        self,
        conn: Conn,
        t: Row,
        action: str,
        actor: str,
        note: str | None,
        values: dict[str, Any],
        out: list[TicketEvent],
        detail: dict[str, Any] | None = None,
    ) -> Row:
        """A person's action as the vocabulary says: to its state (with ``values``), on the
        timeline, told as its event."""
        a = ACTIONS[action]
        assert a.to_state is not None
        t2 = await self._move(conn, t, a.to_state, values)
        await self._log(
            conn, t2, action, actor, from_state=t["state"], to_state=a.to_state, note=note, detail=detail
        )
        out.append(self._event(t2, a.event, actor, note))
        return t2

    async def _do_accept(self, conn: Conn, t: Row, actor: str, out: list[TicketEvent], **kw: Any) -> None:
        now = self.clock.now_ms()
        values = {
            "accepted_ms": now,
            "accepted_on_time": now <= t["accept_due_ms"] if kw["counted"] else None,
        }
        t2 = await self._step(conn, t, "accept", actor, kw["note"], values, out)
        await self._refresh_check(conn, t2)

    async def _do_reject(self, conn: Conn, t: Row, actor: str, out: list[TicketEvent], **kw: Any) -> None:
        values = {"dispatched_ms": None, "escalation": 0, **self._opened(t["priority"])}
        t2 = await self._step(conn, t, "reject", actor, kw["note"], values, out)
        # With no dispatcher in the loop (auto-dispatch), the fallback unit takes it.
        fallback = self.registry.fallback_unit
        if t["unit"] != fallback and self.registry.auto_dispatches(t["node"], t["kind"], t["priority"]):
            note = f"rejected by {t['unit']}: to the fallback unit"
            why = {"code": "rejected_to_fallback", "rejected_by": t["unit"]}
            await self._dispatch(conn, t2, fallback, "system", note, out, why)

    async def _do_report(self, conn: Conn, t: Row, actor: str, out: list[TicketEvent], **kw: Any) -> None:
        now = self.clock.now_ms()
        values = {
            "handled_ms": now,
            "handled_on_time": now <= t["handle_due_ms"] if kw["counted"] else None,
            "next_check_ms": None,
        }
        detail = {"photo_url": kw["photo_url"]} if kw["photo_url"] else None
        t2 = await self._step(conn, t, "report", actor, kw["note"], values, out, detail)
        if t["kind"] == "flood" and await self._all_clear(conn, t["id"]) and t["last_alert_id"]:
            await self._verify_by_sensor(conn, t2, out)

    async def _do_verify(self, conn: Conn, t: Row, actor: str, out: list[TicketEvent], **kw: Any) -> None:
        detail = None
        if t["kind"] == "flood" and not await self._all_clear(conn, t["id"]):
            # The site still reads water: a person may know better (a stuck sensor), but says so.
            if not kw["confirm"]:
                raise TicketError(
                    "still_wet",
                    f"the sensor at {t['node']} still reads water; verify with confirm to verify anyway",
                )
            detail = {"confirmed_while_wet": True}
        values = {"verified_ms": self.clock.now_ms()}
        await self._step(conn, t, "verify", actor, kw["note"], values, out, detail)

    async def _do_evaluate(self, conn: Conn, t: Row, actor: str, out: list[TicketEvent], **kw: Any) -> None:
        score = kw["score"]
        if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
            raise TicketError("invalid", "an evaluation needs a score from 1 to 5")
        values = {"closed_ms": self.clock.now_ms(), "score": score, "comment": kw["note"], "open_key": None}
        await self._step(conn, t, "evaluate", actor, kw["note"], values, out, {"score": score})

    async def _do_reopen(self, conn: Conn, t: Row, actor: str, out: list[TicketEvent], **kw: Any) -> None:
        if t["state"] == "closed" and await self._open_for(conn, t["node"], t["kind"]) is not None:
            raise TicketError(
                "conflict", f"another ticket is open for {t['node']}/{t['kind']}; merge instead"
            )
        await self._reopen(conn, t, actor, kw["note"], out)

    async def _reopen(
        self,
        conn: Conn,
        t: Row,
        actor: str,
        note: str,
        out: list[TicketEvent],
        detail: dict[str, Any] | None = None,
    ) -> Row:
        values = {
            "open_key": f"{t['node']}/{t['kind']}",
            "reopened": t["reopened"] + 1,
            "closed_ms": None,
            "verified_ms": None,
            "score": None,
            "escalation": 0,
            **self._opened(t["priority"]),
        }
        t2 = await self._move(conn, t, "open", values)
        await self._log(
            conn, t2, "reopen", actor, from_state=t["state"], to_state="open", note=note, detail=detail
        )
        out.append(self._event(t2, "reopen", actor, note))
        if self.registry.auto_dispatches(t2["node"], t2["kind"], t2["priority"]):
            t2 = await self._dispatch(
                conn, t2, t2["unit"], "system", AUTO_DISPATCH, out, {"code": "auto_dispatch"}
            )
        return t2

    async def _do_merge(self, conn: Conn, t: Row, actor: str, out: list[TicketEvent], **kw: Any) -> None:
        of = kw["of"]
        if not of or of == t["id"]:
            raise TicketError("invalid", "merge needs 'of': the id of another ticket")
        other = await self._row(conn, of, lock=True)
        if other is None:
            raise TicketError("invalid", f"no ticket {of} to merge into")
        if other["state"] == "duplicate":
            raise TicketError("invalid", f"ticket {of} is itself a duplicate of {other['duplicate_of']}")
        # Its alerts follow it, so later transitions land on the ticket that stays.
        await db.move_alerts(conn, t["id"], of)
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

    async def _do_comment(self, conn: Conn, t: Row, actor: str, out: list[TicketEvent], **kw: Any) -> None:
        await self._log(conn, t, "comment", actor, note=kw["note"])

    # -------------------------------------------------------------- escalation

    def _dues(self, priority: str, dispatched_ms: int) -> tuple[int, int]:
        return machine.dues(self.registry, priority, dispatched_ms)

    def _opened(self, priority: str) -> dict[str, Any]:
        """The columns of a ticket that becomes open now: its dispatch deadline runs."""
        now = self.clock.now_ms()
        due = machine.dispatch_due(self.registry, priority, now)
        return {"opened_ms": now, "dispatch_due_ms": due, "next_check_ms": due}

    async def _refresh_check(self, conn: Conn, t: Row) -> Row:
        nxt = machine.next_check(t, t["escalation"], self.clock.now_ms())
        if nxt == t["next_check_ms"]:
            return t
        return await self._set(conn, t, {"next_check_ms": nxt})

    async def next_check(self) -> int | None:
        return await db.next_check(self.store, DEADLINE_STATES)

    async def escalate_due(self) -> list[TicketEvent]:
        """Raise the escalation of every ticket whose deadline has passed; idempotent."""
        now = self.clock.now_ms()
        out: list[TicketEvent] = []
        first = await self.next_check()
        if first is None or first > now:
            # Most runs (the scheduler runs after every batch that changed a ticket, in a storm
            # nearly all): a read of an index, not the ticket lock every alert batch waits on.
            return out
        async with self.store.begin() as conn:
            await self.store.lock_tickets(conn)
            for t in await db.checks_due(conn, now, DEADLINE_STATES):
                level, name, due = machine.passed(t, now)
                values: dict[str, Any] = {
                    "next_check_ms": machine.next_check(t, max(level, t["escalation"]), now)
                }
                if level > t["escalation"]:
                    values |= {"escalation": level, "escalations": t["escalations"] + level - t["escalation"]}
                moved = await db.escalated(
                    conn, t, {**values, "updated_ms": now if level > t["escalation"] else t["updated_ms"]}
                )
                if not moved or level <= t["escalation"]:
                    continue
                target = escalation_target(self.registry, t["unit"], level)
                to = target.name
                note = f"{name} deadline missed by {late_by(now - due)}: level {level}, to {to}"
                t2 = {**t, **values}
                detail = {
                    "code": "escalated",
                    "level": level,
                    "deadline": name,
                    "due_ms": due,
                    "to": to,
                    "to_unit": target.unit,
                }
                await self._log(
                    conn,
                    t2,
                    "escalate",
                    "system",
                    note=note,
                    detail=detail,
                )
                ev = dataclasses.replace(self._event(t2, "escalate", "system", note), detail=detail)
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
        found = await db.with_timeline(self.store, ticket_id)
        if found is None:
            raise TicketError("not_found", f"no ticket {ticket_id}")
        t, timeline, linked = found
        now = self.clock.now_ms()
        only, pred = await db.forecast_of(self.store, [ticket_id], FORECAST_KINDS, ticket_id)
        out = self._public(t, now, ticket_id in only)
        received = await db.received_times(self.store, ticket_id)
        out["timeline"] = [_timed(dict(e), received) for e in timeline]
        out["alerts"] = [dict(a) for a in linked]
        out["prediction"] = None
        if pred is not None:
            run = None
            if pred["episode_level"] != "clear" and pred["dev"] == FORECAST_DEV:  # the collector's
                async with self.store.read() as conn:
                    run = await forecast_db.run_of(conn, t["node"])
            out["prediction"] = _prediction(pred, run)
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
        total, found = await db.page(
            self.store,
            state=state,
            unit=unit,
            node=node,
            kind=kind,
            overdue=overdue,
            now=now,
            deadline_states=DEADLINE_STATES,
            limit=limit,
            offset=offset,
        )
        only, _ = await db.forecast_of(self.store, [r["id"] for r in found], FORECAST_KINDS)
        return total, [self._public(r, now, r["id"] in only) for r in found]

    # ----------------------------------------------------------------- helpers

    def _public(self, t: Row, now: int, forecast: bool) -> dict[str, Any]:
        out = {k: v for k, v in dict(t).items() if k not in ("open_key", "next_check_ms")}
        out["overdue"] = is_overdue(t, now)
        out["forecast"] = forecast
        return out

    async def _row(self, conn: Conn, ticket_id: str, lock: bool = False) -> Row | None:
        return await db.row(conn, ticket_id, lock)

    async def _set(self, conn: Conn, t: Row, values: dict[str, Any]) -> Row:
        values = {**values, "updated_ms": self.clock.now_ms()}
        await db.set_values(conn, t["id"], values)
        row = await self._row(conn, t["id"])
        assert row is not None
        return row

    async def _move(self, conn: Conn, t: Row, to: str, values: dict[str, Any]) -> Row:
        """Change state only from the state we read (another writer may have moved it)."""
        values = {**values, "state": to, "updated_ms": self.clock.now_ms()}
        if not await db.move(conn, t["id"], t["state"], values):
            raise TicketError("conflict", f"ticket {t['id']} changed meanwhile; read it again")
        row = await self._row(conn, t["id"])
        assert row is not None
        return row

    async def _log(
        self,
        conn: Conn,
        t: Row | dict[str, Any],
        action: str,
        actor: str,
        *,
        from_state: str | None = None,
        to_state: str | None = None,
        note: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        entry = db.entry(t["id"], self.clock.now_ms(), actor, action, from_state, to_state, note, detail)
        await db.log(conn, entry)

    def _event(self, t: Row | dict[str, Any], action: str, actor: str, note: str | None) -> TicketEvent:
        return machine.event(t, action, actor, note, self.clock.now_ms())


def late_by(ms: int) -> str:
    """How late, in words: whole minutes, or "under a minute" (not "0 min")."""
    return "under a minute" if ms < MINUTE_MS else f"{ms // MINUTE_MS} min"


def _timed(e: dict[str, Any], received: dict[tuple[str, str, str, int], int]) -> dict[str, Any]:
    """A timeline entry as the API gives it: its detail parsed, and when what it records happened
    (``happened_ms``: an alert transition's time at the edge, else when it was recorded) and, for a
    transition that came in a message, when that message was received (``received_ms``)."""
    d = json.loads(e["detail"]) if e["detail"] else None
    e["detail"] = d
    e["happened_ms"] = e["ts"]
    e["received_ms"] = None
    if isinstance(d, dict) and d.get("level") and d.get("prev") and isinstance(d.get("ts"), int):
        e["happened_ms"] = d["ts"]
        key = (str(d.get("alert_id")), d["level"], d["prev"], d["ts"])
        e["received_ms"] = received.get(key)
    return e


def _prediction(p: Row, run: Row | None) -> dict[str, Any]:
    """The ticket's forecast as the API gives it. While its episode is open, the site's latest
    forecast round's (``run``, when ``ok``) for the episode's level: the forecast the site page
    and the at-risk list show, not the alert's last transition (updated only when the crossing
    moves 10 min or the probability 0.1). Else the latest rise or update (``db.prediction``)."""
    out = {
        "alert_id": p["alert_id"],
        "level": p["level"],
        "threshold": p["threshold"],
        "issued_ms": p["ts"],
        "expected_ms": None if p["eta_s"] is None else int(p["ts"] + p["eta_s"] * 1000),
        "peak": p["value"],
        "probability": p["probability"],
        "active": p["episode_level"] != "clear",
        "source": "alert",
    }
    if out["active"] and run is not None and run["status"] == "ok":
        res = json.loads(run["result"])
        c = next((c for c in res["crossing"] if c["level"] == p["episode_level"]), None)
        if c is not None:
            out |= {
                "level": c["level"],
                "threshold": c["threshold_mm"],
                "issued_ms": int(run["run_ms"]),
                "expected_ms": c.get("at_ms"),
                "peak": res["peak_mm"],
                "probability": c["probability"],
                "source": "round",
            }
    return out
