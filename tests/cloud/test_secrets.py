"""The collector run as its service runs it (``floodgate cloud run``, DEBUG logs) with every secret
set, through a flood, a command, an InfluxDB export and notifications that fail: none of the
secrets is in its log."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiomqtt
import httpx
import pytest

from floodgate.ids import new_ulid
from floodgate.wire import Sequencer
from tests.cloud.test_notify import Mailbox
from tests.cloud.test_tickets import REGISTRY
from tests.helpers import Influxd, Mosquitto, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SECRETS = {
    "broker": "broker-pa55-0a1b",
    "influx": "influx-pa55-2c3d",
    "smtp": "smtp-pa55-4e5f",
    "webhook": "webhook-s3cret-6a7b",
    "hook_token": "hook-t0ken-8c9d",
    "master": "master-key-0e1f2a3b",
    "admin": "admin-pa55-word-4c5d",
}


async def test_no_secret_reaches_the_collectors_log(broker: Mosquitto, tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller

    (tmp_path / "influx").mkdir()
    influx = Influxd(tmp_path / "influx", auth=True)
    influx.start()
    box = Controller(Mailbox(), hostname="127.0.0.1", port=free_port())  # offers no AUTH: login fails
    box.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        async with httpx.AsyncClient() as c:
            q = f"CREATE USER fg WITH PASSWORD '{SECRETS['influx']}' WITH ALL PRIVILEGES"
            assert (await c.post(influx.url + "/query", params={"q": q})).status_code == 200
        for name in ("broker", "influx", "smtp"):
            (tmp_path / f"{name}.pw").write_text(SECRETS[name] + "\n")
        (tmp_path / "master.key").write_text(SECRETS["master"])
        hook = f"http://127.0.0.1:{free_port()}/hook?access_token={SECRETS['hook_token']}"  # nobody there
        (tmp_path / "registry.yaml").write_text(
            REGISTRY.replace(
                "  drainage-dasha: {name: 大沙街排水所, leader: 王所长}\n",
                "  drainage-dasha:\n    name: 大沙街排水所\n"
                f"    notify: {{webhook: '{hook}', webhook_secret: {SECRETS['webhook']},"
                " email: [duty@dasha.example]}\n",
            )
        )
        api_port = free_port()
        (tmp_path / "cloud.yaml").write_text(
            f"database: sqlite:///{tmp_path / 'c.db'}\n"
            f"broker: {{url: '{broker.url}', username: collector, password_file: broker.pw}}\n"
            f"client_id: secrets-{api_port}\n"
            "registry: registry.yaml\ncommand_key_file: master.key\n"
            f"api: {{host: 127.0.0.1, port: {api_port}}}\n"
            f"smtp: {{host: 127.0.0.1, port: {box.port}, username: mailer, password_file: smtp.pw}}\n"
            f"influx: {{url: '{influx.url}', username: fg, password_file: influx.pw, interval_s: 0.5}}\n"
        )
        cli = [sys.executable, "-m", "floodgate.cli", "cloud"]
        cfg = ["-c", str(tmp_path / "cloud.yaml")]
        added = subprocess.run(
            [*cli, "user-add", *cfg, "root", "--role", "admin"],
            input=(SECRETS["admin"] + "\n").encode(),
            capture_output=True,
            check=False,
        )
        assert added.returncode == 0, added.stderr
        log = tmp_path / "collector.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([*cli, "run", *cfg, "--log-level", "debug"], stderr=out, stdout=out)
        api = f"http://127.0.0.1:{api_port}"
        async with httpx.AsyncClient(base_url=api, timeout=10) as c:

            async def up() -> bool:
                try:
                    return (await c.get("/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_until(up, 30, "the collector's API")
            login = await c.post(
                "/api/v1/auth/login", json={"username": "root", "password": SECRETS["admin"]}
            )
            token = login.json()["token"]
            c.headers["Authorization"] = f"Bearer {token}"
            seq = Sequencer("hp-1", boot=1)
            alert = {"id": new_ulid(), "dev": "lvl-1", "kind": "flood", "level": "danger", "prev": "clear"}
            reading = {"dev": "lvl-1", "metric": "depth_mm", "value": 290.0, "quality": "good"}
            async with aiomqtt.Client("127.0.0.1", broker.port) as m:
                env = seq.envelope()
                await m.publish(
                    "floodgate/v1/hp-1/alert",
                    json.dumps({**env, "alert": {**alert, "value": 290.0, "ts": env["ts"]}}),
                    qos=1,
                )
                env = seq.envelope()
                await m.publish(
                    "floodgate/v1/hp-1/telemetry",
                    json.dumps({**env, "readings": [{**reading, "ts": env["ts"]}]}),
                    qos=1,
                )

            async def ticket() -> bool:
                return bool((await c.get("/api/v1/tickets")).json()["total"])

            await wait_until(ticket, 30, "the flood's ticket")
            cmd = {
                "node": "hp-1",
                "type": "sign.show",
                "dev": "sign-1",
                "args": {"message": "x"},
                "reason": "test",
            }
            assert (await c.post("/api/v1/commands", json=cmd)).status_code == 202

        def logged(what: str) -> bool:
            return what in log.read_text(errors="replace")

        await wait_until(lambda: logged("failed (attempt 1)") and logged("SMTP"), 30, "both deliveries fail")

        async def exported() -> bool:
            async with httpx.AsyncClient(auth=("fg", SECRETS["influx"])) as c:
                r = await c.get(
                    influx.url + "/query", params={"db": "floodgate", "q": "SELECT count(value) FROM reading"}
                )
            return "series" in r.json()["results"][0]

        await wait_until(exported, 30, "the reading in InfluxDB")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 20)
        box.stop()
        influx.stop()
    text = (tmp_path / "collector.log").read_text(errors="replace")
    assert "ticket" in text and "DEBUG" in text, text[-2000:]
    leaked = {name: s for name, s in SECRETS.items() if s in text}
    assert not leaked, leaked
    assert token not in text and token.split("_", 2)[2] not in text
