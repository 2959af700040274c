"""The site registry: who is responsible for a site, per kind of trouble.

A YAML file (validated like every config: file, line and key) with

- ``units``: the responsible units (drainage stations, maintenance teams,
  street offices) with their leader, and optional notification targets;
- ``areas``: grid → community → street → district, each naming its parent and,
  per department, the unit that answers for it there;
- ``sites``: each node's area (and a display name);
- ``departments``: the department for each ticket kind (drainage for floods,
  maintenance for sensor faults and lost communication);
- ``fallback_unit`` (兜底): takes whatever no area claims, and rejected tickets;
- ``supervision_unit``: where level-2 escalations are flagged;
- ``auto_dispatch``: rules that dispatch a new ticket at once;
- ``deadlines`` and ``reopen_window_h``: overrides of the defaults.

Routing walks from the site's area up through its parents and takes the first
unit registered for the ticket's department; failing that, the fallback unit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct, field

from floodgate.vocab import PRIORITY_RANK as PRIORITY_RANK  # noqa: PLC0414 - named here too
from floodgate.vocab import TICKET_KINDS, Priority, TicketKind
from floodgate.yamlconfig import Source, load_yaml, validate

Id = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
AreaLevel = Literal["grid", "community", "street", "district"]


class _Strict(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


NotifyEvent = Literal["opened", "dispatched", "escalated", "closed"]


class Notify(_Strict, frozen=True, kw_only=True):
    webhook: Annotated[str, Meta(pattern=r"^https?://")] | None = None
    webhook_secret: str | None = None
    # The secret in a file of its own (mode 0600), relative to the registry;
    # read at load time. Keeps the secret out of a registry kept in git.
    webhook_secret_file: str | None = None
    email: list[Annotated[str, Meta(pattern=r"^[^@\s]+@[^@\s]+$")]] = field(default_factory=list)
    events: list[NotifyEvent] = field(default_factory=lambda: ["opened", "dispatched", "escalated", "closed"])


class Unit(_Strict, frozen=True, kw_only=True):
    name: str
    name_en: str | None = None  # the dashboard's English name (``name`` in its Chinese view)
    leader: str | None = None
    notify: Notify | None = None
    leader_notify: Notify | None = None


class Area(_Strict, frozen=True, kw_only=True):
    level: AreaLevel
    name: str | None = None
    parent: Id | None = None
    units: dict[str, Id] = field(default_factory=dict)


class Site(_Strict, frozen=True, kw_only=True):
    area: Id
    name: str | None = None
    name_en: str | None = None  # the dashboard's English name
    address: str | None = None  # shown instead of the address in the site's birth
    address_en: str | None = None  # the dashboard's English address


class AutoDispatch(_Strict, frozen=True, kw_only=True):
    kind: TicketKind | None = None
    min_priority: Priority = "fault"
    area: Id | None = None


class Deadline(_Strict, frozen=True, kw_only=True):
    accept_min: Annotated[float, Meta(gt=0)]
    handle_min: Annotated[float, Meta(gt=0)]


DEFAULT_DEADLINES: dict[str, Deadline] = {
    "danger": Deadline(accept_min=15, handle_min=120),
    "warning": Deadline(accept_min=30, handle_min=24 * 60),
    "fault": Deadline(accept_min=4 * 60, handle_min=3 * 24 * 60),
}
DEFAULT_DEPARTMENTS: dict[TicketKind, str] = {k: v.department for k, v in TICKET_KINDS.items()}


class Registry(_Strict, frozen=True, kw_only=True):
    fallback_unit: Id
    supervision_unit: Id | None = None
    units: dict[Id, Unit]
    areas: dict[Id, Area] = field(default_factory=dict)
    sites: dict[Id, Site] = field(default_factory=dict)
    departments: dict[TicketKind, str] = field(default_factory=lambda: dict(DEFAULT_DEPARTMENTS))
    auto_dispatch: list[AutoDispatch] = field(default_factory=list)
    deadlines: dict[Priority, Deadline] = field(default_factory=dict)
    reopen_window_h: Annotated[float, Meta(ge=0)] = 6.0

    def deadline(self, priority: str) -> Deadline:
        found: Deadline | None = self.deadlines.get(priority)  # type: ignore[call-overload]
        return found or DEFAULT_DEADLINES[priority]

    def department(self, kind: str) -> str:
        found: str | None = self.departments.get(kind) or DEFAULT_DEPARTMENTS.get(kind)  # type: ignore[call-overload]
        return found or "maintenance"

    def area_chain(self, node: str) -> list[str]:
        """The site's area and its parents, nearest first."""
        site = self.sites.get(node)
        chain: list[str] = []
        area = site.area if site else None
        while area is not None and area in self.areas and area not in chain:
            chain.append(area)
            area = self.areas[area].parent
        return chain

    def route(self, node: str, kind: str) -> tuple[str, str]:
        """(department, unit) for a ticket of ``kind`` at ``node``."""
        dept = self.department(kind)
        for area in self.area_chain(node):
            unit = self.areas[area].units.get(dept)
            if unit is not None:
                return dept, unit
        return dept, self.fallback_unit

    def auto_dispatches(self, node: str, kind: str, priority: str) -> bool:
        chain = self.area_chain(node)
        for rule in self.auto_dispatch:
            if rule.kind is not None and rule.kind != kind:
                continue
            if PRIORITY_RANK[priority] < PRIORITY_RANK[rule.min_priority]:
                continue
            if rule.area is not None and rule.area not in chain:
                continue
            return True
        return False

    def names(self) -> dict[str, dict[str, dict[str, str]]]:
        """The units' and sites' names (and the sites' addresses) the dashboard shows, per language
        (``zh``: ``name``, ``en``: ``name_en``), for those the registry names."""

        def both(name: str | None, name_en: str | None) -> dict[str, str]:
            return {k: v for k, v in (("zh", name), ("en", name_en)) if v}

        return {
            "units": {uid: both(u.name, u.name_en) for uid, u in self.units.items()},
            "sites": {n: both(s.name, s.name_en) for n, s in self.sites.items() if s.name or s.name_en},
            "addresses": {
                n: both(s.address, s.address_en) for n, s in self.sites.items() if s.address or s.address_en
            },
        }

    def site_name(self, node: str, lang: str = "zh") -> str:
        """The site's name in ``lang`` (``en``: ``name_en``), else its Chinese one, else its id."""
        site = self.sites.get(node)
        if site is None:
            return node
        return (site.name_en if lang == "en" else None) or site.name or node

    def unit_name(self, uid: str, lang: str = "zh") -> str:
        """The unit's name in ``lang`` (``en``: ``name_en``), else its Chinese one, else its id."""
        unit = self.units.get(uid)
        if unit is None:
            return uid
        return (unit.name_en if lang == "en" else None) or unit.name


DEFAULT_REGISTRY = Registry(
    fallback_unit="emergency-office",
    supervision_unit="supervision-office",
    units={
        "emergency-office": Unit(name="应急管理局值班室", name_en="Emergency management office"),
        "supervision-office": Unit(name="督查督办室", name_en="Supervision office"),
    },
)


def load_registry(path: Path) -> Registry:
    """Load and check a registry; every problem is reported with file, line and key."""
    src = load_yaml(path)
    reg = validate(Registry, src)
    if reg is not None:
        units = set(reg.units)
        for key in ("fallback_unit", "supervision_unit"):
            ref = getattr(reg, key)
            if ref is not None and ref not in units:
                src.issue([key], f"unknown unit {ref!r}")
        for aid, area in reg.areas.items():
            if area.parent is not None and area.parent not in reg.areas:
                src.issue(["areas", aid, "parent"], f"unknown area {area.parent!r}")
            for dept, unit in area.units.items():
                if unit not in units:
                    src.issue(["areas", aid, "units", dept], f"unknown unit {unit!r}")
        for node, site in reg.sites.items():
            if site.area not in reg.areas:
                src.issue(["sites", node, "area"], f"unknown area {site.area!r}")
        for i, rule in enumerate(reg.auto_dispatch):
            if rule.area is not None and rule.area not in reg.areas:
                src.issue(["auto_dispatch", i, "area"], f"unknown area {rule.area!r}")
        for aid in reg.areas:
            seen: list[str] = []
            a: str | None = aid
            while a is not None and a in reg.areas:
                if a in seen:
                    src.issue(["areas", aid, "parent"], "areas form a loop: " + " → ".join([*seen, a]))
                    break
                seen.append(a)
                a = reg.areas[a].parent
        reg = msgspec.structs.replace(
            reg, units={uid: _with_secrets(src, path, uid, unit) for uid, unit in reg.units.items()}
        )
    src.raise_if_issues()
    assert reg is not None
    return reg


def _with_secrets(src: Source, path: Path, uid: str, unit: Unit) -> Unit:
    """The unit with each ``webhook_secret_file`` read into ``webhook_secret``."""
    changes: dict[str, Notify] = {}
    for key in ("notify", "leader_notify"):
        n: Notify | None = getattr(unit, key)
        if n is None or n.webhook_secret_file is None:
            continue
        loc = ["units", uid, key, "webhook_secret_file"]
        if n.webhook_secret is not None:
            src.issue(loc, "give webhook_secret or webhook_secret_file, not both")
            continue
        f = Path(n.webhook_secret_file)
        f = f if f.is_absolute() else path.parent / f
        try:
            secret = f.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            src.issue(loc, f"cannot read {f}: {exc.strerror if isinstance(exc, OSError) else exc}")
            continue
        if not secret:
            src.issue(loc, f"{f} is empty")
            continue
        changes[key] = msgspec.structs.replace(n, webhook_secret=secret, webhook_secret_file=None)
    return msgspec.structs.replace(unit, **changes) if changes else unit
