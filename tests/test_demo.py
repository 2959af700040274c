"""The README's main command runs: the demo reaches a flood and closes the gate."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_a_storm_end_to_end() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "floodgate.cli", "demo", "--speed", "20", "--duration", "30"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "BIRTH" in out
    assert "flood        warning -> danger" in out
    assert "GATE   gate-1  is closed" in out
    assert "stopped;" in out
