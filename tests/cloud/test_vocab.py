"""One vocabulary: every module reads floodgate.vocab, and every alert kind goes all the way through."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from cloud.db.store import Store
from cloud.ingest import Ingestor
from cloud.interop import SERVICES, Interop
from cloud.measures import Measures
from cloud.overview import site_overview
from cloud.tickets import Tickets, allowed_actions, escalation_target
from floodgate import vocab, wire
from floodgate.clock import ManualClock
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer
from tests.cloud.test_ingest import birth, msg
from tests.cloud.test_tickets import REGISTRY, registry


def test_the_literal_types_and_the_tables_name_the_same_words() -> None:
    assert set(get_args(vocab.AlertKind)) == set(vocab.ALERT_KINDS)
    assert set(get_args(vocab.DeviceKind)) == set(vocab.DEVICE_KINDS)
    assert set(get_args(vocab.TicketKind)) == set(vocab.TICKET_KINDS)
    assert {k.ticket_kind for k in vocab.ALERT_KINDS.values()} <= set(vocab.TICKET_KINDS)
    assert set(vocab.ACTIVE) < set(vocab.STATES)
    for a in vocab.ACTIONS.values():
        assert set(a.from_states) <= set(vocab.STATES), a
        assert a.to_state is None or a.to_state in vocab.STATES, a
        assert set(a.roles) <= set(get_args(vocab.Role)), a
    assert {s["service_code"] for s in SERVICES} == set(vocab.TICKET_KINDS), (
        "an Open311 service per ticket kind"
    )
    assert wire.AlertKind is vocab.AlertKind and wire.LEVELS == vocab.LEVELS


def test_allowed_actions_follow_state_role_and_unit() -> None:
    assert allowed_actions("open", "u1", "dispatcher", None) == ["dispatch", "merge", "comment"]
    assert allowed_actions("dispatched", "u1", "unit", "u1") == ["accept", "reject", "comment"]
    assert allowed_actions("dispatched", "u1", "unit", "u2") == [], "another unit's ticket"
    assert allowed_actions("closed", "u1", "viewer", None) == []
    assert allowed_actions("closed", "u1", "admin", None) == ["reopen", "comment"]


def test_the_escalation_ladder_has_one_rule(tmp_path: Path) -> None:
    """Level 1: the unit's leader; level 2: the supervision unit, else the fallback unit."""
    reg = registry(tmp_path)
    assert escalation_target(reg, "drainage-dasha", 1).name == "王所长"
    assert escalation_target(reg, "drainage-dasha", 2).unit == "supervision-office"
    no_sup = registry(tmp_path, REGISTRY.replace("supervision_unit: supervision-office\n", ""))
    assert escalation_target(no_sup, "drainage-dasha", 2).unit == "emergency-office"


@pytest.mark.parametrize("kind", list(vocab.ALERT_KINDS))
async def test_every_alert_kind_goes_through_ingest_tickets_overview_feeds_and_measures(
    store: Store, tmp_path: Path, kind: str
) -> None:
    info = vocab.ALERT_KINDS[kind]  # type: ignore[index]
    clock = ManualClock()
    t = Tickets(store, registry(tmp_path), clock)
    ing = Ingestor(store, t)
    seq = Sequencer("hp-1", boot=1)
    await ing.ingest([birth(seq, "lvl-1")])
    ep = new_ulid()
    alert = {"id": ep, "dev": "lvl-1", "kind": kind, "level": "danger", "prev": "clear", "value": 310.0}
    applied = await ing.ingest([msg(seq, "alert", {"alert": {**alert, "ts": clock.now_ms()}})])
    assert ing.counters.dead_letters == 0

    # ticket: of the kind's ticket kind, its priority by the kind's rule
    assert [e.action for e in applied.tickets][:1] == ["open"]
    total, rows = await t.list()
    assert total == 1 and rows[0]["kind"] == info.ticket_kind
    assert rows[0]["priority"] == vocab.priority_of(info.ticket_kind, "danger")
    assert rows[0]["title"].startswith(vocab.TICKET_KINDS[info.ticket_kind].title)

    # overview: measured water colours the site, forecast water is its own field,
    # anything else is a fault on it
    (site,) = await site_overview(store)
    assert site["level"] == ("danger" if info.water and info.observed else "clear")
    assert site["forecast"] == (None if info.observed else "danger")
    assert [f["kind"] for f in site["faults"]] == ([] if info.water else [kind])
    assert [x["kind"] for x in site["tickets"]] == [info.ticket_kind]

    # CAP: public kinds only; Open311: every ticket, under its service
    interop = Interop(store, clock)
    caps = await interop.cap_messages()
    assert len(caps) == (1 if info.public else 0)
    if info.public:
        certainty = caps[0].find("info/certainty")
        assert certainty is not None and certainty.text == ("Observed" if info.observed else "Likely")
    (req,) = await interop.requests()
    assert req["service_code"] == info.ticket_kind

    # measures: a site's season counts observed water, faults, and depths
    (m,) = await Measures(store, clock).sites(2026)
    assert m["alerts"]["danger"] == (1 if info.water and info.observed else 0)
    assert m["faults"] == (0 if info.water else 1)
    assert m["peak_depth_mm"] == (310.0 if info.depth else None)
