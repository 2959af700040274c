"""The ticket machine, without I/O: transitions, deadlines, who may act, the escalation target.

Everything here is a function of its arguments (a ticket as a mapping of its
columns, the registry, a time): ``service`` applies it to the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloud.registry import Notify, Registry
from floodgate import wire
from floodgate.errors import RequestError
from floodgate.vocab import ACTIONS, HANDLE_STATES, LADDER, TICKET_KINDS

MINUTE_MS = 60_000
FROM: dict[str, tuple[str, ...]] = {k: a.from_states for k, a in ACTIONS.items()}  # action -> from states
Ticket = Mapping[Any, Any]  # a ticket's columns (a row or a dict)


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
    # The timeline entry's detail where a reader formats the change itself (an escalation's
    # deadline, due_ms, to and to_unit: the demo names the target in English).
    detail: dict[str, Any] | None = field(default=None, compare=False, hash=False)


def event(t: Ticket, action: str, actor: str, note: str | None, now: int) -> TicketEvent:
    return TicketEvent(
        ticket_id=t["id"],
        action=action,
        actor=actor,
        ts=now,
        state=t["state"],
        unit=t["unit"],
        priority=t["priority"],
        node=t["node"],
        kind=t["kind"],
        title=t["title"],
        escalation=t["escalation"],
        note=note,
    )


# ------------------------------------------------------------------ who may act


def allowed_actions(state: str, unit: str, role: str, caller_unit: str | None) -> list[str]:
    """The actions a caller with ``role`` (and ``caller_unit``) may take on a ticket now."""
    return [
        name
        for name, a in ACTIONS.items()
        if state in a.from_states and role in a.roles and (role != "unit" or caller_unit == unit)
    ]


# Why an action whose vocabulary entry requires a note needs one.
NOTE_WHY = {
    "reject": "a rejection needs a note saying why",
    "report": "a report needs a note saying what was done",
    "reopen": "reopening needs a note saying why",
    "comment": "a comment needs a note",
}


def check(action: str, state: str, note: str | None = None) -> None:
    """Refuse an action unknown, not allowed from ``state``, or without the note it requires."""
    if action not in ACTIONS:
        raise TicketError("invalid", f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if state not in FROM[action]:
        allowed = " or ".join(FROM[action])
        raise TicketError("conflict", f"cannot {action} a ticket that is {state} (needs {allowed})")
    if ACTIONS[action].note and not note:
        raise TicketError("invalid", NOTE_WHY.get(action, f"{action} needs a note"))


# -------------------------------------------------------------------- deadlines


def dues(registry: Registry, priority: str, dispatched_ms: int) -> tuple[int, int]:
    """(accept by, handle by) for a ticket of ``priority`` dispatched at ``dispatched_ms``."""
    d = registry.deadline(priority)
    return (
        dispatched_ms + int(d.accept_min * MINUTE_MS),
        dispatched_ms + int(d.handle_min * MINUTE_MS),
    )


def dispatch_due(registry: Registry, priority: str, opened_ms: int) -> int:
    """Dispatch by: an open ticket has as long as a dispatched one has to be accepted."""
    return opened_ms + int(registry.deadline(priority).accept_min * MINUTE_MS)


def ladder(t: Ticket) -> list[tuple[int, int, str, int]]:
    """(time, level, deadline name, due) steps that apply in the ticket's state."""
    if t["state"] == "open":
        due, since = t.get("dispatch_due_ms"), t.get("opened_ms")
        if due is None or since is None:
            return []  # opened before the dispatch deadline existed
        return [(due, 1, "dispatch", due), (due + (due - since), 2, "dispatch", due)]
    if t["dispatched_ms"] is None:
        return []
    steps: list[tuple[int, int, str, int]] = []
    acc, han = t["accept_due_ms"], t["handle_due_ms"]
    if t["state"] == "dispatched":
        span = acc - t["dispatched_ms"]
        steps += [(acc, 1, "accept", acc), (acc + span, 2, "accept", acc)]
    if t["state"] in HANDLE_STATES:
        span = han - t["dispatched_ms"]
        steps += [(han, 1, "handle", han), (han + span, 2, "handle", han)]
    return steps


def next_check(t: Ticket, level: int, now: int) -> int | None:
    """When the ticket may next escalate past ``level``; None when it cannot."""
    future = [at for at, lvl, _, _ in ladder(t) if lvl > level and at > now]
    return min(future) if future else None


def passed(t: Ticket, now: int) -> tuple[int, str, int]:
    """(level, deadline name, due) of the highest step passed by ``now``; level 0 when none."""
    return max(((lvl, name, due) for at, lvl, name, due in ladder(t) if at <= now), default=(0, "", 0))


def is_overdue(t: Ticket, now: int) -> bool:
    if t["state"] == "open" and t.get("dispatch_due_ms") is not None and now > t["dispatch_due_ms"]:
        return True
    if t["state"] == "dispatched" and t["accept_due_ms"] is not None and now > t["accept_due_ms"]:
        return True
    return bool(t["state"] in HANDLE_STATES and t["handle_due_ms"] is not None and now > t["handle_due_ms"])


# ------------------------------------------------------------------- escalation


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


# ------------------------------------------------------------------------ alerts


def what(a: wire.Alert) -> str:
    """An alert transition in a line: ``lvl-1 flood warning → danger (290 mm)``."""
    text = f"{a.dev} {a.kind} {a.prev} → {a.level}"
    if a.value is not None:
        text += f" ({a.value:g}{' ' + a.unit if a.unit else ''})"
    if a.eta_s is not None and a.level != "clear":
        text += f", expected in {round(a.eta_s / 60)} min"  # a forecast: when the water gets there
    if a.reason is not None and a.reason.startswith(RECONCILED):
        text += f", {a.reason}"  # the collector closed it: ", reconciled: heartbeat reports lvl-1 dry"
    return text


def utc(ms: int) -> str:
    """A time in a timeline note: ISO 8601 in UTC to the minute (the dashboard shows local times)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


RECONCILED = "reconciled: "  # how the reason of a transition the collector made up starts (cloud.reconcile)


def transition(a: wire.Alert) -> dict[str, Any]:
    """An alert transition as a timeline entry's detail (a reconciled one says so, and why)."""
    out = {"alert_id": a.id, "dev": a.dev, "level": a.level, "prev": a.prev, "value": a.value, "ts": a.ts}
    if a.eta_s is not None:
        out["eta_s"] = a.eta_s
    if a.reason is not None and a.reason.startswith(RECONCILED):
        out["reconciled"] = a.reason.removeprefix(RECONCILED)
    return out


def title(registry: Registry, kind: str, node: str, site_name: str | None) -> str:
    """A ticket's title: the kind's words and the site's name (the registry's, else its birth's)."""
    name = registry.site_name(node)
    if name == node and site_name:
        name = site_name
    return f"{TICKET_KINDS[kind].title} {name}"  # type: ignore[index]


@dataclass(frozen=True)
class Walk:
    """What :func:`in_order` found for the stored transitions of some episodes."""

    ready: list[Any]  # apply now, in this order
    late: list[Any]  # later ones of the episode were applied: the timeline only
    copies: list[Any]  # the same transition again under another message id: nothing
    held: list[Any] = field(default_factory=list)  # waiting for a predecessor
    released: list[Any] = field(default_factory=list)  # of ready: held too long, out of order


def in_order(rows: Sequence[Any], release_before: int | None = None) -> Walk:
    """Each episode's stored transitions walked in their own order.

    ``rows`` have ``alert_id``, ``level``, ``prev``, ``ts``, ``ticketed``,
    ``boot``, ``seq`` and ``msg_id``; they are ordered by time, then by the
    (boot, seq) of their messages. An episode is a chain: the first
    transition rises from ``clear``, each next one's ``prev`` is the level
    before it. A transition not yet applied is ready when it continues the
    chain; the first that does not (its predecessor is in a batch not
    committed yet) holds itself and all after it, unless it has been held
    since ``release_before`` or earlier (``held_ms``, when first found held):
    then it is released, ready out of order, and the chain goes on from it.
    One whose later transitions were applied already is late. ``ready``
    comes in time order across episodes.
    """

    def order(r: Any) -> tuple[Any, ...]:
        return (r.ts, -1 if r.boot is None else r.boot, -1 if r.seq is None else r.seq, r.msg_id)

    by_episode: dict[str, list[Any]] = {}
    for r in sorted(rows, key=order):
        by_episode.setdefault(r.alert_id, []).append(r)
    walk = Walk([], [], [])
    for chain in by_episode.values():
        head, held = "clear", False
        last_applied = max((i for i, r in enumerate(chain) if r.ticketed), default=-1)
        seen: set[tuple[str, str, int]] = set()
        for i, r in enumerate(chain):
            same = (r.level, r.prev, r.ts)
            if same in seen and not r.ticketed:
                walk.copies.append(r)
                continue
            seen.add(same)
            if r.ticketed:
                head = r.level
            elif i < last_applied:
                walk.late.append(r)
            elif not held and r.prev == head:
                walk.ready.append(r)
                head = r.level
            elif (
                not held
                and r.held_ms is not None
                and release_before is not None
                and r.held_ms <= release_before
            ):
                walk.ready.append(r)
                walk.released.append(r)
                head = r.level
            else:
                held = True
                walk.held.append(r)
    walk.ready.sort(key=order)
    return walk
