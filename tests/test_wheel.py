"""The wheel, installed outside the source tree, has its profiles and runs the installer's commands.

Built from a copy of the sources (so nothing is written into the tree) and
installed with ``--no-index``: no registry is asked. The fresh venv gets the
wheel itself; its dependencies come from the venv the tests run in, through
a ``.pth`` line (which adds that venv's site-packages but not its editable
Floodgate, whose hook only runs from a site folder's own ``.pth``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from simulators.devices import DepthSource, SimImmersion, SimLevel
from simulators.scenarios import Scenario
from simulators.slave import SimBus, serve_tcp
from tests.conftest import PROFILES, REPO
from tests.simulators.test_simulators import profile

pytestmark = pytest.mark.slow

SOURCES = [
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "floodgate",
    "edge",
    "cloud",
    "simulators",
]
SOURCES += ["firmware-config"]


def run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    got = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300
    )
    return got


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv in a temporary folder with the wheel built from this tree; returns its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = run(
        *pip,
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        tmp / "dist",
        src,
        cwd=tmp,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp / "dist").glob("floodgate-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = sorted(Path(n).name for n in z.namelist() if n.startswith("edge/profiles/"))
    assert shipped == sorted(p.name for p in PROFILES.glob("*.yaml")), "every shipped profile is in the wheel"

    venv = tmp / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    got = run(*pip, "--python", python, "install", "-q", "--no-index", "--no-deps", wheel, cwd=tmp)
    assert got.returncode == 0, got.stderr
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp)
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site.stdout.strip()) / "_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return venv / "bin"


def clean_env() -> dict[str, str]:
    """The test's environment without anything that points into the source tree."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FLOODGATE_PROFILES")}


def test_the_installed_package_is_the_wheels_not_the_source_tree(installed: Path, tmp_path: Path) -> None:
    got = run(
        installed / "python",
        "-c",
        "import edge, floodgate, simulators; from edge.config.search import shipped_profiles;"
        "print(edge.__file__); print(floodgate.__file__); print(shipped_profiles())",
        cwd=tmp_path,
        env=clean_env(),
    )
    assert got.returncode == 0, got.stderr
    edge_file, floodgate_file, profiles = got.stdout.splitlines()
    venv = installed.parent
    assert Path(edge_file).is_relative_to(venv) and Path(floodgate_file).is_relative_to(venv)
    assert Path(profiles) == Path(edge_file).parent / "profiles"


def test_check_config_on_the_example_site(installed: Path, tmp_path: Path) -> None:
    box = tmp_path / "etc-floodgate"
    box.mkdir()
    site = box / "site.yaml"
    shutil.copy(REPO / "firmware-config" / "sites" / "example-kexiang-tunnel.yaml", site)
    floodgate = installed / "floodgate"
    bare = run(floodgate, "edge", "check-config", site, cwd=tmp_path, env=clean_env())
    assert bare.returncode == 3 and "'floodgate edge provision' writes it" in bare.stderr
    secrets = "broker-secret\n" + "ab" * 16 + "\n"
    provision = ["provision", site, "--password-stdin", "--command-key-stdin"]
    got = subprocess.run([floodgate, "edge", *provision], input=secrets, cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert got.returncode == 0, got.stderr
    got = run(floodgate, "edge", "check-config", site, cwd=tmp_path, env=clean_env())
    assert got.returncode == 0, got.stderr
    assert "ok — node hp-kexiang-01, 2 buses, 5 devices" in got.stdout


@pytest.fixture
async def sim_port() -> AsyncIterator[int]:
    source = DepthSource(Scenario.named("dry", noise_mm=0.0), manual=250.0)
    radar = SimLevel(profile("radar-level-lx80"), 1, source, mount_height_mm=4500)
    wps = SimImmersion(profile("wps104-water-presence"), 2, source)
    server = await serve_tcp(SimBus([radar.slave, wps.slave]))
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_read_against_a_simulator(installed: Path, tmp_path: Path, sim_port: int) -> None:
    args = ["--port", f"tcp://127.0.0.1:{sim_port}", "--json"]
    got = await asyncio.to_thread(
        run,
        installed / "floodgate",
        "edge",
        "read",
        *args,
        "--unit",
        "2",
        "--profile",
        "wps104-water-presence",
        cwd=tmp_path,
        env=clean_env(),
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["wet"]["value"] == 1, "250 mm of water: the contact is wet"
    scan = await asyncio.to_thread(
        run, installed / "floodgate", "edge", "scan", *args, "--ids", "1-2", cwd=tmp_path, env=clean_env()
    )
    assert scan.returncode == 0, scan.stderr
    assert "radar-level-lx80" in {f["unit"]: f["matches"] for f in json.loads(scan.stdout)}[1]
