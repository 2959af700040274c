"""The shipped mosquitto config (firmware-config/broker/mosquitto.conf) does what docs/deployment.md says.

mosquitto is started with that file, line for line, but for the site-specific
lines (``SITE_KEYS``: the listener and its TLS files, the password, ACL, pid and
log paths, the persistence folder), which name this machine's. Then: it starts
(every option is one this mosquitto knows); a node logs in and writes under the
shipped ACL; and a collector's persistent session, with QoS 1 messages queued
for it while it is away, survives a ``kill -9`` and a restart once the autosave
interval has passed. The control: the same file with mosquitto's default
interval (30 min) loses that session and its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from tests.helpers import free_port, wait_listening, wait_until

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "firmware-config" / "broker" / "mosquitto.conf"
ACL = REPO / "firmware-config" / "broker" / "mosquitto-acl.conf"
# What a site changes (the test swaps them for its own): everything else is the guide's.
SITE_KEYS = {
    "pid_file",
    "listener",
    "certfile",
    "keyfile",
    "cafile",
    "password_file",
    "acl_file",
    "persistence_location",
    "log_dest",
}
NODE, COLLECTOR = ("hp-1", "node-secret"), ("collector", "collector-secret")
pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="mosquitto is not installed",
)


def settings(text: str) -> list[tuple[str, str]]:
    """(key, value) of every setting line, in order."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.append((key, value.strip()))
    return out


def test_the_guide_sets_what_matters() -> None:
    conf = dict(settings(SHIPPED.read_text()))
    assert conf["persistence"] == "true"
    assert int(conf["autosave_interval"]) <= 10 and conf.get("autosave_on_changes", "false") == "false"
    assert conf["persistence_location"].endswith("/")
    assert conf["max_queued_messages"] == "0" and int(conf["max_queued_bytes"]) >= 64 << 20
    assert int(conf["max_inflight_messages"]) >= 2000
    assert conf["allow_anonymous"] == "false" and conf["acl_file"].endswith("floodgate-acl.conf")
    assert conf["user"] == "mosquitto" and conf["persistent_client_expiration"]
    # The lines the test swaps are the guide's site-specific ones, all present.
    assert set(conf) >= SITE_KEYS


class Broker:
    """mosquitto with the shipped file, its site lines swapped; ``kill`` is ``kill -9``."""

    def __init__(self, folder: Path, overrides: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.db = folder / "data" / "mosquitto.db"
        passwd = folder / "passwd"
        for i, (user, pw) in enumerate((NODE, COLLECTOR)):
            flags = ["-b", "-c"] if i == 0 else ["-b"]
            subprocess.run(
                ["mosquitto_passwd", *flags, str(passwd), user, pw], check=True, capture_output=True
            )
        shutil.copy(ACL, folder / "acl.conf")
        site = {
            "pid_file": str(folder / "mosquitto.pid"),
            "listener": f"{self.port} 127.0.0.1",
            "password_file": str(passwd),
            "acl_file": str(folder / "acl.conf"),
            "persistence_location": f"{folder / 'data'}/",
            "log_dest": f"file {folder / 'mosquitto.log'}",
        }
        lines = []
        for key, value in settings(SHIPPED.read_text()):
            if key in ("certfile", "keyfile", "cafile"):
                continue  # TLS is tested with its own certificates (tests/edge/test_broker_security.py)
            mine = site[key] if key in SITE_KEYS else value
            lines.append(f"{key} {(overrides or {}).get(key, mine)}")
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        (folder / "data").mkdir(mode=0o700)
        if os.geteuid() == 0:  # as the guide says: the folder is the broker user's
            user = pwd.getpwnam(dict(settings(SHIPPED.read_text()))["user"])
            (folder / "mosquitto.log").touch()
            for p in (folder, folder / "data", folder / "mosquitto.log"):
                os.chown(p, user.pw_uid, user.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_listening(self.proc, self.port, 10, "mosquitto")
        except RuntimeError:
            raise RuntimeError(f"mosquitto refused the guide: {self.log()}") from None

    def log(self) -> str:
        p = self.folder / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def client(self, who: tuple[str, str], session: str | None = None) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            self.port,
            username=who[0],
            password=who[1],
            identifier=session,
            clean_session=session is None,
        )


@pytest.fixture
def folder() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private to root, and mosquitto runs as its own user.
    path = Path(tempfile.mkdtemp(prefix="fg-broker-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def queue_for_the_collector(b: Broker, n: int) -> None:
    """The collector's persistent session subscribes and goes away; a node sends ``n`` QoS 1 alerts."""
    async with b.client(COLLECTOR, "fg-collector") as c:
        await c.subscribe("floodgate/v1/#", qos=1)
    async with b.client(NODE) as c:
        for i in range(n):
            await c.publish(f"floodgate/v1/{NODE[0]}/alert", f"{i}".encode(), qos=1)  # awaits the PUBACK


async def collected(b: Broker, timeout: float) -> list[str]:
    """What the collector's session holds when it comes back (until ``timeout`` s of quiet)."""
    got: list[str] = []
    async with b.client(COLLECTOR, "fg-collector") as c:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async for m in c.messages:
                    got.append(bytes(m.payload).decode())  # type: ignore[arg-type]
                    if len(got) == 50:
                        break
    return got


@pytest.mark.slow
async def test_a_persistent_sessions_queue_survives_kill_9_once_saved(folder: Path) -> None:
    b = Broker(folder)
    b.start()
    try:
        await queue_for_the_collector(b, 50)
        queued = b.db.stat().st_mtime_ns if b.db.exists() else 0
        # The autosave interval honoured: a save after the last message was taken.
        await wait_until(lambda: b.db.exists() and b.db.stat().st_mtime_ns > queued, 15, "the next autosave")
        b.kill()
        b.start()
        got = await collected(b, 10)
    finally:
        b.kill()
    assert got == [str(i) for i in range(50)], b.log()


@pytest.mark.slow
async def test_the_default_autosave_interval_loses_the_queue_to_kill_9(folder: Path) -> None:
    """The control: mosquitto's default (30 min) loses what the guide's 5 s keeps."""
    b = Broker(folder, {"autosave_interval": "1800"})
    b.start()
    try:
        await queue_for_the_collector(b, 50)
        b.kill()
        b.start()
        got = await collected(b, 2)
    finally:
        b.kill()
    assert got == []


async def test_a_node_writes_only_its_own_topics_under_the_guide(folder: Path) -> None:
    b = Broker(folder)
    b.start()
    try:
        async with b.client(COLLECTOR) as c:
            await c.subscribe("floodgate/v1/#", qos=1)
            # Refused by the ACL: dropped, or the link closed (as mosquitto 2 does on 3.1.1).
            with contextlib.suppress(aiomqtt.MqttError):
                async with b.client(NODE) as n:
                    await n.publish("floodgate/v1/hp-2/alert", b"forged", qos=1)
            async with b.client(NODE) as n:
                await n.publish(f"floodgate/v1/{NODE[0]}/alert", b"own", qos=1)
            async with asyncio.timeout(5):
                m = await anext(aiter(c.messages))
        assert (str(m.topic), m.payload) == (f"floodgate/v1/{NODE[0]}/alert", b"own")
    finally:
        b.kill()
