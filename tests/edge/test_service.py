"""The installer's path: provision → check-config → install-service --user → the unit's command as that user.

No systemd runs here, so the unit is checked with ``systemd-analyze verify``
and ``systemd-analyze security --offline``, and its ExecStart is run as an
unprivileged user with ``setpriv`` (what User= does), against a real
mosquitto with the shipped ACL. What systemd itself adds (StateDirectory=
making /var/lib/floodgate, the sandbox) is not exercised: the test makes the
state folder as systemd would.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.commission.service import quote
from tests.conftest import EXAMPLE_SITE, REPO
from tests.edge.test_commission import run_cli
from tests.edge.test_config import line_of
from tests.helpers import Mosquitto, Recorder

ANALYZE = shutil.which("systemd-analyze")
SETPRIV = shutil.which("setpriv")
ROOT = os.geteuid() == 0
NODE = "hp-kexiang-01"  # the example's node
KEY = "0123456789abcdef0123456789abcdef"
needs_root = pytest.mark.skipif(not ROOT, reason="gives files to another user: needs root (CI runs as root)")


@pytest.fixture
def box() -> Iterator[Path]:
    """A folder every user may enter (pytest's own are root's only), with a space in its name."""
    top = Path(tempfile.mkdtemp(prefix="floodgate-box-"))
    top.chmod(0o755)
    folder = top / "etc floodgate"
    folder.mkdir(mode=0o755)
    yield folder
    shutil.rmtree(top)


def provisioned(folder: Path, *extra: str, broker: str = "mqtt://127.0.0.1:1883") -> Path:
    """The shipped example site, provisioned as the README says."""
    site = folder / "site.yaml"
    shutil.copy(EXAMPLE_SITE, site)
    site.chmod(0o644)
    got = run_cli(
        "provision", str(site), "--broker", broker, "--password-stdin", "--command-key-stdin", *extra,
        stdin=f"node-secret\n{KEY}\n",
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    return site


def exec_start(unit: str) -> list[str]:
    [line] = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart=").replace("%%", "%").replace("$$", "$"))


def test_quote_keeps_a_word_one_word() -> None:
    assert quote("/etc/floodgate/site.yaml") == "/etc/floodgate/site.yaml"
    assert quote("/etc/flood gate/site.yaml") == '"/etc/flood gate/site.yaml"'
    assert quote('/a "b"/100%/$HOME') == '"/a \\"b\\"/100%%/$$HOME"'


def test_provision_names_exactly_the_files_the_example_names(box: Path) -> None:
    before = EXAMPLE_SITE.read_text(encoding="utf-8")
    site = provisioned(box)
    for key in ("password_file: secrets/broker-password", "command_key_file: secrets/command.key"):
        assert key in before and key in site.read_text(encoding="utf-8"), key
    assert run_cli("check-config", str(site)).returncode == 0


def test_a_refused_provision_writes_nothing(box: Path) -> None:
    site = provisioned(box)
    secrets = box / "secrets"
    files = {p: p.read_bytes() for p in [site, *secrets.iterdir()]}
    for args, stdin, code in [
        (["--node", "Not A Node!", "--password-stdin"], "a-new-password\n", 3),
        (["--password-stdin", "--command-key-stdin"], "a-new-password\nshort\n", 1),
        (["--password-stdin", "--ca", str(box / "no-such-ca.crt")], "a-new-password\n", 1),
    ]:
        got = run_cli("provision", str(site), *args, stdin=stdin)
        assert got.returncode == code, got.stderr
        assert "nothing written" in got.stderr
        assert {p: p.read_bytes() for p in [site, *secrets.iterdir()]} == files, args
    assert sorted(p.name for p in box.iterdir()) == ["secrets", "site.yaml"], "no leftovers"


def test_check_config_checks_every_file_the_config_names(box: Path) -> None:
    site = provisioned(box)
    (box / "secrets" / "command.key").unlink()
    got = run_cli("check-config", str(site))
    assert got.returncode == 3
    line = line_of(site.read_text(), "command_key_file:")
    assert f"site.yaml:{line}: command_key_file: no file" in got.stderr
    assert "'floodgate edge provision' writes it" in got.stderr
    assert run_cli("check-config", "--skip-files", str(site)).returncode == 0
    (box / "secrets" / "command.key").write_text("too-short\n")
    short = run_cli("check-config", str(site))
    assert short.returncode == 3 and "must hold at least 16 characters" in short.stderr
    text = site.read_text().replace("password_file: secrets/broker-password", "password_file: secrets")
    site.write_text(text)
    folder = run_cli("check-config", str(site))
    assert "broker.password_file: " in folder.stderr and "is not a file" in folder.stderr


def test_the_unit_quotes_paths_and_verifies(box: Path, tmp_path: Path) -> None:
    site = provisioned(box)
    got = run_cli("install-service", str(site), "--dest", str(tmp_path), "--profiles", str(REPO / "tests"))
    assert got.returncode == 0, got.stderr
    unit = (tmp_path / f"floodgate-edge-{NODE}.service").read_text()
    assert f'--config "{site}"' in unit and f"WorkingDirectory={box}\n" in unit
    assert exec_start(unit) == [
        sys.executable, "-m", "floodgate.cli", "edge", "run", "--config", str(site), "--log-format", "json",
        "--profiles", str(REPO / "tests"),
    ]  # fmt: skip
    assert "StateDirectory=floodgate\n" in unit, "the example's outbox is /var/lib/floodgate/outbox.db"
    assert "DeviceAllow=/dev/ttyUSB0 rw" in unit and "User=" not in unit
    if ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    verify = subprocess.run([ANALYZE, "verify", str(tmp_path / f"floodgate-edge-{NODE}.service")],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr


@needs_root
def test_install_service_gives_the_user_its_secrets_and_no_one_else(box: Path, tmp_path: Path) -> None:
    site = provisioned(box)
    nobody = pwd.getpwnam("nobody")
    missing = run_cli("install-service", str(site), "--dest", str(tmp_path), "--user", "no-such-user-x")
    assert missing.returncode == 2 and "useradd --system" in missing.stderr
    got = run_cli("install-service", str(site), "--dest", str(tmp_path), "--user", "nobody")
    assert got.returncode == 0, got.stderr
    secrets = box / "secrets"
    assert (secrets.stat().st_uid, secrets.stat().st_gid) == (0, nobody.pw_gid)
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o750
    for name in ("broker-password", "command.key"):
        st = (secrets / name).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, 0o600), name
    unit = (tmp_path / f"floodgate-edge-{NODE}.service").read_text()
    assert "User=nobody\nSupplementaryGroups=dialout\n" in unit
    if ANALYZE is not None:
        verify = subprocess.run([ANALYZE, "verify", str(tmp_path / f"floodgate-edge-{NODE}.service")],
                                capture_output=True, text=True, check=False)  # fmt: skip
        lines = [x for x in verify.stderr.splitlines() if "Special user nobody configured" not in x]
        assert verify.returncode == 0 and not lines, verify.stderr
        security = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager",
                                   str(tmp_path / f"floodgate-edge-{NODE}.service")],
                                  capture_output=True, text=True, check=False)  # fmt: skip
        [overall] = [x for x in security.stdout.splitlines() if "Overall exposure level" in x]
        exposure = float(overall.split(":")[1].split()[0])
        assert exposure <= 2.5, overall  # 8.8 "EXPOSED" before; 1.9 "OK" with the user nobody


@needs_root
def test_a_secret_inline_in_a_config_everyone_may_read_is_refused(box: Path, tmp_path: Path) -> None:
    site = provisioned(box)
    text = site.read_text().replace("command_key_file: secrets/command.key", f"command_key: {KEY}")
    site.write_text(text)
    got = run_cli("install-service", str(site), "--dest", str(tmp_path), "--user", "nobody")
    assert got.returncode == 1 and "holds command_key and everyone may read it" in got.stderr
    site.chmod(0o640)
    os.chown(site, 0, pwd.getpwnam("nobody").pw_gid)
    assert run_cli("install-service", str(site), "--dest", str(tmp_path), "--user", "nobody").returncode == 0


@needs_root
def test_a_user_that_could_not_write_the_outbox_changes_nothing(box: Path, tmp_path: Path) -> None:
    site = provisioned(box)
    site.write_text(site.read_text().replace("path: /var/lib/floodgate/outbox.db", "path: outbox.db"))
    got = run_cli("install-service", str(site), "--dest", str(tmp_path), "--user", "nobody")
    assert got.returncode == 1 and f"nobody cannot write the outbox's folder {box}" in got.stderr
    assert (box / "secrets" / "command.key").stat().st_uid == 0 and not list(tmp_path.iterdir())


def as_nobody(*cmd: str) -> list[str]:
    assert SETPRIV is not None
    return [SETPRIV, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]


@pytest.fixture
def acl_broker(box: Path) -> Iterator[Mosquitto]:
    passwd = box.parent / "passwd"
    for i, (user, pw) in enumerate([(NODE, "node-secret"), ("collector", "collector-secret")]):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run(["mosquitto_passwd", *flags, str(passwd), user, pw], check=True, capture_output=True)
    acl = REPO / "firmware-config" / "broker" / "mosquitto-acl.conf"
    m = Mosquitto(
        box.parent, listener=["allow_anonymous false", f"password_file {passwd}", f"acl_file {acl}"]
    )
    m.start()
    yield m
    m.stop()


@needs_root
@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.slow
async def test_the_units_command_runs_as_the_service_user(
    box: Path, tmp_path: Path, acl_broker: Mosquitto
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLOODGATE_PROFILES"}
    probe = subprocess.run(as_nobody(sys.executable, "-c", "import edge.agent, aiomqtt"), env=env,
                           capture_output=True, text=True, check=False)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"the user nobody cannot run this checkout's Python: {probe.stderr.strip()[-200:]}")
    site = provisioned(box, "--username", NODE, broker=acl_broker.url)
    state = box.parent / "state"  # what StateDirectory= makes: owned by the user, 0700
    state.mkdir(mode=0o700)
    os.chown(state, pwd.getpwnam("nobody").pw_uid, -1)
    site.write_text(site.read_text().replace("/var/lib/floodgate/outbox.db", f"{state}/outbox.db"))

    # Before install-service the secrets are root's: the user is told, with file, line and key.
    before = subprocess.run(as_nobody(*exec_start_of(site, tmp_path, user=None)), env=env,
                            capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    assert before.returncode == 3
    assert f"site.yaml:{line_of(site.read_text(), 'password_file:')}: broker.password_file: " in before.stderr
    assert "cannot be read by this user (nobody)" in before.stderr

    cmd = exec_start_of(site, tmp_path, user="nobody")
    rec = await Recorder(
        acl_broker.port, node=NODE, username="collector", password="collector-secret"
    ).start()
    agent = subprocess.Popen(as_nobody(*cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        birth = await rec.wait_for(lambda m: m.kind == "birth", 30, "the agent's birth, sent as nobody")
        assert birth.payload["node"] == NODE
        assert (state / "outbox.db").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    finally:
        await rec.stop()
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err.decode()[-2000:]
    assert "Traceback" not in err.decode() + out.decode()
    logs = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
    assert any("connected to broker" in x.get("msg", x.get("message", "")) for x in logs), logs[:5]


def exec_start_of(site: Path, dest: Path, user: str | None) -> list[str]:
    """install-service's unit for ``site``, and its ExecStart's words (user None: only the words)."""
    args = ["--user", user] if user else []
    got = run_cli("install-service", str(site), "--dest", str(dest), *args)
    assert got.returncode == 0, got.stderr
    return exec_start((dest / f"floodgate-edge-{NODE}.service").read_text())
