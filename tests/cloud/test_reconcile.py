"""Alert state reconciled, on SQLite and PostgreSQL: an episode its node no longer reports is closed.

(a) a lost clear: the episode's ``clear`` never arrives; the next heartbeat lists no open
episode, so the collector closes it as reconciled, on the ticket's timeline too, and the
ticket's verify-by-sensor step runs. (b) an agent restart mid-episode: the new boot's birth
settles the old boot's episodes; the new boot's own episode lands on the same ticket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from cloud.db.schema import alert_transitions, alerts
from cloud.db.store import Store
from cloud.forecast import FORECAST_DEV
from cloud.ingest import Ingestor, Received, Transition
from cloud.interop import Interop
from cloud.reconcile import GRACE_MS, Report, report, stale
from cloud.tickets import Tickets
from floodgate import wire
from floodgate.clock import ManualClock
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer
from tests.cloud import cap_rules
from tests.cloud.test_cap import CAP, feed
from tests.cloud.test_ingest import msg
from tests.cloud.test_tickets import REGISTRY, only_ticket, registry

T0 = 1_763_700_000_000
S = 1000


def alert(seq: Sequencer, aid: str, level: str, prev: str, ts: int, kind: str = "flood") -> Received:
    a: dict[str, Any] = {"id": aid, "dev": "lvl-1", "kind": kind, "level": level, "prev": prev, "ts": ts}
    if kind == "flood":
        a |= {"value": 200.0 if level != "clear" else 10.0, "unit": "mm"}
    return msg(seq, "alert", {"alert": a}, ts)


def episodes(*open_: tuple[str, str]) -> list[dict[str, Any]]:
    """``health.alerts`` as an agent reports it: (id, level) of each open episode of lvl-1."""
    return [{"id": i, "dev": "lvl-1", "kind": "flood", "level": lvl} for i, lvl in open_]


def heartbeat(seq: Sequencer, ts: int, open_: list[dict[str, Any]] | None) -> Received:
    detail: dict[str, Any] = {"uptime_s": 1.0}
    if open_ is not None:
        detail["alerts"] = open_
    return msg(seq, "event", {"event": {"type": "heartbeat", "detail": detail}}, ts)


def birth(seq: Sequencer, ts: int, open_: list[dict[str, Any]]) -> Received:
    body = {
        "agent_version": "0.1.0",
        "config_hash": "abc",
        "site": {"name": "T", "lat": 23.1, "lon": 113.4},
        "devices": [{"id": "lvl-1", "kind": "level", "model": "m"}],
        "health": {"alerts": open_},
    }
    return msg(seq, "birth", body, ts)


async def levels(store: Store) -> dict[str, str]:
    async with store.read() as conn:
        return {r.id: r.level for r in (await conn.execute(select(alerts.c.id, alerts.c.level))).all()}


async def reasons(store: Store, aid: str) -> list[tuple[str, str | None]]:
    t = alert_transitions
    q = select(t.c.level, t.c.reason).where(t.c.alert_id == aid).order_by(t.c.ts, t.c.msg_id)
    async with store.read() as conn:
        return [(r.level, r.reason) for r in (await conn.execute(q)).all()]


def setup(store: Store, tmp_path: Path) -> tuple[Tickets, Ingestor]:
    t = Tickets(store, registry(tmp_path, REGISTRY), ManualClock(T0))
    return t, Ingestor(store, t)


async def test_a_lost_clear_is_reconciled_by_the_next_heartbeat_and_the_ticket_verifies(
    store: Store, tmp_path: Path
) -> None:
    t, ing = setup(store, tmp_path)
    seq = Sequencer("hp-1", boot=1)
    ep = new_ulid()
    await ing.ingest([birth(seq, T0, []), alert(seq, ep, "warning", "clear", T0 + S)])
    # A heartbeat that still lists it, and one made before its last transition, change nothing.
    await ing.ingest([heartbeat(seq, T0 + 2 * S, episodes((ep, "warning")))])
    await ing.ingest([heartbeat(seq, T0 + S - 1, [])])
    # An older agent's heartbeat (no ``alerts``) says nothing about episodes.
    await ing.ingest([heartbeat(seq, T0 + 3 * S, None)])
    assert (await levels(store))[ep] == "warning"
    tk = await only_ticket(t)
    for action, note in (("dispatch", None), ("accept", None), ("report", "pumped out")):
        await t.act(tk["id"], action, "user:chen", note=note)
    assert (await only_ticket(t))["state"] == "handled", "the episode is active: no verify yet"
    # The clear (T0 + 4 s) is lost; the heartbeat after it lists no open episode.
    lost = alert(seq, ep, "clear", "warning", T0 + 4 * S)
    # A heartbeat soon after may have overtaken the clear (on its way): it waits.
    soon = await ing.ingest([heartbeat(seq, T0 + S + GRACE_MS, [])])
    assert soon.alerts == [] and (await levels(store))[ep] == "warning"
    applied = await ing.ingest([heartbeat(seq, T0 + S + GRACE_MS + 1, [])])
    assert (await levels(store))[ep] == "clear"
    assert await reasons(store, ep) == [
        ("warning", None),
        ("clear", "reconciled: heartbeat reports lvl-1 dry"),
    ]
    assert [(n, a.id, a.level) for n, a in applied.alerts] == [("hp-1", ep, "clear")]
    tk = await only_ticket(t)
    assert tk["state"] == "verified", "the sensor shows the water gone"
    entry = next(e for e in tk["timeline"] if e["action"] == "alert" and e["detail"]["level"] == "clear")
    assert entry["detail"]["reconciled"] == "heartbeat reports lvl-1 dry"
    assert entry["note"] == "lvl-1 flood warning → clear, reconciled: heartbeat reports lvl-1 dry"
    assert [e.action for e in applied.tickets] == ["verify"]
    # The public feed says the all clear: a CAP Cancel like any other clear's.
    interop = Interop(store, ManualClock(T0))
    [cap] = [m for m in await feed(interop) if m.findtext(f"{CAP}incidents") == ep]
    assert cap.findtext(f"{CAP}msgType") == "Cancel" and cap_rules.problems(cap) == []
    # The lost clear turning up after all changes nothing but the timeline.
    again = await ing.ingest([lost, heartbeat(seq, T0 + 60 * S, [])])
    assert again.tickets == [] and (await levels(store))[ep] == "clear"
    tk = await only_ticket(t)
    assert tk["state"] == "verified"
    assert [e["note"] for e in tk["timeline"] if e["action"] == "alert"][-1].endswith(
        "arrived after later ones"
    )


async def test_an_agent_restart_mid_episode_settles_the_old_boots_episodes(
    store: Store, tmp_path: Path
) -> None:
    t, ing = setup(store, tmp_path)
    old = Sequencer("hp-1", boot=1)
    a, fault = new_ulid(), new_ulid()
    await ing.ingest(
        [
            birth(old, T0, []),
            alert(old, a, "warning", "clear", T0 + S),
            alert(old, a, "danger", "warning", T0 + 2 * S),
            alert(old, fault, "warning", "clear", T0 + 2 * S, kind="sensor_fault"),
        ]
    )
    # Killed; the new boot starts clear, sees the water and opens an episode of its own. Its
    # birth (made after that rise) reaches the collector first.
    new = Sequencer("hp-1", boot=2)
    b = new_ulid()
    rise = alert(new, b, "danger", "clear", T0 + 10 * S)
    applied = await ing.ingest([birth(new, T0 + 11 * S, episodes((b, "danger")))])
    assert await levels(store) == {a: "clear", fault: "clear"}
    assert await reasons(store, a) == [
        ("warning", None),
        ("danger", None),
        ("clear", "reconciled: superseded by boot 2"),
    ]
    assert {x.id for _, x in applied.alerts} == {a, fault}
    await ing.ingest([rise])
    assert await levels(store) == {a: "clear", fault: "clear", b: "danger"}
    _, rows = await t.list()
    assert sorted(r["kind"] for r in rows) == ["flood", "sensor_fault"], "no duplicate ticket"
    flood = await t.get(next(r["id"] for r in rows if r["kind"] == "flood"))
    assert {x["id"] for x in flood["alerts"]} == {a, b}
    notes = [e["note"] for e in flood["timeline"] if e["action"] == "alert"]
    assert "lvl-1 flood danger → clear, reconciled: superseded by boot 2" in notes
    # The new boot's heartbeats keep its own episode; the old boot's stay closed.
    await ing.ingest([heartbeat(new, T0 + 20 * S, episodes((b, "danger")))])
    assert await levels(store) == {a: "clear", fault: "clear", b: "danger"}


async def test_an_episode_reported_open_whose_alert_was_lost_is_opened_from_the_report(
    store: Store, tmp_path: Path
) -> None:
    t, ing = setup(store, tmp_path)
    seq = Sequencer("hp-1", boot=1)
    ep = new_ulid(T0 + S)  # an edge names an episode by the time it began
    await ing.ingest([birth(seq, T0, [])])
    lost = alert(seq, ep, "warning", "clear", T0 + S)  # the broker lost it
    # Within the grace the alert may still be on its way: nothing yet.
    soon = await ing.ingest([heartbeat(seq, T0 + S + GRACE_MS - 1, episodes((ep, "warning")))])
    assert soon.alerts == [] and ep not in await levels(store)
    applied = await ing.ingest([heartbeat(seq, T0 + S + GRACE_MS, episodes((ep, "warning")))])
    why = "reconciled: heartbeat reports lvl-1 warning, its alert never arrived"
    assert (await levels(store))[ep] == "warning"
    assert await reasons(store, ep) == [("warning", why)]
    assert [(n, a.id, a.prev, a.level) for n, a in applied.alerts] == [("hp-1", ep, "clear", "warning")]
    assert [e.action for e in applied.tickets] == ["open"], "a ticket by the usual rules"
    tk = await only_ticket(t)
    assert tk["kind"] == "flood" and {x["id"] for x in tk["alerts"]} == {ep}
    entry = next(e for e in tk["timeline"] if e["action"] == "alert" or e["detail"].get("reconciled"))
    assert entry["detail"]["reconciled"] == "heartbeat reports lvl-1 warning, its alert never arrived"
    # Reported again: known now, nothing more.
    again = await ing.ingest([heartbeat(seq, T0 + S + 2 * GRACE_MS, episodes((ep, "warning")))])
    assert again.alerts == [] and again.tickets == []
    # The lost alert turns up after all: the timeline only, no second ticket.
    late = await ing.ingest([lost])
    assert late.tickets == [] and (await levels(store))[ep] == "warning"
    assert [e["note"] for e in (await only_ticket(t))["timeline"] if e["action"] == "alert"][-1].endswith(
        "arrived after later ones"
    )
    # Its clear arrives and closes it as usual.
    await ing.ingest([alert(seq, ep, "clear", "warning", T0 + 200 * S)])
    assert (await levels(store))[ep] == "clear"


async def test_an_episode_opened_from_a_report_is_closed_by_a_later_heartbeat_or_a_reboots_birth(
    store: Store, tmp_path: Path
) -> None:
    # Its transition is the collector's (no message of the node's behind it: no boot known).
    t, ing = setup(store, tmp_path)
    seq = Sequencer("hp-1", boot=1)
    a, b = new_ulid(T0 + S), new_ulid(T0 + S)
    await ing.ingest([birth(seq, T0, [])])
    opened = T0 + S + GRACE_MS
    await ing.ingest([heartbeat(seq, opened, episodes((a, "warning"), (b, "danger")))])
    assert await levels(store) == {a: "warning", b: "danger"}
    # A heartbeat no longer listing ``a`` closes it (after the grace, as for any of its boot's).
    await ing.ingest([heartbeat(seq, opened + GRACE_MS + 1, episodes((b, "danger")))])
    assert await levels(store) == {a: "clear", b: "danger"}
    assert (await reasons(store, a))[-1] == ("clear", "reconciled: heartbeat reports lvl-1 dry")
    tk = await only_ticket(t)
    for action, note in (("dispatch", None), ("accept", None), ("report", "pumped out")):
        await t.act(tk["id"], action, "user:chen", note=note)
    assert (await only_ticket(t))["state"] == "handled", "``b`` is active: no verify yet"
    # The agent restarts: the new boot's birth lists nothing, and ``b`` is over.
    await ing.ingest([birth(Sequencer("hp-1", boot=2), opened + 5 * GRACE_MS, [])])
    assert await levels(store) == {a: "clear", b: "clear"}
    assert (await reasons(store, b))[-1] == ("clear", "reconciled: birth reports lvl-1 dry")
    assert (await only_ticket(t))["state"] == "verified", "the sensor shows the water gone"


async def test_only_the_current_boots_newest_report_opens_episodes_and_only_of_valid_reported_kinds(
    store: Store, tmp_path: Path
) -> None:
    t, ing = setup(store, tmp_path)
    old, new = Sequencer("hp-1", boot=1), Sequencer("hp-1", boot=2)
    gone, bad, silent, dropped = (new_ulid(T0) for _ in range(4))
    await ing.ingest([birth(new, T0 + 100 * S, [])])
    late = T0 + 200 * S
    weird = [
        {"id": bad, "dev": "lvl-1", "kind": "no_such_kind", "level": "warning"},
        {"id": silent, "dev": "node", "kind": "comms_lost", "level": "warning"},
    ]
    applied = await ing.ingest(
        [
            heartbeat(old, late, episodes((gone, "danger"))),  # the old boot's: over
            heartbeat(new, late, weird),  # refused by the contract, or the collector's own kind
            # Listed, then no longer listed by a newer report in the same batch.
            heartbeat(new, late + S, episodes((dropped, "warning"))),
            heartbeat(new, late + 2 * S, []),
        ]
    )
    assert applied.alerts == [] and await levels(store) == {}
    total, _ = await t.list()
    assert total == 0


async def test_collector_raised_episodes_are_not_the_nodes_to_reconcile(store: Store, tmp_path: Path) -> None:
    _, ing = setup(store, tmp_path)
    seq = Sequencer("hp-1", boot=1)
    silent = wire.Alert(id=new_ulid(), dev="lvl-1", kind="comms_lost", level="warning", prev="clear", ts=T0)
    # The collector's own rainfall forecast for the site (cloud.forecast), of a kind nodes raise too.
    fc = wire.Alert(
        id=new_ulid(), dev=FORECAST_DEV, kind="forecast", level="warning", prev="clear", ts=T0, eta_s=600.0
    )
    await ing.ingest([birth(seq, T0, [])])
    async with store.begin() as conn:
        await ing.record_transitions(
            conn, [Transition(new_ulid(T0), "hp-1", silent), Transition(new_ulid(T0), "hp-1", fc, 0.8)]
        )
    await ing.ingest([heartbeat(seq, T0 + 60 * S, [])])
    await ing.ingest([birth(Sequencer("hp-1", boot=2), T0 + 120 * S, [])])
    assert (await levels(store)) == {silent.id: "warning", fc.id: "warning"}


def test_a_report_is_read_from_births_and_heartbeats_and_a_malformed_one_is_refused() -> None:
    seq = Sequencer("hp-1", boot=3)
    ep = new_ulid()

    def decoded(r: Received) -> wire.Envelope:
        m = wire.decode(r.topic, r.payload).message
        assert isinstance(m, wire.Envelope)
        return m

    assert report(decoded(heartbeat(seq, T0, episodes((ep, "warning"))))) == Report(
        "hp-1", 3, T0, "heartbeat", frozenset({ep}), tuple(episodes((ep, "warning")))
    )
    assert report(decoded(birth(seq, T0, []))) == Report("hp-1", 3, T0, "birth", frozenset())
    assert report(decoded(heartbeat(seq, T0, None))) is None
    bad = msg(seq, "event", {"event": {"type": "heartbeat", "detail": {"alerts": [{"level": "x"}]}}})
    assert report(decoded(bad)) is None
    # The newest report that counts decides: its own boot's after the grace, a newer boot's at once.
    late = T0 + GRACE_MS
    row = {
        "id": ep,
        "node": "hp-1",
        "dev": "lvl-1",
        "kind": "flood",
        "level": "warning",
        "last_ts": T0,
        "boot": 3,
    }
    listing = Report("hp-1", 3, late + 1, "heartbeat", frozenset({ep}))
    empty = Report("hp-1", 3, late + 2, "heartbeat", frozenset())
    assert [a.reason for _, a in stale([listing, empty], [row])] == [
        "reconciled: heartbeat reports lvl-1 dry"
    ]
    assert stale([Report("hp-1", 3, late + 3, "heartbeat", frozenset({ep})), empty], [row]) == []
    assert stale([Report("hp-2", 3, late + 3, "heartbeat", frozenset())], [row]) == []
    assert stale([Report("hp-1", 3, T0 + 5, "heartbeat", frozenset())], [row]) == [], "within the grace"
    [(_, a)] = stale([Report("hp-1", 4, T0 + 5, "birth", frozenset())], [row])
    assert a.reason == "reconciled: superseded by boot 4" and a.ts == T0 + 5 and a.prev == "warning"
