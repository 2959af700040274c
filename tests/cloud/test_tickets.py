"""Tickets on SQLite and PostgreSQL: alerts open and update them, people move them, time escalates them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from cloud.config import load_cloud_config
from cloud.db.schema import ticket_timeline, tickets
from cloud.db.store import Store
from cloud.ingest import Ingestor, Received
from cloud.registry import Registry, load_registry
from cloud.scheduler import Scheduler
from cloud.silence import Silence
from cloud.tickets import TicketError, Tickets
from cloud.tickets.service import late_by
from floodgate.clock import ManualClock
from floodgate.errors import ConfigError
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer
from tests.cloud.test_ingest import count, msg
from tests.helpers import wait_until

REGISTRY = """\
fallback_unit: emergency-office
supervision_unit: supervision-office
units:
  emergency-office: {name: 黄埔区应急管理局}
  supervision-office: {name: 督办室}
  drainage-dasha: {name: 大沙街排水所, leader: 王所长}
  maint-huangpu: {name: 区设备维护班}
areas:
  huangpu: {level: district, name: 黄埔区, units: {maintenance: maint-huangpu}}
  dasha: {level: street, parent: huangpu, units: {drainage: drainage-dasha}}
  dasha-c1: {level: community, parent: dasha}
  dasha-g7: {level: grid, parent: dasha-c1}
sites:
  hp-1: {area: dasha-g7, name: 科翔路隧道}
"""
MIN = 60_000


def registry(tmp_path: Path, text: str = REGISTRY) -> Registry:
    p = tmp_path / "registry.yaml"
    p.write_text(text)
    return load_registry(p)


class Site:
    """One node's alert episodes, as the agent would send them."""

    def __init__(self, ing: Ingestor, node: str = "hp-1") -> None:
        self.ing = ing
        self.seq = Sequencer(node, boot=1)

    def alert(
        self, aid: str, level: str, prev: str, kind: str = "flood", value: float = 200.0, ts: int = 1
    ) -> Received:
        body = {
            "alert": {
                "id": aid,
                "dev": "lvl-1",
                "kind": kind,
                "level": level,
                "prev": prev,
                "value": value,
                "ts": ts,
            }
        }
        return msg(self.seq, "alert", body)

    async def send(self, *items: Received) -> Any:
        return await self.ing.ingest(list(items))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def service(store: Store, tmp_path: Path, clock: ManualClock, text: str = REGISTRY) -> Tickets:
    return Tickets(store, registry(tmp_path, text), clock)


async def only_ticket(t: Tickets) -> dict[str, Any]:
    total, rows = await t.list()
    assert total == 1, rows
    return await t.get(rows[0]["id"])


async def test_an_episode_opens_one_routed_ticket_and_its_transitions_land_on_it(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    t = service(store, tmp_path, clock)
    site = Site(Ingestor(store, t))
    ep = new_ulid()
    applied = await site.send(site.alert(ep, "warning", "clear"))
    assert [e.action for e in applied.tickets] == ["open"]
    tk = await only_ticket(t)
    assert tk["state"] == "open" and tk["priority"] == "warning" and tk["kind"] == "flood"
    # grid → community (no drainage unit) → street (has one)
    assert tk["department"] == "drainage" and tk["unit"] == "drainage-dasha"
    assert tk["title"] == "Water at 科翔路隧道"
    await site.send(site.alert(ep, "danger", "warning", value=290.0))
    tk = await only_ticket(t)
    assert tk["priority"] == "danger", "raised in place"
    await site.send(site.alert(ep, "clear", "danger", value=10.0))
    tk = await only_ticket(t)
    assert [e["action"] for e in tk["timeline"]] == ["open", "alert", "priority", "alert"]
    assert {e["actor"] for e in tk["timeline"]} == {"system"}
    assert [a["id"] for a in tk["alerts"]] == [ep]
    # A new episode while the ticket is still open goes onto it as well.
    await site.send(site.alert(new_ulid(), "warning", "clear"))
    tk = await only_ticket(t)
    assert len(tk["alerts"]) == 2 and tk["state"] == "open"


async def test_sensor_faults_are_tickets_of_their_own_for_maintenance(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    t = service(store, tmp_path, clock)
    site = Site(Ingestor(store, t))
    await site.send(site.alert(new_ulid(), "warning", "clear"))
    await site.send(site.alert(new_ulid(), "warning", "clear", kind="sensor_fault"))
    total, rows = await t.list(kind="sensor_fault")
    assert total == 1
    assert rows[0]["unit"] == "maint-huangpu" and rows[0]["priority"] == "fault"
    # A site the registry does not know goes to the fallback unit.
    other = Site(Ingestor(store, t), node="unknown-9")
    await other.send(other.alert(new_ulid(), "danger", "clear"))
    _, rows = await t.list(node="unknown-9")
    assert rows[0]["unit"] == "emergency-office"


async def test_replayed_alerts_make_no_second_ticket_and_no_second_timeline_entry(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    t = service(store, tmp_path, clock)
    site = Site(Ingestor(store, t))
    ep = new_ulid()
    batch = [site.alert(ep, "warning", "clear"), site.alert(ep, "danger", "warning")]
    await site.send(*batch)
    await site.send(*batch)
    await site.send(*(batch * 2))
    assert await count(store, tickets) == 1
    assert await count(store, ticket_timeline) == 3  # open, alert, priority


async def test_the_closed_loop_with_an_actor_on_every_step(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    t = service(store, tmp_path, clock)
    site = Site(Ingestor(store, t))
    ep = new_ulid()
    await site.send(site.alert(ep, "danger", "clear"))
    tid = (await only_ticket(t))["id"]
    with pytest.raises(TicketError) as err:
        await t.act(tid, "accept", "unit:drainage-dasha")
    assert err.value.code == "conflict" and "open" in err.value.message
    with pytest.raises(TicketError, match="unknown unit"):
        await t.act(tid, "dispatch", "user:chen", unit="nobody")
    tk, events = await t.act(tid, "dispatch", "user:chen", note="go")
    assert tk["state"] == "dispatched" and tk["unit"] == "drainage-dasha"
    assert (
        tk["accept_due_ms"] == clock.now_ms() + 15 * MIN and tk["handle_due_ms"] == clock.now_ms() + 120 * MIN
    )
    assert [e.action for e in events] == ["dispatch"]
    clock.advance(5 * MIN)
    tk, _ = await t.act(tid, "accept", "unit:drainage-dasha")
    assert tk["accepted_on_time"] is True
    with pytest.raises(TicketError, match="note"):
        await t.act(tid, "report", "unit:drainage-dasha")
    clock.advance(60 * MIN)
    tk, _ = await t.act(tid, "report", "unit:drainage-dasha", note="pumped out", photo_url="https://x/p.jpg")
    assert tk["state"] == "handled", "the water is still there: no automatic verification"
    with pytest.raises(TicketError) as err:
        await t.act(tid, "verify", "user:street-office")
    assert err.value.code == "still_wet" and "still reads water" in err.value.message
    tk, _ = await t.act(tid, "verify", "user:street-office", confirm=True)
    with pytest.raises(TicketError, match="1 to 5"):
        await t.act(tid, "evaluate", "user:chen", score=7)
    tk, events = await t.act(tid, "evaluate", "user:chen", score=5, note="fast")
    assert tk["state"] == "closed" and tk["score"] == 5 and tk["handled_on_time"] is True
    assert [e.action for e in events] == ["close"]
    steps = [(e["action"], e["actor"], e["from_state"], e["to_state"]) for e in tk["timeline"]]
    assert steps == [
        ("open", "system", None, "open"),
        ("dispatch", "user:chen", "open", "dispatched"),
        ("accept", "unit:drainage-dasha", "dispatched", "accepted"),
        ("report", "unit:drainage-dasha", "accepted", "handled"),
        ("verify", "user:street-office", "handled", "verified"),
        ("evaluate", "user:chen", "verified", "closed"),
    ]
    assert tk["timeline"][3]["detail"] == {"photo_url": "https://x/p.jpg"}
    assert tk["timeline"][4]["detail"] == {"confirmed_while_wet": True}, "the timeline says so"
    with pytest.raises(TicketError) as err:
        await t.act("01JDNOSUCHTICKET000000000", "accept", "user:chen")
    assert err.value.code == "not_found"


async def test_the_sensor_verifies_a_handled_flood_ticket(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    t = service(store, tmp_path, clock)
    site = Site(Ingestor(store, t))
    ep = new_ulid()
    await site.send(site.alert(ep, "danger", "clear"))
    tid = (await only_ticket(t))["id"]
    await t.act(tid, "dispatch", "user:chen")
    await t.act(tid, "accept", "unit:drainage-dasha")
    await t.act(tid, "report", "unit:drainage-dasha", note="pumps running")
    applied = await site.send(site.alert(ep, "clear", "danger", value=0.0))
    assert [e.action for e in applied.tickets] == ["verify"]
    tk = await t.get(tid)
    assert tk["state"] == "verified" and tk["timeline"][-1]["note"] == "the sensor shows the water gone"


async def test_reject_goes_back_to_the_dispatcher_or_to_the_fallback_unit(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    t = service(store, tmp_path, clock)
    site = Site(Ingestor(store, t))
    await site.send(site.alert(new_ulid(), "warning", "clear"))
    tid = (await only_ticket(t))["id"]
    await t.act(tid, "dispatch", "user:chen")
    with pytest.raises(TicketError, match="why"):
        await t.act(tid, "reject", "unit:drainage-dasha")
    tk, _ = await t.act(tid, "reject", "unit:drainage-dasha", note="not our road")
    assert tk["state"] == "open", "no auto-dispatch: back to the dispatcher"

    auto = REGISTRY + "auto_dispatch:\n  - {kind: flood, min_priority: danger}\n"
    t2 = service(store, tmp_path, clock, auto)
    other = Site(Ingestor(store, t2), node="hp-2")
    await other.send(other.alert(new_ulid(), "warning", "clear"))
    _, rows = await t2.list(node="hp-2")
    assert rows[0]["state"] == "open", "the rule needs danger"
    third = Site(Ingestor(store, t2), node="hp-3")
    applied = await third.send(third.alert(new_ulid(), "danger", "clear"))
    assert [e.action for e in applied.tickets] == ["open", "dispatch"]
    _, rows = await t2.list(node="hp-3")
    assert rows[0]["state"] == "dispatched" and rows[0]["unit"] == "emergency-office"
    tid3 = rows[0]["id"]
    # Routed to the fallback already (hp-3 is not registered): a rejection goes back to open.
    tk, _ = await t2.act(tid3, "reject", "unit:emergency-office", note="x")
    assert tk["state"] == "open"


async def test_rejection_under_auto_dispatch_goes_to_the_fallback_unit(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    auto = REGISTRY + "auto_dispatch:\n  - {kind: flood}\n"
    t = service(store, tmp_path, clock, auto)
    site = Site(Ingestor(store, t))
    await site.send(site.alert(new_ulid(), "danger", "clear"))
    tk = await only_ticket(t)
    assert tk["state"] == "dispatched" and tk["unit"] == "drainage-dasha"
    tk, events = await t.act(tk["id"], "reject", "unit:drainage-dasha", note="not ours")
    assert [e.action for e in events] == ["reject", "dispatch"]
    assert tk["state"] == "dispatched" and tk["unit"] == "emergency-office"


async def test_a_new_episode_within_the_reopen_window_reopens_the_ticket(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    t = service(store, tmp_path, clock)
    site = Site(Ingestor(store, t))
    ep = new_ulid()
    await site.send(site.alert(ep, "warning", "clear"))
    tid = (await only_ticket(t))["id"]
    for action, actor, kw in [
        ("dispatch", "user:chen", {}),
        ("accept", "unit:drainage-dasha", {}),
        ("report", "unit:drainage-dasha", {"note": "cleared the drain"}),
        ("verify", "user:chen", {"confirm": True}),  # the episode is still on
        ("evaluate", "user:chen", {"score": 4}),
    ]:
        await t.act(tid, action, actor, **kw)
    await site.send(site.alert(ep, "clear", "warning"))
    clock.advance(5 * 60 * MIN)  # within 6 h
    await site.send(site.alert(new_ulid(), "warning", "clear"))
    tk = await only_ticket(t)
    assert tk["state"] == "open" and tk["reopened"] == 1 and tk["id"] == tid
    assert tk["timeline"][-2]["action"] == "reopen" and tk["timeline"][-2]["actor"] == "system"
    # Closed again, and the next episode comes after the window: a new ticket.
    for action, kw in [
        ("dispatch", {}),
        ("accept", {}),
        ("report", {"note": "x"}),
        ("verify", {"confirm": True}),
        ("evaluate", {"score": 3}),
    ]:
        await t.act(tid, action, "user:chen", **kw)
    clock.advance(7 * 60 * MIN)
    await site.send(site.alert(new_ulid(), "warning", "clear"))
    total, rows = await t.list()
    assert total == 2 and rows[0]["id"] != tid and rows[0]["state"] == "open"


async def test_merge_makes_a_duplicate_and_moves_its_alerts(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    t = service(store, tmp_path, clock)
    a = Site(Ingestor(store, t), node="hp-1")
    b = Site(Ingestor(store, t), node="hp-2")
    ep_b = new_ulid()
    await a.send(a.alert(new_ulid(), "warning", "clear"))
    await b.send(b.alert(ep_b, "warning", "clear"))
    _, [ta] = await t.list(node="hp-1")
    _, [tb] = await t.list(node="hp-2")
    with pytest.raises(TicketError, match="another ticket"):
        await t.act(tb["id"], "merge", "user:chen")
    dup, _ = await t.act(tb["id"], "merge", "user:chen", of=ta["id"], note="same tunnel")
    assert dup["state"] == "duplicate" and dup["duplicate_of"] == ta["id"]
    await b.send(b.alert(ep_b, "danger", "warning"))
    kept = await t.get(ta["id"])
    assert kept["priority"] == "danger", "the duplicate's episode now lands on the ticket that stays"
    assert [e["action"] for e in kept["timeline"]][-3:] == ["merged", "alert", "priority"]


async def test_escalation_follows_a_controllable_clock_and_survives_a_restart(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    t = service(store, tmp_path, clock)
    site = Site(Ingestor(store, t))
    await site.send(site.alert(new_ulid(), "danger", "clear"))
    tid = (await only_ticket(t))["id"]
    await t.act(tid, "dispatch", "user:chen")  # accept due in 15 min, handle in 120

    esc = Scheduler(t, idle_check_ms=10 * MIN)
    task = asyncio.create_task(esc.run())
    try:
        await wait_until(lambda: esc.runs >= 1, 10, "the escalator's first look")
        clock.advance(14 * MIN)
        assert await t.escalate_due() == [], "not due yet"
        assert (await t.get(tid))["escalation"] == 0
        clock.advance(2 * MIN)  # 16 min: the accept deadline has passed

        async def level(n: int) -> bool:
            return (await t.get(tid))["escalation"] == n

        await wait_until(lambda: level(1), 10, "level 1 at the accept deadline")
        tk = await t.get(tid)
        assert tk["overdue"] is True
        esc_entry = tk["timeline"][-1]
        assert esc_entry["action"] == "escalate" and esc_entry["detail"]["to"] == "王所长"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # A restarted collector reads the stored deadline: 30 min is twice late.
    t2 = service(store, tmp_path, clock)
    esc2 = Scheduler(t2)
    task = asyncio.create_task(esc2.run())
    try:
        await wait_until(lambda: esc2.runs >= 1, 10, "the new escalator's first look")
        clock.advance(15 * MIN)
        await wait_until(lambda: level(2), 10, "level 2 to the supervision office")
        tk = await t.get(tid)
        assert tk["timeline"][-1]["detail"]["to"] == "supervision-office"
        assert tk["escalations"] == 2
        tk, _ = await t.act(tid, "accept", "unit:drainage-dasha")
        assert tk["accepted_on_time"] is False
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await count(store, ticket_timeline) == 5  # open, dispatch, escalate x2, accept


async def test_two_collectors_racing_open_one_ticket(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    """Two ingestors, each with its own connection, get different episodes of one site at once."""
    other = Store(store.url)
    try:
        t1, t2 = service(store, tmp_path, clock), service(other, tmp_path, clock)
        s1, s2 = Site(Ingestor(store, t1)), Site(Ingestor(other, t2))
        for _ in range(5):
            await asyncio.gather(
                s1.send(s1.alert(new_ulid(), "warning", "clear")),
                s2.send(s2.alert(new_ulid(), "danger", "clear")),
            )
    finally:
        await other.close()
    tk = await only_ticket(t1)
    assert len(tk["alerts"]) == 10 and tk["priority"] == "danger"
    async with store.read() as conn:
        opens = (
            await conn.execute(
                select(func.count()).select_from(ticket_timeline).where(ticket_timeline.c.action == "open")
            )
        ).scalar()
    assert opens == 1


def test_a_bad_registry_names_file_line_and_key(tmp_path: Path) -> None:
    bad = REGISTRY.replace("units: {drainage: drainage-dasha}", "units: {drainage: drainage-dahsa}").replace(
        "parent: dasha}", "parent: dashaa}"
    )
    with pytest.raises(ConfigError) as err:
        registry(tmp_path, bad)
    text = str(err.value)
    assert "registry.yaml:10" in text and "areas.dasha.units.drainage" in text and "drainage-dahsa" in text
    assert "registry.yaml:11" in text and "areas.dasha-c1.parent" in text
    with pytest.raises(ConfigError, match="fallback_unit"):
        registry(tmp_path, "units: {a: {name: A}}\n")


async def test_a_silent_site_raises_comms_lost_and_clears_when_heard(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    t = service(store, tmp_path, clock)
    ing = Ingestor(store, t)
    silence = Silence(store, ing, t, clock, after_ms=5 * MIN)
    seq = Sequencer("hp-1", boot=1)

    def heard(dev_ts: int) -> Received:
        r = msg(
            seq,
            "telemetry",
            {
                "readings": [
                    {"dev": "lvl-1", "ts": dev_ts, "metric": "depth_mm", "value": 1.0, "quality": "good"}
                ]
            },
        )
        return Received(r.topic, r.payload, clock.now_ms())

    birth = {
        "agent_version": "0.1.0",
        "config_hash": "abc",
        "site": {"name": "T", "lat": 23.1, "lon": 113.4},
        "devices": [
            {"id": "lvl-1", "kind": "level", "model": "m"},
            {"id": "gate-1", "kind": "gate", "model": "g"},
        ],
    }
    await ing.ingest([msg(seq, "birth", birth), heard(clock.now_ms())])
    assert await silence.check() == []
    clock.advance(6 * MIN)
    events = await silence.check()
    assert [e.action for e in events] == ["open"]
    tk = await only_ticket(t)
    assert tk["kind"] == "comms_lost" and tk["unit"] == "maint-huangpu" and tk["priority"] == "fault"
    assert tk["alerts"][0]["dev"] == "node" and "nothing heard for 360 s" in tk["alerts"][0]["reason"]
    assert await silence.check() == [], "one episode, not one per check"

    await ing.ingest([heard(clock.now_ms() - 10 * MIN)])  # the box talks, but the sensor's data is old
    await silence.check()
    tk = await only_ticket(t)
    levels = {a["dev"]: a["level"] for a in tk["alerts"]}
    assert levels == {"node": "clear", "lvl-1": "warning"}, "the node is back; its sensor is silent"
    await ing.ingest([heard(clock.now_ms())])
    await silence.check()
    tk = await only_ticket(t)
    assert {a["level"] for a in tk["alerts"]} == {"clear"}
    assert [e["action"] for e in tk["timeline"]] == ["open", "alert", "alert", "alert"]


def test_the_shipped_examples_load() -> None:
    root = Path(__file__).resolve().parents[2] / "firmware-config" / "cloud"
    reg = load_registry(root / "registry-huangpu-example.yaml")
    assert reg.route("hp-kexiang-01", "flood") == ("drainage", "drainage-dasha")
    assert reg.route("hp-kexiang-01", "sensor_fault") == ("maintenance", "maint-huangpu")
    cfg, _ = load_cloud_config(root / "collector-example.yaml")
    assert cfg.registry is not None and Path(cfg.registry).exists()


async def test_a_warning_that_becomes_danger_is_auto_dispatched(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    auto = REGISTRY + "auto_dispatch:\n  - {kind: flood, min_priority: danger}\n"
    t = service(store, tmp_path, clock, auto)
    site = Site(Ingestor(store, t))
    ep = new_ulid()
    await site.send(site.alert(ep, "warning", "clear"))
    assert (await only_ticket(t))["state"] == "open"
    applied = await site.send(site.alert(ep, "danger", "warning"))
    assert [e.action for e in applied.tickets] == ["priority", "dispatch"]
    tk = await only_ticket(t)
    assert tk["state"] == "dispatched" and tk["timeline"][-1]["actor"] == "system"


async def test_an_undispatched_ticket_has_a_dispatch_deadline_and_escalates(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    """Nobody dispatches a warning (no auto-dispatch rule): after the warning's accept time
    (30 min) it is overdue and goes to the unit's leader, then to supervision; dispatching it
    starts the accept deadline afresh."""
    t = service(store, tmp_path, clock)
    site = Site(Ingestor(store, t))
    await site.send(site.alert(new_ulid(), "warning", "clear"))
    tk = await only_ticket(t)
    assert tk["state"] == "open" and tk["dispatch_due_ms"] == clock.now_ms() + 30 * MIN
    assert tk["opened_ms"] == clock.now_ms() and tk["overdue"] is False
    assert await t.next_check() == tk["dispatch_due_ms"], "the scheduler wakes for it"
    clock.advance(29 * MIN)
    assert await t.escalate_due() == []
    clock.advance(2 * MIN)
    [ev] = await t.escalate_due()
    assert ev.action == "escalate" and ev.escalation == 1
    assert (
        ev.note is not None
        and ev.note.startswith("dispatch deadline missed by 1 min")
        and "王所长" in ev.note
    )
    assert ev.detail is not None and ev.detail["to"] == "王所长" and ev.detail["deadline"] == "dispatch"
    tk = await t.get(tk["id"])
    assert tk["overdue"] is True and tk["escalation"] == 1
    assert [r["id"] for r in (await t.list(overdue=True))[1]] == [tk["id"]]
    clock.advance(30 * MIN)  # missed by its own length again
    [ev] = await t.escalate_due()
    assert ev.escalation == 2 and (ev.note or "").endswith("to supervision-office")

    tk, _ = await t.act(tk["id"], "dispatch", "user:chen")
    assert tk["escalation"] == 0 and tk["overdue"] is False
    assert tk["accept_due_ms"] == clock.now_ms() + 30 * MIN
    # Rejected back to open: its dispatch deadline runs again from now.
    tk, _ = await t.act(tk["id"], "reject", "unit:drainage-dasha", note="not ours")
    assert tk["state"] == "open" and tk["dispatch_due_ms"] == clock.now_ms() + 30 * MIN


async def test_a_silence_check_with_nothing_to_do_waits_on_no_writer(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    """On SQLite ``Store.begin`` is BEGIN IMMEDIATE: a check that only looked took the write lock,
    so every quiet check waited behind any batch being written (up to the 30 s busy timeout)."""
    if store.dialect != "sqlite":
        pytest.skip("PostgreSQL readers take no write lock either way")
    import sqlite3

    t = service(store, tmp_path, clock)
    silence = Silence(store, Ingestor(store, t), t, clock, after_ms=5 * MIN)
    assert await silence.check() == []
    writer = sqlite3.connect(str(store.engine.url.database), isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another collector's batch, mid-write
        assert await asyncio.wait_for(silence.check(), 5) == []
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_an_escalation_check_with_nothing_due_waits_on_no_ticket_lock(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    """The scheduler runs after every batch that changed a ticket (in a storm, nearly all): a check
    with nothing due took the ticket lock each time, and every alert batch of every collector
    waited on it."""
    if store.dialect != "postgresql":
        pytest.skip("the ticket lock is PostgreSQL's (SQLite has one writer)")
    t = service(store, tmp_path, clock)
    site = Site(Ingestor(store, t))
    await site.send(site.alert(new_ulid(), "danger", "clear"))
    tid = (await only_ticket(t))["id"]
    await t.act(tid, "dispatch", "user:chen")  # accept due in 15 min
    async with store.begin() as holder:
        await store.lock_tickets(holder)  # another collector's alert batch, mid-commit
        assert await asyncio.wait_for(t.escalate_due(), 5) == []
        clock.advance(16 * MIN)  # now one is due: that check takes the lock, and waits for it
        late = asyncio.create_task(t.escalate_due())

        async def waiting() -> bool:
            async with store.engine.connect() as conn:
                q = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                return bool((await conn.execute(q)).scalar())

        await wait_until(waiting, 10, "the due check waiting on the ticket lock")
        assert not late.done()
    [ev] = await asyncio.wait_for(late, 10)
    assert ev.action == "escalate" and (await t.get(tid))["escalation"] == 1


async def test_every_system_entry_carries_a_code_and_its_parameters(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    """The dashboard translates a system entry from its detail's code (it matched English notes
    by regex): opened and routed, auto-dispatched, priority raised, rejected to the fallback unit,
    verified by the sensor, reopened when the water is back, escalated, a late alert."""
    from cloud.tickets.service import TIMELINE_CODES

    auto = REGISTRY + "auto_dispatch:\n  - {kind: flood, min_priority: danger}\n"
    t = service(store, tmp_path, clock, auto)
    site = Site(Ingestor(store, t))
    ep = new_ulid()
    await site.send(site.alert(ep, "warning", "clear", ts=1))
    tid = (await only_ticket(t))["id"]
    await site.send(site.alert(ep, "danger", "warning", ts=2))  # priority, then auto-dispatch
    await t.act(tid, "reject", "unit:drainage-dasha", note="not ours")  # to the fallback unit
    clock.advance(20 * MIN)
    await t.escalate_due()
    await t.act(tid, "accept", "unit:emergency-office")
    await t.act(tid, "report", "unit:emergency-office", note="pumped")
    await site.send(site.alert(ep, "clear", "danger", ts=3))  # verified by the sensor
    await t.act(tid, "evaluate", "user:chen", score=5)
    await site.send(site.alert(new_ulid(), "warning", "clear", ts=4))  # the water is back
    tk = await t.get(tid)
    system = [e for e in tk["timeline"] if e["actor"] == "system"]
    codes = [e["detail"].get("code") for e in system if e["action"] != "alert"]
    assert codes == [
        "routed",
        "priority",
        "auto_dispatch",
        "rejected_to_fallback",
        "escalated",
        "water_gone",
        "water_back",
        "auto_dispatch",  # reopened at danger: the rule dispatches it again
    ], codes
    for e in system:
        code = e["detail"].get("code")
        if code is None:
            assert e["action"] == "alert" and {"dev", "prev", "level"} <= set(e["detail"]), e
            continue
        missing = [p for p in TIMELINE_CODES[code] if p not in e["detail"]]
        assert missing == [], (code, missing)
        assert e["note"], "the English sentence stays for other readers"
    by = {e["detail"].get("code"): e["detail"] for e in system}
    assert (by["priority"]["from"], by["priority"]["to"]) == ("warning", "danger")
    assert by["rejected_to_fallback"]["rejected_by"] == "drainage-dasha"
    assert by["escalated"]["to_unit"] == "emergency-office"


def test_how_late_is_said_in_minutes_or_under_a_minute_never_0_min() -> None:
    assert [late_by(ms) for ms in (0, 59_999, 60_000, 119_999, 600_000)] == [
        "under a minute",
        "under a minute",
        "1 min",
        "1 min",
        "10 min",
    ]
