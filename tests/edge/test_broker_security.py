"""TLS, per-node credentials and the shipped ACL, with a real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from edge.agent import Agent
from tests.conftest import REPO, SiteFactory, running
from tests.helpers import Mosquitto, Recorder, wait_until

ACL = REPO / "firmware-config" / "broker" / "mosquitto-acl.conf"


def make_pki(d: Path) -> None:
    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ossl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
        "-days",
        "2",
        "-subj",
        "/CN=floodgate-test-ca",
    )
    ossl(
        "req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", "/CN=127.0.0.1"
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ossl(
        "x509",
        "-req",
        "-in",
        str(d / "server.csr"),
        "-CA",
        str(d / "ca.crt"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-out",
        str(d / "server.crt"),
        "-days",
        "2",
        "-extfile",
        str(d / "san.ext"),
    )


@pytest.fixture
def secure_broker(tmp_path: Path, node_id: str) -> Iterator[Mosquitto]:
    make_pki(tmp_path)
    passwd = tmp_path / "passwd"
    for i, (user, pw) in enumerate([(node_id, "node-secret"), ("collector", "collector-secret")]):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run(["mosquitto_passwd", *flags, str(passwd), user, pw], check=True, capture_output=True)
    passwd.chmod(0o600)
    m = Mosquitto(
        tmp_path,
        listener=[
            f"cafile {tmp_path / 'ca.crt'}",
            f"certfile {tmp_path / 'server.crt'}",
            f"keyfile {tmp_path / 'server.key'}",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {ACL}",
        ],
    )
    m.start()
    yield m
    m.stop()


def tls(tmp: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tmp / "ca.crt"))


async def test_agent_over_tls_with_its_own_credentials_and_acl(
    secure_broker: Mosquitto, sim_site: SiteFactory, node_id: str, tmp_path: Path
) -> None:
    (tmp_path / "broker-password").write_text("node-secret\n")
    _, site = await sim_site(
        broker_url=f"mqtts://127.0.0.1:{secure_broker.port}",
        overrides={
            "broker.username": node_id,
            "broker.password_file": str(tmp_path / "broker-password"),
            "broker.tls": {"ca_file": str(tmp_path / "ca.crt")},
        },
    )
    rec = await Recorder(
        secure_broker.port,
        node="+",
        client_id="collector",
        username="collector",
        password="collector-secret",
        tls_context=tls(tmp_path),
    ).start()
    try:
        async with running(Agent(site)):
            await rec.wait_for(
                lambda m: m.kind == "birth" and m.payload["node"] == node_id, 15, "birth over TLS"
            )
            await rec.wait_for(lambda m: m.kind == "state" and m.payload.get("online") is True, 10, "state")

        # The ACL: a node that writes another node's topic is ignored by the broker.
        def as_node() -> aiomqtt.Client:
            return aiomqtt.Client(
                "127.0.0.1",
                secure_broker.port,
                username=node_id,
                password="node-secret",
                tls_context=tls(tmp_path),
            )

        # Denied either way: mosquitto drops the message, or refuses it and closes the link.
        with contextlib.suppress(aiomqtt.MqttError):
            async with as_node() as c:
                await c.publish("floodgate/v1/other-node/alert", b'{"forged": true}', qos=1)
        async with as_node() as c:
            await c.publish(f"floodgate/v1/{node_id}/event", b'{"marker": true}', qos=1)
        await rec.wait_for(lambda m: m.payload.get("marker") is True, 10, "the node's own message")
        assert not [m for m in rec.messages if "other-node" in m.topic], "ACL let a node write for another"
    finally:
        await rec.stop()


async def test_a_node_reads_the_collectors_state(
    secure_broker: Mosquitto, node_id: str, tmp_path: Path
) -> None:
    """The ACL's one read rule for every node: the collector's retained state (wire contract)."""
    state = b'{"online": true, "boot": 1}'
    async with aiomqtt.Client(
        "127.0.0.1",
        secure_broker.port,
        username="collector",
        password="collector-secret",
        tls_context=tls(tmp_path),
    ) as collector:
        await collector.publish("floodgate/v1/_host/state", state, qos=1, retain=True)
    async with aiomqtt.Client(
        "127.0.0.1",
        secure_broker.port,
        username=node_id,
        password="node-secret",
        tls_context=tls(tmp_path),
    ) as node:
        await node.subscribe("floodgate/v1/_host/state", qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(node.messages))
        assert message.payload == state and message.retain


async def test_a_node_reads_only_its_own_confirmations(
    secure_broker: Mosquitto, node_id: str, tmp_path: Path
) -> None:
    """The collector's ``ack`` reports: only the node they are for may read them (wire contract)."""

    def client(user: str, password: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1", secure_broker.port, username=user, password=password, tls_context=tls(tmp_path)
        )

    async with client(node_id, "node-secret") as node:
        await node.subscribe("floodgate/v1/+/ack", qos=1)
        async with client("collector", "collector-secret") as collector:
            for whom in ("other-node", node_id):
                await collector.publish(f"floodgate/v1/{whom}/ack", whom.encode(), qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(node.messages))
        assert (str(message.topic), message.payload) == (f"floodgate/v1/{node_id}/ack", node_id.encode())


async def test_wrong_password_keeps_everything_in_the_outbox(
    secure_broker: Mosquitto,
    sim_site: SiteFactory,
    node_id: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim, site = await sim_site(
        broker_url=f"mqtts://127.0.0.1:{secure_broker.port}",
        overrides={
            "broker.username": node_id,
            "broker.password": "wrong",
            "broker.tls": {"ca_file": str(tmp_path / "ca.crt")},
        },
    )
    agent = Agent(site)
    async with running(agent):
        await wait_until(lambda: agent.uplink is not None and agent.uplink.last_error, 15, "a refused login")
        assert agent.uplink is not None and "authori" in (agent.uplink.last_error or "").lower()
        [said] = [r for r in caplog.records if r.name == "floodgate.edge.uplink" and r.levelname == "ERROR"]
        assert "the broker refused the login: not authorised" in said.getMessage()
        assert node_id in said.getMessage(), "names the user it tried"
        sim.source.manual = 400.0

        async def queued() -> bool:
            return any("alert" in p.kind for p in await agent.outbox.peek(1000))

        await wait_until(queued, 10, "the alert kept in the outbox")
        assert agent.uplink.sent == 0
