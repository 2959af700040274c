"""Where profiles are found: shipped, profiles_dir, FLOODGATE_PROFILES, --profiles, --profile PATH."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.config import load_site
from edge.config.search import ENV, ProfilePath, shipped_profiles
from floodgate.errors import ConfigError
from simulators.devices import DepthSource, SimLevel
from simulators.scenarios import Scenario
from simulators.slave import SimBus, serve_tcp
from tests.conftest import PROFILES, site_yaml
from tests.simulators.test_simulators import profile

GENERIC = (PROFILES / "generic-rs485-level.yaml").read_text(encoding="utf-8")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != ENV}
    return subprocess.run(
        [sys.executable, "-m", "floodgate.cli", "edge", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**environ, **(env or {})},
    )


def own_model(folder: Path, model: str, *, broken: bool = False) -> Path:
    """A copy of the generic level profile under another model name (or broken: an unknown type)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = GENERIC.replace("model: generic-rs485-level", f"model: {model}")
    if broken:
        text = text.replace("type: int16", "type: int17")
    path = folder / f"{model}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def site_using(tmp_path: Path, model: str, profiles_dir: str | None) -> Path:
    text = site_yaml().replace("profile: generic-rs485-level", f"profile: {model}", 1)
    line = f"profiles_dir: {PROFILES}\n"
    text = text.replace(line, f"profiles_dir: {profiles_dir}\n" if profiles_dir else "")
    p = tmp_path / "site.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_the_shipped_folder_is_the_source_trees_profiles_here() -> None:
    assert shipped_profiles() == PROFILES
    assert ProfilePath.of().dirs == (PROFILES,)


def test_a_sites_profiles_dir_adds_to_the_shipped_ones_and_overrides_by_name(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own_model(own, "tunnel-level-x1")
    (own / "generic-rs485-level.yaml").write_text(
        GENERIC.replace("address: 0x0003", "address: 0x0005"), encoding="utf-8"
    )
    site = load_site(site_using(tmp_path, "tunnel-level-x1", "own"), ())
    # its own model, and the shipped ones it does not override, are found
    assert site.profiles["tunnel-level-x1"].kind == "level"
    assert site.profiles["relay-gate-spm"].model == "relay-gate-spm"
    text = site_yaml().replace(f"profiles_dir: {PROFILES}", "profiles_dir: own")
    (tmp_path / "two.yaml").write_text(text, encoding="utf-8")
    shipped = load_site(site_using(tmp_path, "generic-rs485-level", None)).profiles["generic-rs485-level"]
    over = load_site(tmp_path / "two.yaml").profiles["generic-rs485-level"]
    assert over.points["decimals"].address == 5 != shipped.points["decimals"].address


def test_no_profiles_dir_still_finds_the_shipped_profiles(tmp_path: Path) -> None:
    site = load_site(site_using(tmp_path, "generic-rs485-level", None))
    assert set(site.profiles) == {
        "generic-rs485-level",
        "immersion-contact-ld",
        "led-board-vms",
        "relay-gate-spm",
    }


def test_a_missing_profiles_dir_or_profile_is_reported_with_line_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_site(site_using(tmp_path, "generic-rs485-levle", "nowhere"))
    by_key = {i.key: i for i in e.value.issues}
    assert by_key["profiles_dir"].line == 3 and "no folder" in by_key["profiles_dir"].message
    missing = by_key["devices[0].profile"]
    assert "did you mean 'generic-rs485-level'?" in missing.message and str(PROFILES) in missing.message


def test_later_folders_win_env_then_command_line(tmp_path: Path) -> None:
    site, env_dir, cli_dir = tmp_path / "site", tmp_path / "env", tmp_path / "cli"
    for folder in (site, env_dir, cli_dir):
        own_model(folder, "tunnel-level-x1")
    search = ProfilePath.of([site, env_dir, cli_dir])
    assert search.find("tunnel-level-x1") == cli_dir / "tunnel-level-x1.yaml"
    assert ProfilePath.of([site, env_dir]).find("tunnel-level-x1") == env_dir / "tunnel-level-x1.yaml"
    assert search.find("relay-gate-spm") == PROFILES / "relay-gate-spm.yaml"
    assert list(search.files()) == sorted({*(p.stem for p in PROFILES.glob("*.yaml")), "tunnel-level-x1"})


def test_check_config_finds_profiles_by_option_and_by_environment(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own_model(own, "tunnel-level-x1")
    cfg = str(site_using(tmp_path, "tunnel-level-x1", None))
    alone = cli("check-config", cfg)
    assert alone.returncode == 3 and "no profile 'tunnel-level-x1'" in alone.stderr
    assert "site.yaml:7: devices[0].profile" in alone.stderr
    assert cli("check-config", cfg, "--profiles", str(own)).returncode == 0
    assert cli("check-config", cfg, env={ENV: f"/nonexistent-x{os.pathsep}{own}"}).returncode == 2
    by_env = cli("check-config", cfg, env={ENV: str(own)})
    assert by_env.returncode == 0, by_env.stderr
    gone = cli("check-config", cfg, "--profiles", str(tmp_path / "nope"))
    assert (
        gone.returncode == 2 and f"--profiles names {tmp_path / 'nope'}, which is not a folder" in gone.stderr
    )


def test_a_site_that_uses_a_broken_profile_stops_with_its_file_line_and_key(tmp_path: Path) -> None:
    bad = own_model(tmp_path / "own", "tunnel-level-x1", broken=True)
    got = cli("check-config", str(site_using(tmp_path, "tunnel-level-x1", "own")))
    assert got.returncode == 3
    assert f"{bad}:" in got.stderr and "points.level.type" in got.stderr


def test_a_broken_profile_the_site_does_not_use_is_ignored(tmp_path: Path) -> None:
    own_model(tmp_path / "own", "tunnel-level-x1", broken=True)
    got = cli("check-config", str(site_using(tmp_path, "generic-rs485-level", "own")))
    assert got.returncode == 0, got.stderr


@pytest.fixture
async def tcp_level() -> AsyncIterator[str]:
    source = DepthSource(Scenario.named("dry", noise_mm=0.0), manual=123.0)
    level = SimLevel(profile("generic-rs485-level"), 1, source)
    server = await serve_tcp(SimBus([level.slave]))
    yield f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def run(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args)


async def test_scan_reports_a_broken_profile_and_matches_with_the_others(
    tmp_path: Path, tcp_level: str
) -> None:
    bad = own_model(tmp_path / "own", "tunnel-level-x1", broken=True)
    own_model(tmp_path / "own", "tunnel-level-x2")
    got = await run(
        "scan", "--port", tcp_level, "--ids", "1-2", "--json", "--profiles", str(tmp_path / "own")
    )
    assert got.returncode == 0, got.stderr
    [found] = json.loads(got.stdout)
    assert {"generic-rs485-level", "tunnel-level-x2"} <= set(found["matches"])
    assert "tunnel-level-x1" not in found["matches"]
    assert f"skipped a broken profile: {bad}:" in got.stderr and "points.level.type" in got.stderr


async def test_read_takes_a_profile_by_path_or_name(tmp_path: Path, tcp_level: str) -> None:
    good = own_model(tmp_path / "own", "tunnel-level-x2")
    bad = own_model(tmp_path / "own", "tunnel-level-x1", broken=True)
    by_path = await run("read", "--port", tcp_level, "--unit", "1", "--profile", str(good), "--json")
    assert by_path.returncode == 0, by_path.stderr
    assert json.loads(by_path.stdout)["level"]["unit"] == "cm"
    # a broken neighbour on the path does not stop reading through a good profile
    by_name = await run(
        "read", "--port", tcp_level, "--unit", "1", "--profile", "tunnel-level-x2", "--json",
        "--profiles", str(tmp_path / "own"),
    )  # fmt: skip
    assert by_name.returncode == 0, by_name.stderr
    broken = await run("read", "--port", tcp_level, "--unit", "1", "--profile", str(bad))
    assert broken.returncode == 3 and f"{bad}:" in broken.stderr and "points.level.type" in broken.stderr
    typo = await run("read", "--port", tcp_level, "--unit", "1", "--profile", "generic-rs485-levle")
    assert typo.returncode == 2 and "did you mean 'generic-rs485-level'?" in typo.stderr
    nofile = await run("read", "--port", tcp_level, "--unit", "1", "--profile", str(tmp_path / "x.yaml"))
    assert nofile.returncode == 2 and "no profile file" in nofile.stderr
