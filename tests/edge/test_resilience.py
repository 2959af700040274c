"""Nothing lost, nothing doubled: broker outages and an agent killed with SIGKILL."""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from edge.agent import Agent
from edge.outbox import Outbox
from edge.uplink import Uplink
from floodgate.broker import BrokerSettings
from floodgate.runner import is_closed_socket_race
from tests.conftest import SiteFactory, running
from tests.helpers import LinkCut, Mosquitto, Recorder, wait_until


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


async def test_a_cut_link_is_a_warning_not_an_unretrieved_future(
    own_broker: Mosquitto, sim_site: SiteFactory, node_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14 §3: a link cut (no reset: the keepalive notices) logs "broker link lost", never
    asyncio's "Future exception was never retrieved … Keep alive timeout", also when a connect
    made while the link is down gets its CONNACK only after it was given up; the agent comes back."""
    link = await LinkCut(own_broker.port).start()
    _, site = await sim_site(
        broker_url=link.url, poll_s=0.1, telemetry_interval_s=0.2, overrides={"broker.keepalive_s": 5}
    )
    caplog.set_level(logging.WARNING)
    loop = asyncio.get_running_loop()
    before = {id(c) for c in gc.get_objects() if isinstance(c, aiomqtt.Client)}  # other tests' clients
    unhandled: list[dict[str, object]] = []  # what asyncio would log as unhandled
    loop.set_exception_handler(lambda _, context: is_closed_socket_race(context) or unhandled.append(context))
    agent = Agent(site)

    def up() -> bool:
        return agent.uplink is not None and agent.uplink.subscribed

    def down() -> bool:
        return agent.uplink is not None and not agent.uplink.connected

    def connect_given_up() -> bool:  # a connect made while cut, its CONNACK not there in time
        return agent.uplink is not None and "timed out" in str(agent.uplink.last_error)

    try:
        async with running(agent):
            for _ in range(1):
                await wait_until(up, 30, "agent up")
                link.cut()
                await wait_until(down, 30, "the cut noticed")
                await wait_until(connect_given_up, 30, "a connect given up while cut")
                link.heal()
                await wait_until(up, 30, "the agent back")
            # The connects given up meanwhile have had their CONNACK (held while cut) and
            # been let go by the broker for the agent's new session.
            await asyncio.sleep(0)
            gc.collect()
            # asyncio logs "Future exception was never retrieved" when such a future is
            # collected, which may be long after: whether it will is asyncio's mark on it.
            never_retrieved = [
                f
                for c in gc.get_objects()
                if isinstance(c, aiomqtt.Client) and id(c) not in before
                for f in (c._disconnected, c._connected)
                if f.done() and not f.cancelled() and getattr(f, "_log_traceback", False)
            ]
    finally:
        loop.set_exception_handler(None)
        await link.stop()
    texts = [r.getMessage() for r in caplog.records]
    assert never_retrieved == []
    assert unhandled == []
    assert not [t for t in texts if "never retrieved" in t], texts
    assert sum("broker link lost" in t for t in texts) >= 1, texts


async def test_a_link_dropping_while_the_uplink_leaves_it_leaves_no_unretrieved_error(
    own_broker: Mosquitto, tmp_path: Path, node_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14 §3, the race behind "Future exception was never retrieved … Keep alive timeout"
    after a cut: the uplink leaves a connection for another reason (here its birth hook fails,
    as a publish timing out on the cut link does) just as the keepalive gives up on it. Nobody
    iterates the messages any more, so aiomqtt's error of the dropped link was never read."""
    link = await LinkCut(own_broker.port).start()
    outbox = Outbox(tmp_path / "outbox.db")
    await outbox.open()
    made: list[aiomqtt.Client] = []
    unhandled: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: is_closed_socket_race(context) or unhandled.append(context))

    async def on_connect() -> None:
        if len(made) == 1:  # the first connection: cut, and the keepalive gives up on it
            link.cut()
            await wait_until(made[0]._disconnected.done, 20, "the keepalive giving up")
            raise aiomqtt.MqttError("the birth's publish timed out on the cut link")

    async def on_command(_: bytes) -> None:
        return None

    settings = BrokerSettings(url=link.url, keepalive_s=1, reconnect_max_s=0.5)
    uplink = Uplink(settings, node_id, 1, outbox, on_connect=on_connect, on_command=on_command)
    make = uplink._client

    def recorded() -> aiomqtt.Client:
        made.append(make())
        return made[-1]

    uplink._client = recorded  # type: ignore[method-assign]  # records the clients it makes, as made
    task = asyncio.create_task(uplink.run())
    caplog.set_level(logging.WARNING)
    try:
        await wait_until(lambda: len(made) >= 2, 30, "the uplink connecting again")
        link.heal()
        await wait_until(lambda: uplink.subscribed, 30, "the uplink back")
        first = made[0]._disconnected
        assert first.done() and not first.cancelled()
        # asyncio's mark: "never retrieved" is logged when the future is collected with it.
        never_retrieved = getattr(first, "_log_traceback", False)
        assert isinstance(first.exception(), aiomqtt.MqttError)  # the dropped link's error
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        loop.set_exception_handler(None)
        await link.stop()
        await outbox.close()
    assert not never_retrieved, "the dropped link's error was left for asyncio to log"
    assert any("broker link lost" in r.getMessage() for r in caplog.records)
    assert unhandled == []
