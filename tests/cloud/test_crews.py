"""The demo's simulated crews: they act on their own units' tickets as people would, by the
ticket's own deadlines and on a controllable clock, and leave the unit a person plays alone."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from cloud.db.store import Store
from cloud.ingest import Ingestor
from cloud.measures import Measures
from floodgate.clock import ManualClock
from floodgate.ids import new_ulid
from simulators.crews import HABITS, Crews
from tests.cloud.test_tickets import MIN, Site, registry

REGISTRY = """\
fallback_unit: emergency-office
units:
  emergency-office: {name: 应急管理局}
  drainage-dasha: {name: 大沙街排水所}
  drainage-lianhe: {name: 联和街排水所}
areas:
  dasha: {level: street, units: {drainage: drainage-dasha}}
  lianhe: {level: street, units: {drainage: drainage-lianhe}}
sites:
  hp-1: {area: dasha}
  hp-3: {area: lianhe}
auto_dispatch:
  - {kind: flood, min_priority: danger}
"""


async def test_a_crew_dispatches_accepts_reports_and_the_office_evaluates_its_units_tickets_only(
    store: Store, tmp_path: Path
) -> None:
    from cloud.tickets import Tickets

    clock = ManualClock()
    t = Tickets(store, registry(tmp_path, REGISTRY), clock)
    ours, theirs = Site(Ingestor(store, t), "hp-1"), Site(Ingestor(store, t), "hp-3")
    danger, warning = new_ulid(), new_ulid()
    await ours.send(ours.alert(new_ulid(), "danger", "clear"))  # the person's unit: left alone
    await theirs.send(theirs.alert(danger, "danger", "clear"))  # auto-dispatched to the crew
    crews = Crews.for_units(t, clock, ["drainage-lianhe"])  # the quick habits
    assert crews.units["drainage-lianhe"] == HABITS[0]

    async def run_for(minutes: float) -> None:
        for _ in range(int(minutes * 2)):
            clock.advance(30_000)
            await crews.step()

    await run_for(15)  # the danger accept deadline (15 min by default) has passed
    _, [crew_ticket] = await t.list(node="hp-3")
    _, [person_ticket] = await t.list(node="hp-1")
    assert person_ticket["state"] == "dispatched" and person_ticket["accepted_ms"] is None
    assert crew_ticket["accepted_on_time"] is True, "the quick crew accepts within its deadline"
    assert crew_ticket["state"] in ("accepted", "handled")
    await run_for(120)
    crew_ticket = await t.get(crew_ticket["id"])
    assert crew_ticket["state"] == "handled" and crew_ticket["handled_on_time"] is True
    report = next(e for e in crew_ticket["timeline"] if e["action"] == "report")
    assert report["actor"] == "unit:drainage-lianhe:crew"
    await theirs.send(theirs.alert(danger, "clear", "danger"))  # the water is gone: verified
    await run_for(5)
    crew_ticket = await t.get(crew_ticket["id"])
    assert crew_ticket["state"] == "closed" and crew_ticket["score"] in HABITS[0].scores
    # A warning is not dispatched by the rule: the office dispatches the crew's (a new ticket:
    # after the reopen window).
    clock.advance(7 * 60 * MIN)
    await theirs.send(theirs.alert(warning, "warning", "clear"))
    await run_for(60)
    _, found = await t.list(node="hp-3", state=["dispatched", "accepted", "handled"])
    assert [k["id"] for k in found] and found[0]["unit"] == "drainage-lianhe"
    assert crews.acted["dispatch"] == 1 and crews.acted["evaluate"] == 1
    # The month's measures rank the crew as a person's unit would be ranked.
    month = datetime.fromtimestamp(clock.now_ms() / 1000, ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    units = {u["unit"]: u for u in await Measures(store, clock).units(month)}
    assert units["drainage-lianhe"]["on_time_accept_rate"] == 1.0
    assert units["drainage-dasha"]["on_time_accept_rate"] == 0.0  # nobody accepted it: late


async def test_a_slow_crew_is_late_now_and_then(store: Store, tmp_path: Path) -> None:
    """Ten danger tickets for the slowest habits: some late, some on time (the measures differ)."""
    from cloud.tickets import Tickets

    clock = ManualClock()
    t = Tickets(store, registry(tmp_path, REGISTRY), clock)
    crews = Crews(t, clock, {"drainage-lianhe": HABITS[2]}, seed=3)
    site = Site(Ingestor(store, t), "hp-3")
    on_time: list[bool] = []
    for _ in range(10):
        ep = new_ulid()
        await site.send(site.alert(ep, "danger", "clear"))
        for _ in range(2 * 40):
            clock.advance(30_000)
            await crews.step()
        _, [k] = await t.list(node="hp-3", state=["accepted", "handled"])
        on_time.append(bool(k["accepted_on_time"]))
        await site.send(site.alert(ep, "clear", "danger"))
        for _ in range(2 * 10):
            clock.advance(30_000)
            await crews.step()
        clock.advance(7 * 60 * MIN)  # past the reopen window: the next flood is a new ticket
    assert 0 < sum(on_time) < 10, on_time
