"""Installer commands: check-config --explain, status, outbox, provision, install-service."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.cli import main
from edge.outbox import PRIORITY_BULK, PRIORITY_URGENT, Outbox
from floodgate.ids import now_ms
from tests.conftest import SiteFactory, running, with_its_files
from tests.helpers import free_port, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware-config" / "sites" / "example-kexiang-tunnel.yaml"


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "floodgate.cli", "edge", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_explain_says_what_happens_at_each_level(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    example = with_its_files(EXAMPLE, tmp_path)
    assert main(["check-config", "--explain", str(example)]) == 0
    text = capsys.readouterr().out
    assert "warning at ≥ 150 mm (clears below 120 mm)" in text
    assert (
        "at danger   sign: “隧道积水 禁止通行”; gate: closes once the board has shown a warning for 30 s"
        in text
    )
    assert "never opened automatically while a sensor is faulted" in text
    assert "no contact wet, no depth at or above 30 mm) for 60 s" in text, "the reopening rule"
    assert main(["check-config", "--explain", "--json", str(example)]) == 0
    data = json.loads(capsys.readouterr().out)
    [resp] = data["responses"]
    # A closed gate stays closed below close_gate_at while water is still detected.
    assert resp["levels"]["warning"]["gate"] == (
        "stays open; a closed gate stays closed: "
        "never opened automatically while a sensor is faulted or detects water"
    )
    assert "opens once every sensor has been clear and dry for 60 s" in resp["levels"]["clear"]["gate"]
    assert {s["id"] for s in resp["sensors"]} == {"lvl-1", "lvl-2", "imm-1"}
    # lvl-1 forecasts (forecast.horizon_s: 300 in the example); lvl-2 does not.
    horizons = {s["id"]: s.get("forecast_horizon_s") for s in resp["sensors"]}
    assert horizons == {"lvl-1": 300, "lvl-2": None, "imm-1": None}
    assert text.count("forecasts a threshold the rise reaches within 300 s") == 1


async def test_status_reads_the_running_agent(sim_site: SiteFactory) -> None:
    port = free_port()
    sim, site = await sim_site(overrides={"status_port": port})
    async with running(Agent(site)) as agent:
        sim.source.manual = 200.0
        await wait_until(lambda: agent.last_alert is not None, 15, "a warning")
        got = await asyncio.to_thread(run_cli, "status", "--port", str(port), "--json")
        assert got.returncode == 0, got.stderr
        data = json.loads(got.stdout)
        assert data["node"] == site.config.node and data["last_alert"]["level"] == "warning"
        assert set(data["devices"]) == {"lvl-1", "imm-1", "sign-1", "gate-1"}
        table = await asyncio.to_thread(run_cli, "status", "--config", str(site.path))
        assert table.returncode == 0 and "broker  NOT connected" in table.stdout
        assert "last alert: " in table.stdout and "clear → warning" in table.stdout
    gone = await asyncio.to_thread(run_cli, "status", "--port", str(port))
    assert gone.returncode == 1 and "is 'floodgate edge run' running?" in gone.stderr


async def test_status_says_the_gate_is_about_to_close_and_when(sim_site: SiteFactory) -> None:
    """Danger, the board warns, the gate waits gate_min_warning_s: ``status`` says it closes, in how long."""
    port = free_port()
    sim, site = await sim_site(gate_min_warning_s=600.0, overrides={"status_port": port})
    async with running(Agent(site)) as agent:
        sim.source.manual = 320.0
        ctl = agent.responses()[0]
        await wait_until(lambda: ctl.closing_at is not None, 15, "the close announced")
        got = await asyncio.to_thread(run_cli, "status", "--port", str(port), "--json")
        assert got.returncode == 0, got.stderr
        [resp] = json.loads(got.stdout)["responses"].values()
        assert resp["gate"] == "open" and resp["gate_closes_at"] == ctl.closing_at
        table = await asyncio.to_thread(run_cli, "status", "--port", str(port))
        m = re.search(r"gate open \(closes in (\d+) s\)", table.stdout)
        assert m is not None and 540 <= int(m[1]) <= 600, table.stdout


async def test_outbox_inspect_export_and_purge(sim_site: SiteFactory, tmp_path: Path) -> None:
    _, site = await sim_site()
    box = Outbox(site.resolve(site.config.outbox.path))
    await box.open()
    try:
        for i in range(3):
            await box.put(
                "telemetry",
                "floodgate/v1/x/telemetry",
                json.dumps({"i": i}).encode(),
                PRIORITY_BULK,
                now_ms(),
            )
        await box.put("alert", "floodgate/v1/x/alert", b'{"a": 1}', PRIORITY_URGENT, now_ms())
        await box.put("event", "floodgate/v1/x/event", b'{"e": 1}', PRIORITY_URGENT, now_ms(), boot=1, seq=0)
        [event] = [p.id for p in await box.peek(10) if p.kind == "event"]
        await box.delivered([event], now_ms(), now_ms(), 60_000, 60_000)  # the broker has it
    finally:
        await box.close()
    cfg = str(site.path)
    got = await asyncio.to_thread(run_cli, "outbox", "--config", cfg, "--json")
    data = json.loads(got.stdout)
    assert data["depth"] == 4 and data["kinds"]["telemetry"]["messages"] == 3
    assert data["awaiting_confirmation"] == 1 and data["kinds"]["event"]["messages"] == 1
    out = tmp_path / "export.jsonl"
    got = await asyncio.to_thread(run_cli, "outbox", "export", "--config", cfg, "--out", str(out))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["alert", "event", "telemetry", "telemetry", "telemetry"], (
        "urgent first"
    )
    assert [x["awaiting_confirmation"] for x in lines] == [False, True, False, False, False]
    refused = await asyncio.to_thread(run_cli, "outbox", "purge", "--config", cfg)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    done = await asyncio.to_thread(run_cli, "outbox", "purge", "--config", cfg, "--yes")
    assert done.returncode == 0 and "purged 5" in done.stdout


def test_provision_writes_secrets_0600_and_keeps_comments(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    shutil.copy(EXAMPLE, site)
    for name in ("ca.crt", "box.crt", "box.key"):
        (tmp_path / name).write_text(f"--- {name} ---\n")
    got = run_cli(
        "provision",
        str(site),
        "--node",
        "hp-tunnel-07",
        "--broker",
        "mqtts://broker.example:8883",
        "--username",
        "hp-tunnel-07",
        "--password-stdin",
        "--command-key-stdin",
        "--ca",
        str(tmp_path / "ca.crt"),
        "--cert",
        str(tmp_path / "box.crt"),
        "--key",
        str(tmp_path / "box.key"),
        stdin="broker-secret\n" + "ab" * 32 + "\n",
    )
    assert got.returncode == 0, got.stderr
    text = site.read_text()
    assert "node: hp-tunnel-07" in text and "mqtts://broker.example:8883" in text
    assert "broker-secret" not in text and "abab" not in text, "secrets stay out of the config"
    assert "# empty: the board's own default text" in text, "comments are kept"
    secrets = tmp_path / "secrets"
    for name in ("broker-password", "command.key", "box.key"):
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o600, name
    assert (secrets / "broker-password").read_text().strip() == "broker-secret"
    assert run_cli("check-config", str(site)).returncode == 0

    before = site.read_text()
    bad = run_cli("provision", str(site), "--node", "Not A Node!")
    assert bad.returncode == 3 and "node" in bad.stderr
    assert site.read_text() == before, "an invalid result is never written"


def test_install_service_writes_a_unit(tmp_path: Path) -> None:
    example = with_its_files(EXAMPLE, tmp_path)  # --user: tests/edge/test_service.py
    got = run_cli("install-service", str(example), "--dest", str(tmp_path))
    assert got.returncode == 0, got.stderr
    unit = (tmp_path / "floodgate-edge-hp-kexiang-01.service").read_text()
    assert f"--config {example}" in unit and "Restart=always" in unit
    assert "systemctl enable --now floodgate-edge-hp-kexiang-01.service" in got.stdout


async def test_calibrate_writes_the_zero_offset_keeping_the_file(sim_site: SiteFactory) -> None:
    sim, site = await sim_site()
    sim.source.manual = 42.0  # a sensor that reads 42 mm on a dry road
    cfg = site.path
    cfg.write_text("# installer's notes stay\n" + cfg.read_text())
    got = await asyncio.to_thread(
        run_cli, "calibrate", str(cfg), "--device", "lvl-1", "--samples", "4", "--interval", "0.05", "--yes"
    )
    assert got.returncode == 0, got.stderr
    assert "median 40 mm" in got.stdout or "median 42 mm" in got.stdout  # the sensor's resolution: 1 cm
    text = cfg.read_text()
    assert text.startswith("# installer's notes stay") and "zero_offset_mm:" in text
    not_level = await asyncio.to_thread(run_cli, "calibrate", str(cfg), "--device", "gate-1", "--yes")
    assert not_level.returncode == 2 and "is a gate, not a level" in not_level.stderr


async def test_test_sign_and_test_gate_keep_the_safety_rules(sim_site: SiteFactory) -> None:
    sim, site = await sim_site()
    cfg = str(site.path)
    got = await asyncio.to_thread(run_cli, "test-sign", cfg, "--device", "sign-1", "--message", "测试 TEST")
    assert got.returncode == 0 and "(read back)" in got.stdout
    assert sim["sign-1"].get_point("text") == "测试 TEST"

    closed = await asyncio.to_thread(run_cli, "test-gate", cfg, "close", "--device", "gate-1")
    assert closed.returncode == 0, closed.stderr
    assert "closing in 1 s" in closed.stdout, "the board warns first, for gate_min_warning_s"
    assert sim["gate-1"].get_point("close_relay") == 1

    sim.source.manual = 300.0  # water: the agent would keep the gate shut
    refused = await asyncio.to_thread(run_cli, "test-gate", cfg, "open", "--device", "gate-1")
    assert refused.returncode == 1 and "reads 300 mm of water" in refused.stderr
    assert "unsafe: water level is danger" in refused.stderr and "imm-1 reads warning" in refused.stderr
    assert sim["gate-1"].get_point("close_relay") == 1
    no_reason = await asyncio.to_thread(
        run_cli, "test-gate", cfg, "open", "--device", "gate-1", "--force", "--yes"
    )
    assert no_reason.returncode == 2 and "--force needs --reason" in no_reason.stderr
    assert sim["gate-1"].get_point("close_relay") == 1
    forced = await asyncio.to_thread(
        run_cli, "test-gate", cfg, "open", "--device", "gate-1", "--force", "--yes", "--reason", "pumped dry"
    )
    assert forced.returncode == 0 and sim["gate-1"].get_point("close_relay") == 0
    # The forced open waits in the outbox as an event, with who, why and what it overruled.
    box = Outbox(site.resolve(site.config.outbox.path))
    await box.open()
    try:
        [audit] = [json.loads(p.payload)["event"] for p in await box.peek(100)]
    finally:
        await box.close()
    assert audit["type"] == "actuator.state" and audit["dev"] == "gate-1"
    d = audit["detail"]
    assert d["do"] == "open" and d["forced"] is True and d["reason"] == "pumped dry"
    assert d["role"] == "installer" and d["cause"].startswith("test-gate by ")
    assert d["against"].startswith("water level is danger")

    sim["gate-1"].override = True  # type: ignore[attr-defined]
    manual = await asyncio.to_thread(
        run_cli, "test-gate", cfg, "close", "--device", "gate-1", "--force", "--yes"
    )
    assert manual.returncode == 1 and "override key is on" in manual.stderr


async def test_the_actuator_commands_speak_json_for_scripts(sim_site: SiteFactory) -> None:
    _, site = await sim_site()
    cfg = str(site.path)
    got = await asyncio.to_thread(
        run_cli, "test-sign", cfg, "--device", "sign-1", "--message", "OK", "--json"
    )
    assert json.loads(got.stdout) == {"ok": True, "device": "sign-1", "shown": "OK"}
    got = await asyncio.to_thread(run_cli, "test-gate", cfg, "close", "--device", "gate-1", "--json")
    assert got.returncode == 0, got.stderr
    data = json.loads(got.stdout)
    assert data["relay"] == "closed" and "closing in" in got.stderr, "progress goes to stderr"


async def test_a_bus_the_agent_holds_is_busy_for_the_installer(sim_site: SiteFactory) -> None:
    _, site = await sim_site()
    port = site.config.buses[0].port  # type: ignore[union-attr]
    async with running(Agent(site)):
        got = await asyncio.to_thread(run_cli, "read", "--port", port, "--unit", "1", "--address", "0")
    assert got.returncode == 1
    assert got.stderr.startswith("error: ") and "is busy: stop the agent" in got.stderr
    assert len(got.stderr.strip().splitlines()) == 1, "one line"
    free = await asyncio.to_thread(run_cli, "read", "--port", port, "--unit", "1", "--address", "0")
    assert free.returncode == 0, "released when the agent stops"


def test_permission_errors_say_how_to_fix_them() -> None:
    from edge.commission.modbus import explain_open_error
    from floodgate.errors import LinkDown

    exc = LinkDown("/dev/ttyUSB0: Permission denied")
    assert "dialout" in explain_open_error("/dev/ttyUSB0", exc)
