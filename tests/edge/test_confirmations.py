"""The edge against collectors that confirm nothing: none yet (slow, doubling resends) or an older one."""

from __future__ import annotations

import collections
import json

import aiomqtt

from edge.agent import Agent
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
