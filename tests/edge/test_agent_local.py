"""The agent on its own (no broker reachable): buses, local actuation and its safety rules.

With no broker every message stays in the outbox, so the tests read what the
agent said from there.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from edge.agent import Agent
from edge.outbox import PRIORITY_BULK, Outbox
from floodgate.ids import now_ms
from simulators.devices import SimSign
from simulators.scenarios import Scenario
from tests.conftest import SiteFactory, running, site_yaml
from tests.helpers import wait_until

WARN = "前方积水 减速慢行"
DANGER = "隧道积水 禁止通行"


async def said(agent: Agent) -> list[dict[str, Any]]:
    return [json.loads(p.payload) for p in await agent.outbox.peek(100_000)]


async def events(agent: Agent, etype: str) -> list[dict[str, Any]]:
    return [m["event"] for m in await said(agent) if "event" in m and m["event"]["type"] == etype]


async def test_dead_slave_does_not_stall_the_others(
    sim_site: SiteFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sim, site = await sim_site(extra_sensors=2, poll_s=0.1)
    agent = Agent(site)
    async with running(agent):
        owner = agent.owners["bus-1"]
        await wait_until(lambda: all(c.last_good_ms for c in owner.counters.values()), 10, "first polls")
        sim["lvl-1"].inject("no_answer")
        await wait_until(lambda: owner.counters["lvl-1"].state == "quarantined", 10, "quarantine")
        dead0 = owner.counters["lvl-1"].requests
        t0 = time.monotonic()
        healthy = ["lvl-2", "lvl-3", "imm-1", "sign-1", "gate-1"]
        start = {d: owner.counters[d].requests for d in healthy}
        await wait_until(
            lambda: all(owner.counters[d].requests - start[d] >= 30 for d in healthy),
            30,
            "30 more polls of every healthy device",
        )
        # In the time every neighbour was polled 30 times, the dead slave (0.2 s timeout,
        # one retry) was tried only a few times: it is backed off, not polled every cycle.
        # At most one retry per backoff_max_s (2 s here), plus slack; polled every cycle it would be 30+.
        assert owner.counters["lvl-1"].requests - dead0 <= (time.monotonic() - t0) / 2 + 3
        errors = [
            r for r in caplog.records if r.levelno >= logging.ERROR and getattr(r, "dev", "") == "lvl-1"
        ]
        assert len(errors) == 1, "a failing device logs once at ERROR, then stays quiet"
        assert all(owner.counters[d].consecutive_failures == 0 for d in healthy)
        sim["lvl-1"].inject("no_answer", False)
        await wait_until(lambda: owner.counters["lvl-1"].state == "ok", 40, "recovery")
        faults = await events(agent, "device.fault")
        assert [(e["dev"], e["detail"]["reason"]) for e in faults] == [("lvl-1", "timeout")]
        assert [e["dev"] for e in await events(agent, "device.recovered")] == ["lvl-1"]
        alerts = [m["alert"] for m in await said(agent) if "alert" in m]
        assert [(a["kind"], a["level"]) for a in alerts if a["dev"] == "lvl-1"] == [
            ("sensor_fault", "warning"),
            ("sensor_fault", "clear"),
        ]


async def test_board_message_is_reasserted_after_a_power_cut(sim_site: SiteFactory) -> None:
    sim, site = await sim_site()
    sign = sim["sign-1"]
    assert isinstance(sign, SimSign)
    agent = Agent(site)
    async with running(agent):
        sim.source.manual = 200.0
        ctl = agent.responses()[0]
        await wait_until(lambda: ctl.confirmed_text == WARN, 10, "warning shown and read back")
        sign.power_cycle()
        assert sign.text != WARN
        await wait_until(lambda: sign.text == WARN, 10, "warning shown again")

        async def reasserted() -> list[dict[str, Any]]:
            return [
                e["detail"]
                for e in await events(agent, "actuator.state")
                if e["dev"] == "sign-1" and e["detail"]["cause"] == "reassert"
            ]

        [detail] = await wait_until(reasserted, 10, "a reassert event")
        assert detail["confirmed"] is True and detail["text"] == WARN


# The override and a sensor fault during a flood are proven on a clock the test drives
# (test_actuation.py); the whole chain runs in real time in test_chain.py.


@pytest.mark.parametrize(
    ("dev", "fault", "reason"),
    [
        ("lvl-1", "out_of_range", "out_of_range"),
        ("lvl-1", "exception", "modbus_exception_3"),
        ("lvl-1", "corrupt", "timeout"),
        ("imm-1", "cable_break", "cable_break"),
    ],
)
async def test_faults_carry_their_reason_and_are_never_dry_or_flooded(
    sim_site: SiteFactory, dev: str, fault: str, reason: str
) -> None:
    sim, site = await sim_site()
    agent = Agent(site)
    async with running(agent):
        await wait_until(lambda: agent.owners["bus-1"].counters[dev].last_good_ms, 10, "first poll")
        sim[dev].inject(fault)

        async def fault_event() -> list[dict[str, Any]]:
            return [e for e in await events(agent, "device.fault") if e["dev"] == dev]

        [event] = await wait_until(fault_event, 10, f"{fault} reported")
        assert event["detail"]["reason"] == reason
        sim[dev].inject(fault, False)

        async def recovered() -> list[dict[str, Any]]:
            return [e for e in await events(agent, "device.recovered") if e["dev"] == dev]

        await wait_until(recovered, 40, "recovery")
        alerts = [m["alert"] for m in await said(agent) if "alert" in m and m["alert"]["dev"] == dev]
    assert [(a["kind"], a["level"]) for a in alerts] == [
        ("sensor_fault", "warning"),
        ("sensor_fault", "clear"),
    ]
    assert alerts[0]["reason"] == reason


async def test_a_frozen_value_is_a_stuck_fault(sim_site: SiteFactory, node_id: str) -> None:
    text = site_yaml(node=node_id).replace("    filter: {", "    filter: {stuck_after_s: 1, ", 1)
    sim, site = await sim_site(yaml_text=text)
    # A wet road with sensor noise: the raw value keeps changing until it freezes.
    sim.source.scenario = Scenario("wet", [(1.0, 50.0)], noise_mm=3.0)
    agent = Agent(site)
    async with running(agent):
        await wait_until(lambda: agent.owners["bus-1"].counters["lvl-1"].requests > 10, 10, "polling")

        async def faults() -> list[dict[str, Any]]:
            return await events(agent, "device.fault")

        assert await faults() == []
        sim["lvl-1"].inject("stuck")
        [event] = await wait_until(faults, 10, "stuck detected")
        assert event["dev"] == "lvl-1" and event["detail"]["reason"] == "stuck"


async def test_heartbeat_carries_counters_outbox_and_rss(sim_site: SiteFactory) -> None:
    _, site = await sim_site(overrides={"heartbeat_s": 0.3})
    agent = Agent(site)
    async with running(agent):
        [hb, *_] = await wait_until(lambda: events(agent, "heartbeat"), 10, "a heartbeat")
    d = hb["detail"]
    assert d["rss_bytes"] > 1_000_000
    assert {"depth", "bytes", "dropped_total"} <= set(d["outbox"])
    assert set(d["devices"]) == {"lvl-1", "imm-1", "sign-1", "gate-1"}
    assert d["devices"]["lvl-1"]["requests"] >= 1 and d["devices"]["lvl-1"]["state"] == "ok"


async def test_full_outbox_sheds_telemetry_and_says_so(sim_site: SiteFactory) -> None:
    sim, site = await sim_site(
        poll_s=0.05, telemetry_interval_s=0.2, extra_sensors=4, overrides={"outbox.max_bytes": 65536}
    )
    # A backlog from a long broker outage, just under the cap: the site's own
    # traffic (bus-bound at 9600 baud) then overflows it within seconds.
    path = site.resolve(site.config.outbox.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backlog = Outbox(path, max_bytes=65536)
    await backlog.open()
    try:
        while (await backlog.stats()).bytes < 60_000:
            filler = json.dumps({"readings": [], "pad": "x" * 1000}).encode()
            await backlog.put("telemetry", "floodgate/v1/x/telemetry", filler, PRIORITY_BULK, now_ms())
    finally:
        await backlog.close()
    agent = Agent(site)
    async with running(agent):
        sim.source.manual = 400.0  # alerts and actuator events too, which must never be shed
        [dropped, *_] = await wait_until(
            lambda: events(agent, "outbox.dropped"), 40, "an outbox.dropped event"
        )
        assert dropped["detail"]["telemetry"] >= 1
        kinds = [p.kind for p in await agent.outbox.peek(100_000)]
    assert "alert" in kinds, "alerts are kept when telemetry is shed"
    assert kinds.count("telemetry") < len(kinds)


async def test_a_reading_the_contract_refuses_is_left_out_and_the_agent_goes_on(
    sim_site: SiteFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A value out of its metric's range once stopped the whole agent (wire.build raised in its writer)."""
    _, site = await sim_site(overrides={"heartbeat_s": 0.3})
    agent = Agent(site)
    caplog.set_level(logging.DEBUG, logger="floodgate.edge.agent")
    async with running(agent):
        t = now_ms()
        for value in (99_999.0, 12.5, 77_777.0):  # rainfall_mm is 0..10000 by the contract
            agent.reading("rain-9", t, "rainfall_mm", value, "good")
        agent.flush_readings()
        agent.event("no-such-event", None, {"n": 1})  # an event type the contract does not know

        async def refused_in_a_heartbeat() -> list[dict[str, Any]]:
            return [
                h for h in await events(agent, "heartbeat") if h["detail"]["outbox"]["refused_total"] >= 2
            ]

        await wait_until(refused_in_a_heartbeat, 10, "a heartbeat counting the refused readings")
        messages = await said(agent)
    rain = [r for m in messages for r in m.get("readings", []) if r["dev"] == "rain-9"]
    assert [r["value"] for r in rain] == [12.5], "the good reading is sent, the two refused are not"
    assert not any(m.get("event", {}).get("type") == "no-such-event" for m in messages)
    seqs = sorted(m["seq"] for m in messages if m.get("boot") == agent.boot)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no seq is lost to a refused message"
    refusals = [r for r in caplog.records if "contract refuses" in r.getMessage()]
    levels = [(r.getMessage().split(":")[0], r.levelno) for r in refusals]
    assert levels == [
        ("not sent", logging.ERROR),  # the first out-of-range rainfall
        ("not sent", logging.DEBUG),  # the same refusal again: quietly
        ("not sent", logging.ERROR),  # the unknown event: a refusal of its own
    ], "each kind of refusal once at ERROR, then quietly"
