"""Fixtures: our own mosquitto, simulated sites on socat ptys and TCP, site configs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.agent import Agent
from edge.config.site import LoadedSite, load_site, named_files
from simulators.scenarios import Scenario
from simulators.site import SimSite
from tests.helpers import Mosquitto, NatsCluster

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "firmware-config" / "profiles"
KEY = "test-command-key-0123456789abcdef"
# The tests step the simulated water at once (sim.source.manual = 400.0), faster
# than water rises: their sites lift the filter's physical bound (tests/edge/test_rules.py tests it).
STEP_RISE = 100_000
EXAMPLE_SITE = REPO / "firmware-config" / "sites" / "example-kexiang-tunnel.yaml"


def with_its_files(config: Path, folder: Path) -> Path:
    """A copy of a shipped site config in ``folder``, with the files it names made up (as if provisioned)."""
    copy = folder / config.name
    copy.write_text(config.read_text(encoding="utf-8"), encoding="utf-8")
    for _, name, _ in named_files(load_site(copy, check_files=False).config):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{KEY}\n")
        path.chmod(0o600)
    return copy


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One private mosquitto for the whole run (never the system's 1883)."""
    m = Mosquitto(tmp_path_factory.mktemp("broker"))
    m.start()
    yield m
    m.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker for one test, with persistence, that the test may stop and restart."""
    m = Mosquitto(tmp_path, persistence=True)
    m.start()
    yield m
    m.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A 3-node NATS JetStream cluster (MQTT listener on each node) for one test, which may kill nodes."""
    c = NatsCluster(tmp_path / "nats")
    c.start()
    yield c
    c.stop()


@pytest.fixture(autouse=True)
def _quiet_pymodbus() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def site_yaml(
    bus: str = "rtu",
    *,
    node: str = "test-site-01",
    gate_min_warning_s: float = 1.0,
    gate_reopen_hold_s: float = 0.5,
    poll_s: float = 0.2,
    extra_sensors: int = 0,
    telemetry_interval_s: float = 0.5,
) -> str:
    """A small site: level + immersion + board + gate on one bus (RTU or TCP)."""
    bus_block = (
        "  - {id: bus-1, type: rtu, port: /dev/null, timeout_s: 0.2, retries: 1, backoff_max_s: 2}"
        if bus == "rtu"
        else "  - {id: bus-1, type: tcp, host: 127.0.0.1, port: 1, timeout_s: 0.3, backoff_max_s: 2}"
    )
    extra = "".join(
        f"""  - id: lvl-{i + 2}
    profile: generic-rs485-level
    bus: bus-1
    unit: {20 + i}
    poll_s: {poll_s}
    thresholds: {{warning: {{on: 150, clear: 120}}, danger: {{on: 270, clear: 240}}}}
    filter: {{max_rise_mm_s: {STEP_RISE}}}
"""
        for i in range(extra_sensors)
    )
    return f"""\
node: {node}
site: {{name: Test underpass, address: test, lat: 23.17, lon: 113.45}}
profiles_dir: {PROFILES}
buses:
{bus_block}
devices:
  - id: lvl-1
    profile: generic-rs485-level
    bus: bus-1
    unit: 1
    poll_s: {poll_s}
    thresholds:
      warning: {{on: 150, clear: 120}}
      danger: {{on: 270, clear: 240}}
    filter: {{max_rise_mm_s: {STEP_RISE}}}
  - id: imm-1
    profile: immersion-contact-ld
    bus: bus-1
    unit: 2
    poll_s: {poll_s}
    wet_level: warning
  - id: sign-1
    profile: led-board-vms
    bus: bus-1
    unit: 10
    poll_s: {poll_s}
  - id: gate-1
    profile: relay-gate-spm
    bus: bus-1
    unit: 11
    poll_s: {poll_s}
{extra}responses:
  - id: entrance
    sensors: [lvl-1, imm-1]
    sign: sign-1
    gate: gate-1
    messages: {{clear: "", warning: 前方积水 减速慢行, danger: 隧道积水 禁止通行, fault: 水位监测故障}}
    close_gate_at: danger
    gate_min_warning_s: {gate_min_warning_s}
    gate_reopen_hold_s: {gate_reopen_hold_s}
    gate_travel_s: 5
    override: {{device: gate-1, point: override}}
presets: {{road-closed: 隧道积水 禁止通行}}
broker: {{url: "mqtt://127.0.0.1:1", reconnect_max_s: 0.5}}
command_key: {KEY}
outbox: {{path: outbox.db}}
telemetry_interval_s: {telemetry_interval_s}
heartbeat_s: 3600
"""


SiteFactory = Callable[..., Awaitable[tuple[SimSite, LoadedSite]]]


def node_id_for(request: pytest.FixtureRequest) -> str:
    """A node id unique to the test, so tests sharing the broker never see each other."""
    return "t-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]


@pytest.fixture
def node_id(request: pytest.FixtureRequest) -> str:
    return node_id_for(request)


@pytest.fixture
async def sim_site(tmp_path: Path, node_id: str) -> AsyncIterator[SiteFactory]:
    """Start simulators for a site config and return (simulator, the agent's config)."""
    started: list[SimSite] = []

    async def make(
        yaml_text: str | None = None,
        broker_url: str = "mqtt://127.0.0.1:1",
        scenario: str | Scenario = "dry",
        overrides: dict[str, Any] | None = None,
        speed: float = 1.0,
        **kw: Any,
    ) -> tuple[SimSite, LoadedSite]:
        src = tmp_path / "site-src.yaml"
        src.write_text(yaml_text or site_yaml(node=node_id, **kw), encoding="utf-8")
        played = scenario if isinstance(scenario, Scenario) else Scenario.named(scenario, noise_mm=0.0)
        sim = SimSite(load_site(src), played, speed=speed, gate_travel_s=0.3)
        await sim.start(tmp_path)
        started.append(sim)
        out = sim.write_config(
            tmp_path / "site.yaml",
            {
                "broker.url": broker_url,
                "outbox.path": str(tmp_path / "outbox.db"),
                **(overrides or {}),
            },
        )
        return sim, load_site(out)

    yield make
    for sim in started:
        await sim.stop()


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    """Run an agent for the duration of a block; stop it cleanly after."""
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.ready.wait(), 10)
        yield agent
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=60)
        if not done:
            for t in asyncio.all_tasks():
                t.print_stack(file=sys.stderr)
            raise AssertionError("the agent did not stop within 60 s of being cancelled")
        with contextlib.suppress(asyncio.CancelledError):
            await task
