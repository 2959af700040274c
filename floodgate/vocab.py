"""The project's vocabulary, in one table: what each word means wherever it is used.

Alert levels and their rank; alert kinds (which ticket kind each opens, whether
it is water, observed, public, a depth); device kinds and the points their
profiles must map; ticket kinds, priorities, states and actions (from which
states, to which, who may, whether a note is required, what it is told as);
the escalation ladder. The wire contract, the collector's ingest, tickets,
overview, CAP/Open311 feeds, measures, notifications and the dashboard (through
``GET /api/v1/vocab``) all read it here.

Adding an alert kind is its name in :data:`AlertKind` and one row in
:data:`ALERT_KINDS` (a test checks the two agree), plus the code that raises it.
Both sides import this module: it holds data only, no I/O and no cloud code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

Level = Literal["clear", "warning", "danger"]
AlertKind = Literal["flood", "immersion", "sensor_fault", "comms_lost", "forecast"]
DeviceKind = Literal["level", "immersion", "sign", "gate", "rain"]
TicketKind = Literal["flood", "sensor_fault", "comms_lost"]
Priority = Literal["fault", "warning", "danger"]
State = Literal["open", "dispatched", "accepted", "handled", "verified", "closed", "duplicate"]
Role = Literal["viewer", "operator", "dispatcher", "unit", "forecaster", "admin"]

LEVELS: tuple[Level, ...] = ("clear", "warning", "danger")  # in rank order
LEVEL_RANK: dict[str, int] = {lvl: i for i, lvl in enumerate(LEVELS)}
PRIORITIES: tuple[Priority, ...] = ("fault", "warning", "danger")  # in rank order
PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}


@dataclass(frozen=True)
class AlertKindInfo:
    ticket_kind: TicketKind  # the ticket it opens or lands on
    water: bool  # water on the road, seen or expected (the map's wet state)
    observed: bool  # measured at the site, not a forecast (counted in a site's season)
    public: bool  # published as a CAP alert to the public
    depth: bool  # its value is a water depth in mm (peaks, hours above threshold)
    # Raised by the node, which reports its open episodes in every birth and heartbeat
    # (``health.alerts``): the collector closes one the node no longer reports (cloud.reconcile).
    # False: raised by the collector itself.
    reported: bool = True


ALERT_KINDS: dict[AlertKind, AlertKindInfo] = {
    "flood": AlertKindInfo("flood", water=True, observed=True, public=True, depth=True),
    "immersion": AlertKindInfo("flood", water=True, observed=True, public=True, depth=False),
    "forecast": AlertKindInfo("flood", water=True, observed=False, public=True, depth=False),
    "sensor_fault": AlertKindInfo("sensor_fault", water=False, observed=True, public=False, depth=False),
    "comms_lost": AlertKindInfo(
        "comms_lost", water=False, observed=True, public=False, depth=False, reported=False
    ),
}


def kinds(**want: bool) -> tuple[str, ...]:
    """Alert kinds whose flags are as given, e.g. ``kinds(water=True)``, in table order."""
    return tuple(k for k, info in ALERT_KINDS.items() if all(getattr(info, f) == v for f, v in want.items()))


def ticket_kind(alert_kind: str) -> str:
    """The ticket kind an alert kind opens; a ValueError names an unknown one."""
    for name, info in ALERT_KINDS.items():
        if name == alert_kind:
            return info.ticket_kind
    raise ValueError(f"unknown alert kind {alert_kind!r}; one of {', '.join(ALERT_KINDS)}")


@dataclass(frozen=True)
class DeviceKindInfo:
    points: tuple[str, ...]  # the role points a profile of this kind must map
    sensor: bool  # it reports readings (and falls silent: comms_lost)
    any_of: tuple[str, ...] = ()  # a profile of this kind must map at least one of these
    water: bool = False  # it detects water on the road: it may be a sensor of a response


DEVICE_KINDS: dict[DeviceKind, DeviceKindInfo] = {
    "level": DeviceKindInfo(("level",), sensor=True, water=True),
    "immersion": DeviceKindInfo(("wet",), sensor=True, water=True),
    "sign": DeviceKindInfo(("text",), sensor=False),
    "gate": DeviceKindInfo(("close_relay", "open_limit", "closed_limit"), sensor=False),
    # A tipping-bucket counter (``tips``: mm per tip as its scale) or an intensity register (mm/h).
    "rain": DeviceKindInfo((), sensor=True, any_of=("tips", "intensity")),
}


@dataclass(frozen=True)
class TicketKindInfo:
    department: str  # whose it is by default (the registry's areas name the units)
    title: str  # "<title> <site name>"
    by_level: bool  # its priority is the alert level (else ``fault``)


TICKET_KINDS: dict[TicketKind, TicketKindInfo] = {
    "flood": TicketKindInfo("drainage", "Water at", by_level=True),
    "sensor_fault": TicketKindInfo("maintenance", "Sensor fault at", by_level=False),
    "comms_lost": TicketKindInfo("maintenance", "Site silent:", by_level=False),
}

_TICKET_KINDS: dict[str, TicketKindInfo] = {k: v for k, v in TICKET_KINDS.items()}


def priority_of(kind: str, level: str) -> str:
    """A ticket's priority from its kind and the alert level that opened or raised it."""
    return level if _TICKET_KINDS[kind].by_level else "fault"


STATES: tuple[State, ...] = get_args(State)
ACTIVE: tuple[State, ...] = ("open", "dispatched", "accepted", "handled", "verified")  # not ended
DEADLINE_STATES: tuple[State, ...] = ("open", "dispatched", "accepted")  # a deadline runs
HANDLE_STATES: tuple[State, ...] = ("dispatched", "accepted")  # the handle deadline runs


@dataclass(frozen=True)
class Action:
    """Something a person does to a ticket."""

    name: str
    from_states: tuple[State, ...]
    to_state: State | None  # None: the state stays (a comment)
    roles: tuple[Role, ...]  # who may; a ``unit`` user only on its own unit's tickets
    note: bool  # a note is required
    event: str  # the ticket event it makes (what notifications and live views hear)


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action("dispatch", ("open",), "dispatched", ("dispatcher", "admin"), False, "dispatch"),
        Action("accept", ("dispatched",), "accepted", ("unit", "admin"), False, "accept"),
        Action("reject", ("dispatched",), "open", ("unit", "admin"), True, "reject"),
        Action("report", ("accepted",), "handled", ("unit", "admin"), True, "report"),
        Action("verify", ("handled",), "verified", ("dispatcher", "admin"), False, "verify"),
        Action("evaluate", ("verified",), "closed", ("dispatcher", "admin"), False, "close"),
        Action("reopen", ("verified", "closed"), "open", ("dispatcher", "admin"), True, "reopen"),
        Action("merge", ACTIVE, "duplicate", ("dispatcher", "admin"), False, "merge"),
        Action("comment", STATES, None, ("operator", "dispatcher", "unit", "admin"), True, "comment"),
    )
}

# Ticket events that are notified, and as what (a unit's ``notify.events`` picks among these).
NOTIFY_AS: dict[str, str] = {
    "open": "opened",
    "reopen": "opened",
    "dispatch": "dispatched",
    "escalate": "escalated",
    "close": "closed",
}


@dataclass(frozen=True)
class Rung:
    """One step of the escalation ladder.

    Level 1 comes when a deadline passes, level 2 when it is missed by its own
    length again. ``to``: ``leader`` is the ticket's unit's leader (told through
    its ``leader_notify``, else its ``notify``); ``supervision`` is the
    registry's supervision unit, or its fallback unit when it names none.
    """

    level: int
    to: Literal["leader", "supervision"]


LADDER: tuple[Rung, ...] = (Rung(1, "leader"), Rung(2, "supervision"))


def as_json() -> dict[str, Any]:
    """The vocabulary as served to the dashboard (``GET /api/v1/vocab``)."""
    return {
        "levels": list(LEVELS),
        "priorities": list(PRIORITIES),
        "alert_kinds": {k: asdict(v) for k, v in ALERT_KINDS.items()},
        "device_kinds": {k: {"points": list(v.points), "sensor": v.sensor} for k, v in DEVICE_KINDS.items()},
        "ticket_kinds": {k: asdict(v) for k, v in TICKET_KINDS.items()},
        "states": list(STATES),
        "active_states": list(ACTIVE),
        "actions": {
            k: {
                "from": list(a.from_states),
                "to": a.to_state,
                "roles": list(a.roles),
                "note": a.note,
                "event": a.event,
            }
            for k, a in ACTIONS.items()
        },
        "notify_as": dict(NOTIFY_AS),
        "ladder": [{"level": r.level, "to": r.to} for r in LADDER],
    }
