"""The README's main command runs: storms keep coming, gates close, tickets open and escalate, and
the tour can be done to the end (a unit member accepts and reports, the dispatcher verifies and
evaluates); a taken port, the help texts and ./dev say what they should."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
DEMO = [sys.executable, "-m", "floodgate.cli", "demo"]


def call(base: str, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def poll(what: str, cond: Any, limit_s: float) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            got = cond()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.2)  # noqa: TID251 - polling another process, no event loop here
    raise AssertionError(f"no {what} within {limit_s} s")


def test_demo_runs_the_whole_system_in_a_storm_and_the_tour_completes(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    errors = (tmp_path / "stderr").open("w+")
    proc = subprocess.Popen(
        [
            *[*DEMO, "--sites", "4", "--speed", "6", "--duration", "60", "--deadline-min", "0.25"],
            *["--summary-s", "5", "--port", str(port)],
        ],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        logins = poll("logins", lambda: dict(re.findall(r"login (\w+) +password (\S+)", "".join(lines))), 40)
        poll(
            "the unit's login",
            lambda: "unit" in dict(re.findall(r"login (\w+) +password (\S+)", "".join(lines))),
            5,
        )
        logins = dict(re.findall(r"login (\w+) +password (\S+)", "".join(lines)))
        health = poll("health", lambda: call(base, "GET", "/health")[1], 20)
        assert health == {"status": "ok", "database": True, "broker": True}

        def token(user: str) -> str:
            status, body = call(
                base, "POST", "/api/v1/auth/login", None, {"username": user, "password": logins[user]}
            )
            assert status == 200, body
            return str(body["token"])

        chen, unit = token("dispatcher"), token("unit")

        def dispatched() -> Any:
            _, page = call(base, "GET", "/api/v1/tickets?state=dispatched&node=hp-01", chen)
            return page["items"][0]["id"] if page["items"] else None

        tid = poll("hp-01's ticket dispatched to its unit", dispatched, 40)
        path = f"/api/v1/tickets/{tid}"
        assert call(base, "POST", path + "/accept", unit, {})[0] == 200
        assert call(base, "POST", path + "/report", unit, {"note": "pumps running"})[0] == 200
        status, body = call(base, "POST", path + "/verify", chen, {})
        if status == 409:  # hp-01 still reads water: the dispatcher says so
            assert body["code"] == "still_wet", body
            status, body = call(base, "POST", path + "/verify", chen, {"confirm": True})
        assert status == 200 or body["state"] == "verified", body
        status, body = call(base, "POST", path + "/evaluate", chen, {"score": 5})
        assert status == 200 and body["state"] == "closed", body
    finally:
        proc.wait(timeout=120)
    reader.join(5)
    errors.seek(0)
    err = errors.read()
    errors.close()
    out = "".join(lines)
    assert proc.returncode == 0, err
    assert f"Dashboard {base}/" in out and "login admin" in out
    assert "login unit" in out and "(member of drainage-dasha: hp-01, hp-02)" in out
    assert out.index("work files in") < out.index("TICKET"), "what happens is told after the logins"
    assert "opened (warning) → drainage-" in out
    assert "dispatched to drainage-" in out and "by system" in out
    assert "accepted by unit:drainage-dasha:unit" in out and "closed by user:dispatcher" in out
    assert "ESCALATED to level 1" in out
    # In English, by the registry's English names, never "by 0 min".
    for line in (x for x in out.splitlines() if "ESCALATED" in x):
        told = line.split("ESCALATED", 1)[1]
        assert not re.search(r"[\u4e00-\u9fff]", told) and "by 0 min" not in told, line
        assert re.search(r"deadline missed by (under a minute|\d+ min), to ", told), line
    assert re.search(r"SUMMARY danger [1-4]/4, warning \d+, gates closed [1-4]/4", out), out
    assert re.search(r"accepted on time \d+/\d+", out), out
    assert "the other stations are simulated crews; deadlines: accept a danger ticket in 0.25 min" in out
    assert "stopped;" in out
    assert "ERROR" not in err and "Traceback" not in err, err  # what a new user sees: nothing alarming


def test_a_taken_port_is_one_clear_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        work = tmp_path / "work"
        r = subprocess.run(
            [*DEMO, "--port", str(port), "--workdir", str(work)],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"floodgate demo: cannot serve the dashboard on 127.0.0.1:{port} (Address already in use); "
        "stop what uses it or pick another port with --port"
    ]
    assert not work.exists(), "nothing was started"


def test_the_help_texts_read_well() -> None:
    r = subprocess.run([*DEMO, "--help"], check=False, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0
    assert "``" not in r.stdout and "storm that keeps coming" not in r.stdout.split("options:")[1]
    for option, words in (("--sites N", "tunnels and underpasses"), ("--host HOST", "listen on")):
        assert re.search(rf"{re.escape(option)}\s+\S.*{words}", r.stdout, re.S), (option, r.stdout)
    dev = subprocess.run(
        [str(ROOT / "dev"), "--help"], check=False, capture_output=True, text=True, timeout=20
    )
    assert dev.returncode == 0 and ". .venv/bin/activate" in dev.stdout
    assert (
        subprocess.run(
            [str(ROOT / "dev"), "nonsense"], check=False, capture_output=True, timeout=20
        ).returncode
        == 2
    )
