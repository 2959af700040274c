"""Nothing lost, nothing doubled: broker outages and an agent killed with SIGKILL."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from edge.agent import Agent
from tests.conftest import SiteFactory, running
from tests.helpers import Mosquitto, Recorder, wait_until


def envelopes(rec: Recorder, boot: int | None = None) -> list[dict[str, object]]:
    out = [m.payload for m in rec.messages if m.kind != "state"]
    return [p for p in out if boot is None or p["boot"] == boot]


def doubled_on_one_connection(rec: Recorder) -> set[str]:
    """msg_ids the recorder got twice over the same connection.

    A copy on one connection and another after the recorder reconnected is QoS 1
    redelivery across the outage (the broker's session or the agent's resend of an
    unacknowledged message): allowed. Twice within one connection is a duplicate.
    """
    seen: dict[tuple[str, int], int] = collections.Counter(
        (str(m.payload["msg_id"]), m.connection) for m in rec.messages if m.kind != "state"
    )
    return {msg_id for (msg_id, _), n in seen.items() if n > 1}


async def test_broker_outage_then_restart_every_message_arrives_once(
    own_broker: Mosquitto, sim_site: SiteFactory, node_id: str
) -> None:
    sim, site = await sim_site(broker_url=own_broker.url, poll_s=0.1, telemetry_interval_s=0.2)
    rec = await Recorder(own_broker.port, node=node_id, client_id=f"rec-{node_id}", persistent=True).start()
    agent = Agent(site)
    try:
        async with running(agent):
            await rec.wait_for(lambda m: m.kind == "telemetry", what="telemetry before the outage")
            own_broker.stop()
            sim.source.manual = 400.0  # alerts, board and gate events happen while the broker is down

            async def backlog() -> bool:
                return (await agent.outbox.stats()).depth >= 15

            await wait_until(backlog, 20, "a backlog in the outbox")
            assert not agent.uplink or not agent.uplink.connected
            own_broker.start()

            async def drained() -> bool:
                return (await agent.outbox.stats()).depth == 0

            await wait_until(drained, 30, "outbox drained after the broker came back")
            assert agent.seq is not None
            last = agent.seq.next_seq - 1

            def all_arrived() -> bool:
                seqs = {p["seq"] for p in envelopes(rec, agent.boot)}
                return set(range(last + 1)) <= seqs

            await wait_until(all_arrived, 20, "every stored message at the recorder")
    finally:
        await rec.stop()
    assert rec.connections >= 2
    assert doubled_on_one_connection(rec) == set(), "each msg_id once"
    kinds = collections.Counter(m.kind for m in rec.messages)
    assert kinds["alert"] >= 1 and kinds["birth"] >= 2  # a birth after every connect


def outbox_rows(db: Path) -> list[dict[str, object]]:
    """The messages the broker has not acknowledged (not those awaiting the collector's confirmation)."""
    con = sqlite3.connect(db)
    try:
        return [json.loads(r[0]) for r in con.execute("SELECT payload FROM outbox WHERE awaiting = 0")]
    finally:
        con.close()


async def test_agent_killed_with_sigkill_loses_and_doubles_nothing(
    own_broker: Mosquitto, sim_site: SiteFactory, node_id: str, tmp_path: Path
) -> None:
    """Killed while it streams, with a backlog that the broker never saw."""
    broker = own_broker
    sim, site = await sim_site(broker_url=broker.url, poll_s=0.05, telemetry_interval_s=0.1, extra_sensors=2)
    rec = await Recorder(broker.port, node=node_id, client_id=f"rec-{node_id}", persistent=True).start()
    db = site.resolve(site.config.outbox.path)
    cmd = [sys.executable, "-m", "floodgate.cli", "edge", "run", "--config", str(site.path)]
    log = (tmp_path / "agent.log").open("w")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))
        await rec.wait_for(lambda m: m.kind == "telemetry" and m.payload["seq"] >= 20, 20, "streaming")
        broker.stop()
        sim.source.manual = 400.0
        await wait_until(lambda: len(outbox_rows(db)) >= 20, 20, "a backlog, alerts included")
        os.kill(procs[0].pid, signal.SIGKILL)
        await asyncio.to_thread(procs[0].wait)
        pending = outbox_rows(db)
        pending_ids = {p["msg_id"] for p in pending}
        assert any("alert" in p for p in pending)
        broker.start()

        procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))
        await rec.wait_for(lambda m: m.kind == "birth" and m.payload["boot"] == 2, 20, "restart")

        def delivered() -> bool:
            got = {p["msg_id"] for p in envelopes(rec)}
            return pending_ids <= got

        await wait_until(delivered, 20, "the unacknowledged messages after the restart")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                await asyncio.to_thread(p.wait)
        await rec.stop()
        log.close()
    boot1 = envelopes(rec, 1)
    seqs = sorted({int(str(p["seq"])) for p in boot1})
    assert seqs == list(range(seqs[-1] + 1)), "no seq gap in the killed boot"
    assert max(int(str(p["seq"])) for p in pending) <= seqs[-1] if pending else True
    assert rec.connections >= 2
    assert doubled_on_one_connection(rec) == set(), "nothing doubled beyond redelivery"


async def test_will_marks_the_node_offline_when_the_agent_dies(
    broker: Mosquitto, sim_site: SiteFactory, node_id: str, tmp_path: Path
) -> None:
    _, site = await sim_site(broker_url=broker.url)
    rec = await Recorder(broker.port, node=node_id, client_id=f"rec-{node_id}").start()
    cmd = [sys.executable, "-m", "floodgate.cli", "edge", "run", "--config", str(site.path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        online = await rec.wait_for(
            lambda m: m.kind == "state" and m.payload.get("online") is True, 20, "online state"
        )
        os.kill(proc.pid, signal.SIGKILL)
        offline = await rec.wait_for(
            lambda m: m.kind == "state" and m.payload.get("online") is False, 20, "the Will"
        )
        assert offline.payload == {"online": False, "boot": online.payload["boot"]}
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait)
        await rec.stop()
    # The Will is retained: a collector that connects later still learns the node is offline.
    late = await Recorder(broker.port, node=node_id, client_id=f"late-{node_id}").start()
    try:
        await late.wait_for(
            lambda m: m.kind == "state" and m.payload.get("online") is False, 10, "retained offline state"
        )
    finally:
        await late.stop()
