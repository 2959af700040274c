"""The README's main command runs: sites flood, gates close, tickets open, one escalates."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

from tests.helpers import free_port


def test_demo_runs_the_whole_system_in_a_storm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            *[sys.executable, "-m", "floodgate.cli", "demo", "--sites", "4", "--speed", "6"],
            *["--duration", "60", "--deadline-min", "0.25", "--summary-s", "5", "--port", str(port)],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    health = None
    deadline = time.monotonic() + 40
    while health is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                health = json.loads(r.read())
        except OSError:
            time.sleep(0.2)  # noqa: TID251 - polling another process's port, no event loop here
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert health == {"status": "ok", "database": True, "broker": True}, "the API answered while it ran"
    assert "login admin" in out and f"Dashboard http://127.0.0.1:{port}/" in out
    assert "opened (warning) → drainage-" in out
    assert "dispatched to drainage-" in out and "by system" in out
    assert "ESCALATED to level 1" in out
    assert any(f"gates closed {n}/4" in out for n in (1, 2, 3, 4)), out
    assert "stopped;" in out
    assert "ERROR" not in err and "Traceback" not in err, err  # what a new user sees: nothing alarming
