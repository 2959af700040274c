"""Simulated slaves: real framing a standard master understands, and injected faults."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.bus.link import PymodbusLink
from edge.config.profile import load_profile
from edge.config.site import RtuBus, TcpBus
from floodgate.errors import ModbusException, NoResponse
from simulators.devices import DepthSource, SimGate, SimImmersion, SimLevel, SimSign
from simulators.pty import PtyPair
from simulators.scenarios import SCENARIOS, Scenario
from simulators.slave import SimBus, crc16, serve_rtu_fd, serve_tcp
from tests.conftest import PROFILES
from tests.helpers import wait_until


def profile(name: str):  # type: ignore[no-untyped-def]
    return load_profile(PROFILES / f"{name}.yaml")


class Rig:
    def __init__(
        self,
        path: str,
        source: DepthSource,
        level: SimLevel,
        imm: SimImmersion,
        sign: SimSign,
        gate: SimGate,
        bus: SimBus,
    ) -> None:
        self.path, self.source, self.level, self.imm = path, source, level, imm
        self.sign, self.gate, self.bus = sign, gate, bus


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    source = DepthSource(Scenario.named("dry", noise_mm=0.0))
    level = SimLevel(profile("generic-rs485-level"), 1, source)
    imm = SimImmersion(profile("immersion-contact-ld"), 2, source)
    sign = SimSign(profile("led-board-vms"), 10)
    gate = SimGate(profile("relay-gate-spm"), 11, travel_s=0.3)
    bus = SimBus([d.slave for d in (level, imm, sign, gate)])
    pair = await PtyPair(tmp_path).start()
    task = asyncio.create_task(serve_rtu_fd(bus, pair.slave_path))
    yield Rig(pair.master_path, source, level, imm, sign, gate, bus)
    task.cancel()
    await pair.stop()


@pytest.fixture
async def link(rig: Rig) -> AsyncIterator[PymodbusLink]:
    lk = PymodbusLink(RtuBus(id="b", port=rig.path, timeout_s=0.2, retries=0))
    await lk.connect()
    yield lk
    await lk.close()


def test_crc16_known_vector() -> None:
    # Read holding registers 0..1 of unit 1: the classic example frame 01 03 00 00 00 01 84 0A
    assert crc16(bytes.fromhex("010300000001")).to_bytes(2, "little") == bytes.fromhex("840A")


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll is installed by ./dev setup")
async def test_standard_master_mbpoll_reads_the_simulators(rig: Rig) -> None:
    rig.source.manual = 281.0

    def mbpoll(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["mbpoll", "-m", "rtu", "-b", "9600", "-P", "none", "-1", *args, rig.path],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    r = await asyncio.to_thread(mbpoll, "-a", "1", "-t", "4", "-0", "-r", "3", "-c", "2")
    values = dict(re.findall(r"\[(\d+)\]:\s+(-?\d+)", r.stdout))
    assert values == {"3": "1", "4": "281"}, r.stdout + r.stderr  # 1 decimal: 281 mm = 28.1 cm
    r = await asyncio.to_thread(mbpoll, "-a", "2", "-t", "3", "-r", "12", "-c", "1")  # 1-based, as printed
    assert re.search(r"\[12\]:\s+1\b", r.stdout), r.stdout
    r = await asyncio.to_thread(mbpoll, "-a", "1", "-t", "4", "-0", "-r", "50", "-c", "1")
    assert "Illegal data address" in r.stdout + r.stderr


async def test_faults_no_answer_exception_corrupt(rig: Rig, link: PymodbusLink) -> None:
    assert await link.read("holding", 3, 2, 1) == [1, 0]
    rig.level.inject("no_answer")
    with pytest.raises(NoResponse):
        await link.read("holding", 3, 2, 1)
    rig.level.inject("no_answer", False)
    rig.level.inject("exception", code=4)
    with pytest.raises(ModbusException) as e:
        await link.read("holding", 3, 2, 1)
    assert e.value.code == 4
    rig.level.inject("exception", False)
    rig.level.inject("corrupt")
    with pytest.raises(NoResponse):
        await link.read("holding", 3, 2, 1)
    rig.level.inject("corrupt", False)
    assert await link.read("holding", 3, 2, 1) == [1, 0]
    with pytest.raises(ModbusException) as e:
        await link.read("holding", 4, 5, 1)  # past the device's registers
    assert e.value.code == 2


async def test_stuck_out_of_range_and_cable_break(rig: Rig, link: PymodbusLink) -> None:
    rig.source.manual = 100.0
    assert (await link.read("holding", 4, 1, 1))[0] == 100
    rig.level.inject("stuck")
    rig.source.manual = 200.0
    assert (await link.read("holding", 4, 1, 1))[0] == 100
    rig.level.inject("stuck", False)
    rig.level.inject("out_of_range")
    raw = (await link.read("holding", 4, 1, 1))[0]
    assert raw > 3000  # beyond the profile's 300 cm
    assert (await link.read("input", 11, 1, 2))[0] & 1 == 1  # wet at 200 mm
    rig.imm.inject("cable_break")
    status = (await link.read("input", 11, 1, 2))[0]
    assert status & 0b10 and not status & 1  # a broken cable reads dry, with its fault bit set


async def test_board_forgets_its_message_on_power_cycle(rig: Rig, link: PymodbusLink) -> None:
    from edge.devices.codec import encode_raw

    words = encode_raw(rig.sign.profile.points["text"], "隧道积水 禁止通行")
    await link.write_registers(1000, words, 10)
    assert rig.sign.text == "隧道积水 禁止通行"
    assert rig.sign.shown[-1][1] == "隧道积水 禁止通行"
    rig.sign.power_cycle()
    assert rig.sign.text == "黄埔区 安全出行"


async def test_gate_travels_and_reports_limit_switches(rig: Rig, link: PymodbusLink) -> None:
    assert await link.read("discrete", 0, 3, 11) == [1, 0, 0]
    await link.write_coil(0, True, 11)
    assert await link.read("discrete", 0, 2, 11) == [0, 0]  # moving: neither limit
    await wait_until(lambda: rig.gate.state == "closed", 5, "gate travel")
    assert await link.read("discrete", 0, 2, 11) == [0, 1]
    rig.gate.override = True
    assert (await link.read("discrete", 2, 1, 11)) == [1]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_stays_physical_and_holds_its_end(name: str) -> None:
    s = Scenario.named(name, noise_mm=0.0)
    depths = [s.true_depth(t) for t in range(int(s.duration_s) + 1)]
    assert all(d >= 0 for d in depths)
    assert s.true_depth(s.duration_s + 100) == s.segments[-1][1]


def test_scenario_noise_and_spikes() -> None:
    s = Scenario.named("dry", noise_mm=2.0, spike_chance=0.5, seed=1)
    values = [s.depth_at(0) for _ in range(200)]
    assert any(v > 300 for v in values) and any(v < 10 for v in values)


async def test_even_parity_bus_over_socket_url() -> None:
    """A pty refuses 8E1 here; RTU frames over pyserial's socket:// test the 8E1 path instead."""
    level = SimLevel(
        profile("generic-rs485-level"),
        5,
        DepthSource(Scenario.named("dry", noise_mm=0.0), manual=42.0),
    )
    server = await serve_tcp(SimBus([level.slave]), framing="rtu")
    port = server.sockets[0].getsockname()[1]
    lk = PymodbusLink(RtuBus(id="e", port=f"socket://127.0.0.1:{port}", parity="E", timeout_s=0.5))
    try:
        await lk.connect()
        assert await lk.read("holding", 3, 2, 5) == [1, 42]
    finally:
        await lk.close()
        server.close()


async def test_modbus_tcp_several_units_one_gateway() -> None:
    source = DepthSource(Scenario.named("dry", noise_mm=0.0), manual=3000.0)
    radar = SimLevel(profile("radar-level-lx80"), 1, source, mount_height_mm=4500)
    wps = SimImmersion(profile("wps104-water-presence"), 2, source)
    server = await serve_tcp(SimBus([radar.slave, wps.slave]))
    port = server.sockets[0].getsockname()[1]
    lk = PymodbusLink(TcpBus(id="t", host="127.0.0.1", port=port))
    try:
        await lk.connect()
        assert await lk.read("holding", 1, 1, 1) == [1500]  # distance = 4500 - 3000
        assert await lk.read("input", 7003, 1, 2) == [1]
    finally:
        await lk.close()
        server.close()


async def test_sim_device_cli_prints_a_port_the_agent_can_read() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "floodgate.cli",
        "sim",
        "device",
        "--rtu",
        "--profile",
        "generic-rs485-level:3",
        "--profile",
        "relay-gate-spm:4",
        "--scenario",
        "recession",
        "--noise-mm",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        path = line.rsplit(" ", 1)[-1].strip()
        assert line.startswith("RTU slaves on ") and Path(path).exists()
        lk = PymodbusLink(RtuBus(id="cli", port=path, timeout_s=0.5))
        await lk.connect()
        try:
            assert (await lk.read("holding", 3, 1, 3)) == [1]
            assert (await lk.read("discrete", 0, 2, 4)) == [1, 0]
        finally:
            await lk.close()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert not Path(path).parent.exists(), "the simulator removes its temporary folder"


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll is installed by ./dev setup")
async def test_radar_f32_sim_with_a_status_fault_read_by_a_standard_master() -> None:
    """``floodgate sim device`` with ``--fault UNIT:no_echo``, read by mbpoll over the pty.

    mbpoll's float is low word first (CDAB) unless told -B: the profile's order.
    Unit 1 is healthy (dry road, 4.5 m below the default mount height), unit 2
    has no echo: status 1 and a distance of 0.000 m.
    """
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "floodgate.cli", "sim", "device", "--rtu", "--scenario", "dry"],
        *["--noise-mm", "0", "--profile", "radar-level-f32:1", "--profile", "radar-level-f32:2"],
        *["--fault", "2:no_echo"],
        stdout=asyncio.subprocess.PIPE,
    )

    def mbpoll(path: str, *args: str) -> str:
        r = subprocess.run(
            ["mbpoll", "-m", "rtu", "-b", "9600", "-P", "none", "-1", *args, path],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return r.stdout + r.stderr

    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        path = line.rsplit(" ", 1)[-1].strip()
        distance = r"\[1\]:\s+(-?[\d.]+)"
        ok = await asyncio.to_thread(mbpoll, path, "-a", "1", "-t", "3:float", "-r", "1", "-c", "1")
        assert re.search(distance, ok) and float(re.findall(distance, ok)[0]) == 4.5, ok
        assert re.search(
            r"\[5\]:\s+0\b", await asyncio.to_thread(mbpoll, path, "-a", "1", "-t", "3", "-r", "5")
        )
        bad = await asyncio.to_thread(mbpoll, path, "-a", "2", "-t", "3:float", "-r", "1", "-c", "1")
        assert float(re.findall(distance, bad)[0]) == 0.0, bad
        status = await asyncio.to_thread(mbpoll, path, "-a", "2", "-t", "3", "-r", "5")
        assert re.search(r"\[5\]:\s+1\b", status), status
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert not Path(path).parent.exists(), "the simulator leaves no folder behind"


async def test_a_pty_pair_removes_only_the_folder_it_made(tmp_path: Path) -> None:
    own = await PtyPair().start()
    made = Path(own.master_path).parent
    assert made.parent == Path(tempfile.gettempdir()) and Path(own.master_path).exists()
    await own.stop()
    assert not made.exists()
    given = await PtyPair(tmp_path).start()
    await given.stop()
    assert tmp_path.exists()
