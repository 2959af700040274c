"""scan, read, watch and write against the simulators, over a socat pty (RTU) and TCP."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid

import pytest

from simulators.devices import DepthSource, SimImmersion, SimLevel
from simulators.scenarios import Scenario
from simulators.slave import SimBus, serve_tcp
from tests.edge.test_commission import run_cli
from tests.helpers import wait_until
from tests.simulators.test_simulators import Rig, profile, rig  # noqa: F401 - the fixture


async def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, *args, stdin=stdin)


async def test_scan_finds_the_devices_on_an_rtu_bus_and_names_their_profiles(rig: Rig) -> None:  # noqa: F811
    got = await cli("scan", "--port", rig.path, "--ids", "1-12", "--json")
    assert got.returncode == 0, got.stderr
    found = {f["unit"]: f for f in json.loads(got.stdout)}
    assert set(found) == {1, 2, 10, 11}
    assert "generic-rs485-level" in found[1]["matches"]
    assert "immersion-contact-ld" in found[2]["matches"]
    assert "led-board-vms" in found[10]["matches"]
    assert "relay-gate-spm" in found[11]["matches"]
    assert found[1]["baud"] == 9600 and found[1]["parity"] == "N"
    table = await cli("scan", "--port", rig.path, "--ids", "1-3")
    assert "generic-rs485-level" in table.stdout and table.stdout.splitlines()[0].startswith("unit")


async def test_scan_over_tcp_and_when_nothing_answers(rig: Rig) -> None:  # noqa: F811
    source = DepthSource(Scenario.named("dry", noise_mm=0.0), manual=3000.0)
    radar = SimLevel(profile("radar-level-lx80"), 1, source, mount_height_mm=4500)
    wps = SimImmersion(profile("wps104-water-presence"), 2, source)
    server = await serve_tcp(SimBus([radar.slave, wps.slave]))
    port = server.sockets[0].getsockname()[1]
    try:
        got = await cli("scan", "--port", f"tcp://127.0.0.1:{port}", "--ids", "1-4", "--json")
        found = {f["unit"]: f for f in json.loads(got.stdout)}
        assert set(found) == {1, 2} and "radar-level-lx80" in found[1]["matches"]
    finally:
        server.close()
    for d in (rig.level, rig.imm, rig.sign, rig.gate):
        d.inject("no_answer")
    none = await cli("scan", "--port", rig.path, "--ids", "1-3", "--baud", "9600,19200")
    assert none.returncode == 1
    assert "no device answered" in none.stderr and "9600, 19200 baud" in none.stderr
    missing = await cli("scan", "--port", f"/tmp/no-such-port-{uuid.uuid4().hex[:6]}")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    bad = await cli("scan", "--port", rig.path, "--ids", "0-300")
    assert bad.returncode == 2 and "1 to 247" in bad.stderr


async def test_read_through_a_profile_and_raw_and_write_with_read_back(rig: Rig) -> None:  # noqa: F811
    rig.source.manual = 123.0
    got = await cli("read", "--port", rig.path, "--unit", "1", "--profile", "generic-rs485-level", "--json")
    assert got.returncode == 0, got.stderr
    values = json.loads(got.stdout)
    assert values["level"]["unit"] == "cm" and values["decimals"]["value"] >= 0
    raw = await cli("read", "--port", rig.path, "--unit", "1", "--address", "3", "--count", "2", "--json")
    assert set(json.loads(raw.stdout)) == {"holding[3]", "holding[4]"}
    silent = await cli("read", "--port", rig.path, "--unit", "9", "--address", "0")
    assert silent.returncode == 1 and "did not answer" in silent.stderr
    refused = await cli("write", "--port", rig.path, "--unit", "1", "--address", "3", "--value", "2")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    wrote = await cli("write", "--port", rig.path, "--unit", "1", "--address", "3", "--value", "2", "--yes")
    assert wrote.returncode == 0 and "= 2 (read back)" in wrote.stdout
    assert rig.level.get_point("decimals") == 2


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by ./dev test")
async def test_watch_in_a_real_terminal(rig: Rig) -> None:  # noqa: F811
    session = f"fg-watch-{uuid.uuid4().hex[:6]}"
    cmd = (
        f"{sys.executable} -m floodgate.cli edge watch --port {rig.path} --unit 1 "
        "--profile generic-rs485-level --interval 0.2"
    )
    rig.source.manual = 50.0
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "20", cmd], check=True)

    def screen() -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=False
        ).stdout

    try:
        await wait_until(lambda: "level" in screen() and "unit 1 on" in screen(), 15, "the live table")
        first = screen()
        rig.source.manual = 1880.0  # deeper water: the level row changes in place
        await wait_until(lambda: screen() != first and "188" in screen(), 15, "the table to refresh")
        assert screen().count("unit 1 on") == 1, "redrawn, not scrolled"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)


async def test_set_id_moves_a_device_and_checks_it(rig: Rig) -> None:  # noqa: F811
    base = ["--port", rig.path, "--profile", "generic-rs485-level"]
    taken = await cli("set-id", *base, "--unit", "1", "--new-id", "2", "--yes")
    assert taken.returncode == 2 and "already answers at 2" in taken.stderr
    asked = await cli("set-id", *base, "--unit", "1", "--new-id", "7")
    assert asked.returncode == 2 and "--yes" in asked.stderr
    moved = await cli("set-id", *base, "--unit", "1", "--new-id", "7", "--yes")
    assert moved.returncode == 0, moved.stderr
    assert rig.level.unit == 7
    found = {
        f["unit"]
        for f in json.loads((await cli("scan", "--port", rig.path, "--ids", "1-8", "--json")).stdout)
    }
    assert found == {2, 7}
    # The board needs its save register written too (its profile says so).
    board = ["--port", rig.path, "--profile", "led-board-vms", "--unit", "10"]
    assert (await cli("set-id", *board, "--new-id", "12", "--yes")).returncode == 0
    assert rig.sign.unit == 12
    no_reg = await cli(
        "set-id", "--port", rig.path, "--profile", "relay-gate-spm", "--unit", "11", "--new-id", "13", "--yes"
    )
    assert no_reg.returncode == 2 and "DIP switches" in no_reg.stderr


async def test_set_baud_writes_the_code_and_checks_it_answers(rig: Rig) -> None:  # noqa: F811
    """Over a pty the baud cannot really differ: this checks the code written and the answer after."""
    args = ["--port", rig.path, "--profile", "generic-rs485-level", "--unit", "1"]
    bad = await cli("set-baud", *args, "--new-baud", "300", "--yes")
    assert bad.returncode == 2 and "19200" in bad.stderr
    ok = await cli("set-baud", *args, "--new-baud", "19200", "--yes")
    assert ok.returncode == 0, ok.stderr
    assert rig.level.slave.regs.holding[1] == 4  # the profile's code for 19200


async def test_scan_auto_tries_every_setting_the_port_can_take(rig: Rig) -> None:  # noqa: F811
    """Here a pty refuses even parity; auto goes on with the settings it can open."""
    got = await cli(
        "scan", "--port", rig.path, "--ids", "1-2", "--baud", "9600", "--parity", "auto", "--json"
    )
    assert got.returncode == 0, got.stderr
    assert {f["unit"] for f in json.loads(got.stdout)} == {1, 2}
