"""Alert state reconciled: an episode its node no longer reports is closed by the collector.

Every birth and heartbeat carries the node's open alert episodes (``health.alerts``:
``id``, ``dev``, ``kind``, ``level`` of each). An active episode of that node, of a
kind the node raises (``floodgate.vocab``'s ``reported``), whose last transition is
older than the report and which the report does not list has ended at the site: its
``clear`` was lost, or the agent restarted (a new boot starts clear and opens new
episodes). The collector then stores a ``clear`` of its own for it, under an id of its
own, whose ``reason`` says it was reconciled and why (``reconciled: heartbeat reports
lvl-1 dry``, ``reconciled: superseded by boot 18``); it reaches the episode's ticket
like any other transition (docs/tickets.md).

The rule needs no ordering between reports and alerts: an episode's id is never
reused, so one that a report made after its last transition does not list is over,
whichever of the two the collector hears first. Yet a report of the same boot
may overtake the episode's own ``clear`` (batches commit side by side; a clear
the broker lost comes again from the edge's outbox a few seconds later): such a
report counts only ``GRACE_MS`` after the episode's last transition, so the
real clear closes it when it can. A newer boot's report counts at once: the old
boot is gone. An agent whose health has no ``alerts`` (older than this rule) is
never reconciled.

The other way round (``unseen``): an episode a node reports open that the collector
never heard of (its alert messages all lost) is opened by the collector from the
report, ``GRACE_MS`` after the episode began, with a reason that says so; it gets a
ticket by the usual rules, and the lost messages, if they ever come, land on it.

This module decides, without I/O; ``cloud.ingest`` reads the episodes and stores
what it decides, under the ticket lock.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from cloud.forecast import FORECAST_DEV
from cloud.tickets.machine import RECONCILED
from floodgate import wire
from floodgate.errors import ContractError
from floodgate.vocab import ALERT_KINDS

log = logging.getLogger("floodgate.cloud.reconcile")
PREFIX = RECONCILED  # how a reconciled transition's reason starts
GRACE_MS = 30_000  # a report of the episode's own boot counts this long after its last transition
NOT_REPORTED = tuple(k for k, info in ALERT_KINDS.items() if not info.reported)


@dataclass(frozen=True)
class Report:
    """What a node said of its open episodes in a birth or heartbeat."""

    node: str
    boot: int
    ts: int
    source: Literal["birth", "heartbeat"]
    open: frozenset[str]  # the ids of its episodes not clear
    listed: tuple[
        Mapping[str, Any], ...
    ] = ()  # those episodes as listed (``id``, ``dev``, ``kind``, ``level``)


def report(m: wire.Envelope) -> Report | None:
    """The report a birth or heartbeat makes; None for other messages and for a health without
    ``alerts`` (an older agent). A malformed ``alerts`` is logged and reconciles nothing."""
    if isinstance(m, wire.Birth):
        source: Literal["birth", "heartbeat"] = "birth"
        health: Mapping[str, Any] = m.health
    elif isinstance(m, wire.EventMessage) and m.event.type == "heartbeat":
        source, health = "heartbeat", m.event.detail
    else:
        return None
    listed = health.get("alerts")
    if listed is None:
        return None
    if not isinstance(listed, list) or not all(
        isinstance(a, dict) and isinstance(a.get("id"), str) for a in listed
    ):
        log.warning(
            "%s of %s: health.alerts is not a list of episodes with an id; not reconciled",
            source,
            m.node,
            extra={"msg_id": m.msg_id},
        )
        return None
    return Report(m.node, m.boot, m.ts, source, frozenset(a["id"] for a in listed), tuple(listed))


def stale(reports: Iterable[Report], active: Sequence[Mapping[Any, Any]]) -> list[tuple[str, wire.Alert]]:
    """(node, the ``clear`` transition)s that close the episodes of ``active`` (rows with ``id``,
    ``node``, ``dev``, ``kind``, ``level``, ``last_ts``, ``boot``) the reports say are over.

    For each episode, the newest report of its node that counts (made after its last
    transition: at once by a newer boot, ``GRACE_MS`` after by its own) decides: it is
    over when that report does not list it.
    """
    by_node: dict[str, list[Report]] = {}
    for r in reports:
        by_node.setdefault(r.node, []).append(r)
    out: list[tuple[str, wire.Alert]] = []
    for ep in active:
        if ep["kind"] in NOT_REPORTED or ep["level"] == "clear" or ep["dev"] == FORECAST_DEV:
            continue  # the collector raised it (its own rainfall forecast): no node reports it
        after = [r for r in by_node.get(ep["node"], ()) if r.ts > ep["last_ts"] + _grace(r, ep)]
        if not after:
            continue
        r = max(after, key=lambda r: (r.ts, r.boot))
        if ep["id"] in r.open:
            continue
        out.append(
            (
                ep["node"],
                wire.Alert(
                    id=ep["id"],
                    dev=ep["dev"],
                    kind=ep["kind"],
                    level="clear",
                    prev=ep["level"],
                    ts=r.ts,
                    reason=PREFIX + why(r, ep),
                ),
            )
        )
    return out


def unseen(
    reports: Iterable[Report], known: Collection[str], boots: Mapping[str, int | None]
) -> list[tuple[str, wire.Alert]]:
    """(node, the transition that opens it)s for the episodes a node reports open that the
    collector has never heard of: their alert messages were lost (a broker that lost its queue).

    Only the newest report of each node counts, and only when it is of the node's current
    boot (``boots``: an older boot's episodes are over), for an episode of a kind the node
    raises, ``GRACE_MS`` after the episode began (its id is a ULID: its time), so that an
    alert message still on its way (a batch committing beside this one, a resend) opens it
    itself. The transition rises from ``clear`` to the reported level at the report's ``ts``,
    under the episode's own id; its ``reason`` says it was reconciled and why.
    """
    newest: dict[str, Report] = {}
    for r in reports:
        if r.node not in newest or (r.ts, r.boot) > (newest[r.node].ts, newest[r.node].boot):
            newest[r.node] = r
    out: list[tuple[str, wire.Alert]] = []
    for node, r in newest.items():
        current = boots.get(node)
        if current is not None and r.boot < current:
            continue
        for ep in r.listed:
            if ep["id"] in known or ep.get("kind") in NOT_REPORTED or ep.get("level") == "clear":
                continue
            began = ulid_ms(ep["id"])
            if began is None or r.ts < began + GRACE_MS:
                continue
            why = f"{r.source} reports {ep.get('dev')} {ep.get('level')}, its alert never arrived"
            try:
                a = msgspec.convert(
                    {
                        "id": ep["id"],
                        "dev": ep.get("dev"),
                        "kind": ep.get("kind"),
                        "level": ep.get("level"),
                        "prev": "clear",
                        "ts": r.ts,
                        "reason": PREFIX + why,
                    },
                    wire.Alert,
                )
            except (msgspec.ValidationError, ContractError) as exc:
                log.warning("%s of %s lists an episode the contract refuses: %s", r.source, node, exc)
                continue
            out.append((node, a))
    return out


def ulid_ms(ulid: str) -> int | None:
    """The milliseconds a ULID was made at (its first 10 characters); None if it is not one."""
    if len(ulid) != 26:
        return None
    value = 0
    for ch in ulid[:10].upper():
        i = _CROCKFORD.find(ch)
        if i < 0:
            return None
        value = value * 32 + i
    return value


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _grace(r: Report, ep: Mapping[Any, Any]) -> int:
    return 0 if ep["boot"] is not None and ep["boot"] < r.boot else GRACE_MS


def why(r: Report, ep: Mapping[Any, Any]) -> str:
    """Why ``r`` closes ``ep``: a newer boot, or the node says the device is dry (or clear)."""
    if ep["boot"] is not None and ep["boot"] < r.boot:
        return f"superseded by boot {r.boot}"
    info = ALERT_KINDS.get(ep["kind"])
    return f"{r.source} reports {ep['dev']} {'dry' if info is not None and info.water else 'clear'}"
