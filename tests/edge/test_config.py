"""Config validation: every problem named with file, line and key; shipped configs load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import load_profile, load_site
from floodgate.errors import ConfigError
from tests.conftest import PROFILES, REPO, site_yaml, with_its_files

SITES = sorted((REPO / "firmware-config" / "sites").glob("*.yaml"))


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_profile_loads(path: Path) -> None:
    assert load_profile(path).model == path.stem


@pytest.mark.parametrize("path", SITES, ids=lambda p: p.stem)
def test_every_shipped_site_config_loads(path: Path, tmp_path: Path) -> None:
    site = load_site(with_its_files(path, tmp_path))
    assert site.config.devices


def issues_for(tmp_path: Path, text: str) -> list[tuple[int | None, str, str]]:
    p = tmp_path / "site.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_site(p)
    assert all(i.file == str(p) for i in e.value.issues)
    return [(i.line, i.key, i.message) for i in e.value.issues]


def line_of(text: str, needle: str, nth: int = 1) -> int:
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return lines[nth - 1]


def test_unknown_key_names_line_and_suggests(tmp_path: Path) -> None:
    text = site_yaml().replace("    poll_s: 0.2\n    wet_level", "    pol_s: 0.2\n    wet_level")
    [(line, key, msg)] = issues_for(tmp_path, text)
    assert line == line_of(text, "pol_s")
    assert key == "devices[1].pol_s"
    assert "did you mean 'poll_s'" in msg


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    text = site_yaml().replace("lat: 23.17,", "lat: [23.17,")
    [(line, key, msg)] = issues_for(tmp_path, text)
    assert key == "(syntax)" and line is not None and "YAML" in msg


def test_cross_field_hysteresis(tmp_path: Path) -> None:
    text = site_yaml().replace("warning: {on: 150, clear: 120}", "warning: {on: 150, clear: 160}", 1)
    [(line, key, msg)] = issues_for(tmp_path, text)
    assert key == "devices[0].thresholds.warning.clear"
    assert line == line_of(text, "clear: 160")
    assert "below" in msg


def test_across_devices_every_problem_reported(tmp_path: Path) -> None:
    text = (
        site_yaml()
        .replace("unit: 2\n", "unit: 1\n")  # imm-1 now shares unit 1 with lvl-1
        .replace("profile: relay-gate-spm", "profile: no-such-gate")
        .replace("sign: sign-1", "sign: sign-9")
    )
    found = issues_for(tmp_path, text)
    keys = {k: (line, m) for line, k, m in found}
    assert "devices[1].unit" in keys and "already" in keys["devices[1].unit"][1]
    assert keys["devices[1].unit"][0] == line_of(text, "unit: 1", 2)
    assert "devices[3].profile" in keys and "no profile" in keys["devices[3].profile"][1]
    assert "responses[0].sign" in keys and "no device 'sign-9'" in keys["responses[0].sign"][1]


def test_one_port_claimed_twice(tmp_path: Path) -> None:
    text = site_yaml().replace(
        "  - {id: bus-1, type: rtu, port: /dev/null, timeout_s: 0.2, retries: 1, backoff_max_s: 2}",
        "  - {id: bus-1, type: rtu, port: /dev/ttyUSB0}\n  - {id: bus-2, type: rtu, port: /dev/ttyUSB0}",
    )
    found = issues_for(tmp_path, text)
    assert any(k == "buses[1].port" and "one owner per bus" in m for _, k, m in found)


def test_bad_profile_is_reported_with_its_own_file(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for p in PROFILES.glob("*.yaml"):
        (profiles / p.name).write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    bad = profiles / "generic-rs485-level.yaml"
    bad.write_text(bad.read_text(encoding="utf-8").replace("type: int16", "type: int17"), encoding="utf-8")
    text = site_yaml().replace(f"profiles_dir: {PROFILES}", f"profiles_dir: {profiles}")
    p = tmp_path / "site.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_site(p)
    [issue] = e.value.issues
    assert issue.file == str(bad) and issue.key == "points.level.type"


def test_check_config_cli_exit_code_and_output(tmp_path: Path) -> None:
    p = tmp_path / "site.yaml"
    p.write_text(site_yaml().replace("unit: 11", "unit: 300"), encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "floodgate.cli", "edge", "check-config", str(p)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 3
    assert f"{p}:{line_of(p.read_text(), 'unit: 300')}: devices[3].unit:" in r.stderr
    (tmp_path / "ok").mkdir()
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "floodgate.cli",
            "edge",
            "check-config",
            str(with_its_files(SITES[0], tmp_path / "ok")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and "ok" in ok.stdout
