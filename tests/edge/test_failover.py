"""Edges fail over (issue 13 §1): an agent with two brokers (``broker.urls``) moves to the second
when the first is killed, and every message arrives on one of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.agent import Agent
from edge.config.site import load_site
from floodgate.errors import ConfigError
from tests.conftest import SiteFactory, running
from tests.helpers import Mosquitto, Recorder, wait_until


async def test_the_agent_moves_to_the_next_broker_and_nothing_is_lost(
    sim_site: SiteFactory, node_id: str, tmp_path: Path
) -> None:
    first, second = Mosquitto(tmp_path), Mosquitto(tmp_path)  # each on a free port of its own
    for m in (first, second):
        m.start()
    recs = [
        await Recorder(m.port, node=node_id, client_id=f"rec-{i}-{node_id}", persistent=True).start()
        for i, m in enumerate((first, second))
    ]
    sim, site = await sim_site(
        broker_url=None,
        poll_s=0.1,
        telemetry_interval_s=0.2,
        # No collector confirms here: what the killed broker acknowledged but never passed on
        # is sent again after a second (what a collector's confirmations would not cover).
        overrides={"broker.urls": [first.url, second.url], "outbox.confirm_timeout_s": 1},
    )
    agent = Agent(site)
    try:
        async with running(agent):
            await recs[0].wait_for(lambda m: m.kind == "telemetry", what="telemetry on the first broker")
            assert agent.uplink is not None and agent.uplink.broker == first.url
            first.kill()  # kill -9 by its PID
            sim.source.manual = 400.0  # alerts, board and gate events during the switch
            uplink = agent.uplink
            await wait_until(lambda: uplink.connected and uplink.broker == second.url, 20, "on the second")
            await recs[1].wait_for(lambda m: m.kind == "alert", what="an alert on the second broker")
            assert agent.seq is not None
            last = agent.seq.next_seq - 1

            def everything() -> bool:
                seqs = {
                    m.payload["seq"]
                    for r in recs
                    for m in r.messages
                    if m.kind != "state" and m.payload.get("boot") == agent.boot
                }
                return set(range(last + 1)) <= seqs

            await wait_until(everything, 30, "every message on one broker or the other")
            assert uplink.broker == second.url, "it stays on the broker that works"
    finally:
        for r in recs:
            await r.stop()
        for m in (first, second):
            m.stop()
    assert recs[1].of("birth"), "a birth on the new broker"


def test_broker_urls_are_checked_with_file_line_and_key(tmp_path: Path) -> None:
    text = (
        Path(__file__).parents[2] / "firmware-config" / "sites" / "example-kexiang-tunnel.yaml"
    ).read_text()
    line = text.split("\nbroker:\n")[0].count("\n") + 3  # the line after "broker:"
    bad = tmp_path / "site.yaml"
    bad.write_text(
        text.replace("\nbroker:\n", "\nbroker:\n  urls: [mqtt://a:1883, 'http://b:1883', mqtt://a:1883]\n")
    )
    with pytest.raises(ConfigError) as err:
        load_site(bad, check_files=False)
    msg = str(err.value)
    assert f"site.yaml:{line}" in msg and "broker.urls[1]" in msg and "mqtt://host:1883" in msg, msg
    assert "names a broker twice" in msg, msg
