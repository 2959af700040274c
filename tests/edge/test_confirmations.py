"""The edge against collectors that confirm nothing: none yet (slow, doubling resends) or an older one."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
from pathlib import Path

import aiomqtt
from sqlalchemy import select

from bench.rig import collector_cmd, collector_yaml
from cloud.db.schema import messages
from cloud.db.store import Store
from edge.agent import Agent
from edge.outbox import PRIORITY_URGENT, Outbox
from edge.uplink import ACKS_SETTING
from tests.conftest import SiteFactory, running
from tests.helpers import Mosquitto, Recorder, wait_until


async def host_state(broker: Mosquitto, body: dict[str, object]) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        await c.publish("floodgate/v1/_host/state", json.dumps(body).encode(), qos=1, retain=True)


async def test_no_collector_yet_resends_slowly_with_a_doubling_deadline(
    own_broker: Mosquitto, sim_site: SiteFactory, node_id: str
) -> None:
    _, site = await sim_site(
        broker_url=own_broker.url,
        telemetry_interval_s=0.5,
        overrides={"outbox.confirm_timeout_s": 1, "outbox.confirm_timeout_max_s": 4},
    )
    rec = await Recorder(own_broker.port, node=node_id, client_id=f"rec-{node_id}").start()
    agent = Agent(site)
    try:
        async with running(agent):
            first = await rec.wait_for(lambda m: m.kind == "birth", 10, "the birth")
            birth = first.payload["msg_id"]

            def copies() -> int:
                return sum(m.payload.get("msg_id") == birth for m in rec.messages)

            # Deadlines 1, 2, 4, 4 s after each PUBACK: the 4th copy about 7 s after the first.
            await wait_until(lambda: copies() >= 4, 20, "the birth sent again at a slowing cadence")
            health = await agent.health()
            assert health["outbox"]["awaiting_confirmation"] >= 1
            assert health["outbox"]["oldest_awaiting_s"] is not None
            assert health["uplink"]["collector_acks"] is True and health["uplink"]["resent"] >= 3
    finally:
        await rec.stop()
    times = [m for m in rec.messages if m.payload.get("msg_id") == birth]
    assert len(times) <= 6, "no tight loop"
    per_id = collections.Counter(m.payload.get("msg_id") for m in rec.messages if m.kind != "state")
    assert max(per_id.values()) <= 6


async def test_an_older_collector_online_makes_the_puback_enough_again(
    own_broker: Mosquitto, sim_site: SiteFactory, node_id: str
) -> None:
    """A collector whose online state lacks ``acks`` confirms nothing: forget at the PUBACK, as before."""
    _, site = await sim_site(broker_url=own_broker.url, telemetry_interval_s=0.2)
    agent = Agent(site)
    async with running(agent):

        async def awaiting() -> int:
            return (await agent.outbox.stats()).awaiting

        await wait_until(awaiting, 10, "messages awaiting a confirmation")
        await host_state(own_broker, {"online": True, "boot": 0, "ts": 1})  # an older collector
        await wait_until(lambda: agent.uplink is not None and not agent.uplink.collector_acks, 10, "legacy")
        assert await agent.outbox.setting(ACKS_SETTING) == 0
        assert await awaiting() == 0
        sent = agent.uplink.sent if agent.uplink else 0
        await wait_until(lambda: agent.uplink is not None and agent.uplink.sent > sent + 3, 10, "more sent")
        assert await awaiting() == 0  # forgotten at each PUBACK

        await host_state(own_broker, {"online": True, "boot": 0, "ts": 2, "acks": True})  # upgraded
        await wait_until(lambda: agent.uplink is not None and agent.uplink.collector_acks, 10, "acks again")
        await wait_until(awaiting, 10, "kept until confirmed again")
        assert await agent.outbox.setting(ACKS_SETTING) == 1


async def test_a_slow_collector_that_keeps_confirming_gets_no_deadline_resends(
    own_broker: Mosquitto, sim_site: SiteFactory, node_id: str
) -> None:
    """Deadlines run from the collector's last progress: one behind by more than a deadline but
    still confirming gets nothing again; once it confirms nothing for a deadline, resends start."""
    _, site = await sim_site(
        broker_url=own_broker.url,
        telemetry_interval_s=0.1,
        overrides={"outbox.confirm_timeout_s": 1, "outbox.confirm_timeout_max_s": 4},
    )
    rec = await Recorder(own_broker.port, node=node_id, client_id=f"rec-{node_id}").start()
    agent = Agent(site)
    lag = 25  # seqs the collector is behind: 2.5 s of telemetry, over twice the deadline
    confirming = True
    try:
        async with running(agent), aiomqtt.Client("127.0.0.1", own_broker.port) as c:
            await rec.wait_for(lambda m: m.kind == "birth", 10, "the birth")
            boot = next(m.payload["boot"] for m in rec.messages if m.kind == "birth")

            async def collector() -> None:
                while confirming:
                    seqs = [
                        m.payload["seq"]
                        for m in rec.messages
                        if m.payload.get("boot") == boot and "seq" in m.payload
                    ]
                    top = max(seqs, default=-1) - lag
                    if seqs and top >= min(seqs):
                        report = {
                            "v": 1,
                            "node": node_id,
                            "ts": 1,
                            "boots": [{"boot": boot, "ranges": [[min(seqs), top]]}],
                        }
                        await c.publish(f"floodgate/v1/{node_id}/ack", json.dumps(report).encode(), qos=1)
                    await asyncio.sleep(0.2)  # the collector's batching period, not a wait in the test

            task = asyncio.create_task(collector())
            try:
                assert agent.uplink is not None
                up = agent.uplink
                # Before its first confirmation it has shown nothing: deadlines run from the PUBACK.
                await wait_until(lambda: up.confirmed >= 1, 30, "the first confirmation")
                before = up.resent
                await wait_until(lambda: up.confirmed >= 60, 30, "the slow collector confirmed 60")
                # Each confirmed message waited over 2 s after its PUBACK, twice the deadline.
                assert up.resent == before, "a collector still confirming is slow, not losing"
                assert (await agent.outbox.stats()).awaiting >= lag // 2
            finally:
                confirming = False
                await task
            await wait_until(lambda: up.resent > 0, 10, "resends once the collector stopped confirming")
    finally:
        await rec.stop()


async def test_an_earlier_boots_last_message_goes_again_while_the_new_boot_is_confirmed(
    own_broker: Mosquitto, sim_site: SiteFactory, node_id: str
) -> None:
    """An alert the broker acknowledged just before a power cut and then lost: no report can
    show it as a gap (nothing of its boot came after it), so only its deadline sends it again,
    and a collector confirming the new boot every 0.2 s must not keep putting that off."""
    _, site = await sim_site(
        broker_url=own_broker.url,
        telemetry_interval_s=0.2,
        overrides={"outbox.confirm_timeout_s": 1, "outbox.confirm_timeout_max_s": 4},
    )
    lost = {"v": 1, "node": node_id, "msg_id": f"{node_id}-lost-alert", "boot": 1, "seq": 9, "ts": 1}
    ob = Outbox(site.resolve(site.config.outbox.path))
    await ob.open()
    try:
        assert await ob.next_boot() == 1
        await ob.put(
            "alert", f"floodgate/v1/{node_id}/alert", json.dumps(lost).encode(), PRIORITY_URGENT, 1, 1, 9
        )
        await ob.delivered([p.id for p in await ob.peek(1)], 1, 1, 1_000, 4_000)  # PUBACKed, never stored
    finally:
        await ob.close()
    rec = await Recorder(own_broker.port, node=node_id, client_id=f"rec-{node_id}").start()
    agent = Agent(site)
    confirming = True
    try:
        async with running(agent), aiomqtt.Client("127.0.0.1", own_broker.port) as c:
            birth = await rec.wait_for(lambda m: m.kind == "birth", 10, "the new boot's birth")
            boot = birth.payload["boot"]
            assert boot == 2

            async def collector() -> None:  # confirms everything of the new boot, has nothing of boot 1
                while confirming:
                    seqs = [
                        m.payload["seq"]
                        for m in rec.messages
                        if m.payload.get("boot") == boot and "seq" in m.payload
                    ]
                    if seqs:
                        report = {
                            "v": 1,
                            "node": node_id,
                            "ts": 1,
                            "boots": [{"boot": boot, "ranges": [[0, max(seqs)]]}],
                        }
                        await c.publish(f"floodgate/v1/{node_id}/ack", json.dumps(report).encode(), qos=1)
                    await asyncio.sleep(0.2)  # the collector's batching period, not a wait in the test

            task = asyncio.create_task(collector())
            try:
                await wait_until(
                    lambda: agent.uplink is not None and agent.uplink.confirmed >= 10, 30, "confirmations"
                )
                await rec.wait_for(
                    lambda m: m.payload.get("msg_id") == lost["msg_id"], 15, "boot 1's alert sent again"
                )
            finally:
                confirming = False
                await task
    finally:
        await rec.stop()


async def test_one_collector_killed_while_another_is_up_is_not_the_service_offline(
    own_broker: Mosquitto, sim_site: SiteFactory, node_id: str, tmp_path: Path
) -> None:
    """Each collector has its own state topic with its Will (wire contract): two collectors,
    one ``kill -9``: its Will says it is offline, the agent still sees the service online (with
    the one shared topic the Will said offline for all, and the agent held its resends back),
    and everything it sends is stored, what the dead one's session holds included."""
    db_url = f"sqlite:///{tmp_path / 'c.db'}"
    s = Store(db_url)
    await s.migrate()
    await s.close()
    names = [f"c{i}-{node_id}" for i in range(2)]
    procs: list[subprocess.Popen[bytes]] = []
    for name in names:
        cfg = tmp_path / f"{name}.yaml"
        broker = f"{{url: '{own_broker.url}', reconnect_max_s: 1}}\nshared_group: g{node_id}\n"
        cfg.write_text(collector_yaml(db_url, broker, name))
        procs.append(
            subprocess.Popen(collector_cmd(cfg), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        )
    states: dict[str, bool] = {}

    async def watch() -> None:
        async with aiomqtt.Client("127.0.0.1", own_broker.port) as c:
            await c.subscribe("floodgate/v1/_host/+/state", qos=1)
            async for m in c.messages:
                if isinstance(m.payload, bytes) and m.payload:
                    states[str(m.topic).split("/")[3]] = json.loads(m.payload)["online"]

    watcher = asyncio.create_task(watch())
    _, site = await sim_site(broker_url=own_broker.url, telemetry_interval_s=0.2)
    agent = Agent(site)
    try:
        async with running(agent):
            await wait_until(lambda: all(states.get(n) for n in names), 60, "both collectors online")
            up = agent.uplink
            assert up is not None
            await wait_until(lambda: up.collector_online is True and len(up._collectors) == 2, 20, "seen")
            os.kill(procs[0].pid, signal.SIGKILL)  # no goodbye: its Will
            await asyncio.to_thread(procs[0].wait)
            await wait_until(lambda: states.get(names[0]) is False, 30, "the killed one's Will")
            await wait_until(lambda: up._collectors.get(names[0]) is False, 30, "the agent hearing it")
            assert up.collector_online is True, "one collector gone is not the service offline"
            assert agent.seq is not None
            last = agent.seq.next_seq - 1

            async def all_stored() -> bool:
                store = Store(db_url)
                try:
                    async with store.read() as conn:
                        q = select(messages.c.seq).where(
                            messages.c.node == node_id, messages.c.boot == agent.boot
                        )
                        got = {int(r[0]) for r in await conn.execute(q)}
                finally:
                    await store.close()
                return set(range(last + 1)) <= got

            # What the dead one's session holds goes again to the live one (gaps, deadlines).
            await wait_until(all_stored, 90, "everything the agent sent before the kill stored")
            assert up.collector_online is True
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            await asyncio.to_thread(p.wait, 30)
