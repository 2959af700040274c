"""The shipped systemd unit for collectors (firmware-config/cloud/floodgate-collector@.service).

No systemd runs here: an instance of the template is checked with ``systemd-analyze verify``
and ``security --offline`` (its ExecStart pointed at this Python, its user ``nobody``), and
its command line is run to show the collector's CLI takes it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "firmware-config" / "cloud" / "floodgate-collector@.service"
ANALYZE = shutil.which("systemd-analyze")


def instance(tmp_path: Path, name: str = "a") -> tuple[Path, list[str]]:
    """The template as instance ``name`` with this Python in ExecStart; and its command line."""
    text = UNIT.read_text()
    text = text.replace("/opt/floodgate/bin/floodgate", f"{sys.executable} -m floodgate.cli")
    text = text.replace("User=floodgate", "User=nobody").replace("Group=floodgate", "Group=nogroup")
    path = tmp_path / f"floodgate-collector@{name}.service"
    path.write_text(text)
    [line] = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    return path, shlex.split(line.removeprefix("ExecStart=").replace("%i", name))


def test_the_collector_cli_takes_the_units_command_line(tmp_path: Path) -> None:
    _, words = instance(tmp_path)
    assert words[-6:] == [
        "cloud",
        "run",
        "--config",
        "/etc/floodgate/collector-a.yaml",
        "--log-format",
        "json",
    ]
    # Not a usage error (2): the arguments are right; the config is not there (3).
    got = subprocess.run(words, capture_output=True, text=True, check=False, timeout=60)
    assert got.returncode == 3 and "collector-a.yaml" in got.stderr, got.stderr


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    assert ANALYZE is not None
    path, _ = instance(tmp_path)
    verify = subprocess.run([ANALYZE, "verify", str(path)], capture_output=True, text=True, check=False)
    lines = [x for x in verify.stderr.splitlines() if "Special user nobody configured" not in x]
    assert verify.returncode == 0 and not lines, verify.stderr
    security = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    [overall] = [x for x in security.stdout.splitlines() if "Overall exposure level" in x]
    assert float(overall.split(":")[1].split()[0]) <= 2.5, overall
