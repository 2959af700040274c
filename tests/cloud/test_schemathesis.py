"""schemathesis against the live collector (its API on a free port, a real mosquitto, a command
key) on SQLite and PostgreSQL, with all its checks and phases: no server error, no response outside
its documented schema, status code, headers or content type, every invalid request refused, every
valid one taken (but for the one rule OpenAPI cannot state, schemathesis.toml), no route that
ignores its token.

Bounded for CI: a fixed seed, no example database, one worker and ``MAX_EXAMPLES`` cases per
operation and phase; ``FLOODGATE_SCHEMATHESIS_EXAMPLES`` runs more.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from cloud.collector import Collector
from cloud.config import Api, CloudConfig
from floodgate.broker import BrokerSettings
from floodgate.ids import new_ulid
from tests.cloud.test_ingest import birth
from tests.cloud.test_tickets import REGISTRY, Site
from tests.helpers import Mosquitto, free_port, wait_until

MAX_EXAMPLES = int(os.environ.get("FLOODGATE_SCHEMATHESIS_EXAMPLES", "5"))
ST = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
SETTINGS = Path(__file__).with_name("schemathesis.toml")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
async def collector(broker: Mosquitto, db_url: str, tmp_path: Path) -> AsyncIterator[Collector]:
    (tmp_path / "master.key").write_bytes(b"schemathesis-master-key-0123456789")
    (tmp_path / "registry.yaml").write_text(REGISTRY)
    port = free_port()
    config = CloudConfig(
        database=db_url,
        client_id=f"st-{port}",
        command_key_file=str(tmp_path / "master.key"),
        registry=str(tmp_path / "registry.yaml"),
        api=Api(host="127.0.0.1", port=port),
    )
    col = Collector(config, BrokerSettings(url=broker.url, reconnect_max_s=0.5))
    # Cheap password hashes: schemathesis makes many users and tries many logins.
    col.auth.hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    task = asyncio.create_task(col.run())
    try:
        await asyncio.wait_for(col.ready.wait(), 20)
        await asyncio.wait_for(col.consumer.subscribed.wait(), 20)
        assert col.api is not None
        api = col.api
        await wait_until(lambda: api.started, 10, "the API server")
        yield col
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=15)


async def test_schemathesis_finds_nothing_against_the_live_api(collector: Collector, tmp_path: Path) -> None:
    site = Site(collector.ingestor)  # a site that has flooded: a node, devices, a ticket, CAP messages
    await site.send(birth(site.seq, "lvl-1"))
    await site.send(site.alert(new_ulid(), "danger", "clear", ts=collector.clock.now_ms()))
    await collector.auth.add_user("root", "admin", "schemathesis-password")
    token = await collector.auth.issue_token("root", "schemathesis", 3600)
    assert collector.api is not None and collector.config.api is not None
    url = f"http://127.0.0.1:{collector.api.port}"
    proc = await asyncio.create_subprocess_exec(
        ST,
        "--config-file",
        str(SETTINGS),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261130",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    (tmp_path / "schemathesis.log").write_text(text)
    assert proc.returncode == 0, text[-30000:]


def test_the_settings_widen_only_the_operations_they_name() -> None:
    """``include-path`` with ``include-method`` matched either, so the 422 allowed for two operations
    held for every GET and every POST: each entry must apply to the one operation it names."""
    import schemathesis
    from schemathesis.config import SchemathesisConfig

    def ok(ops: dict[str, dict[str, object]]) -> dict[str, object]:
        return {m: {"responses": {"200": {"description": "ok"}}} for m in ops}

    paths = {
        "/api/v1/readings": ok({"get": {}}),
        "/api/v1/rainfall-forecasts": ok({"get": {}, "post": {}}),
        "/api/v1/tickets": ok({"get": {}, "post": {}}),
    }
    spec = {"openapi": "3.0.0", "info": {"title": "t", "version": "1"}, "paths": paths}
    schema = schemathesis.openapi.from_dict(spec, config=SchemathesisConfig.from_path(SETTINGS))
    taking_422 = set()
    for result in schema.get_all_operations():
        op = result.ok()
        checks = schema.config.operations.get_for_operation(op).checks
        if "422" in (checks.positive_data_acceptance.expected_statuses or []):
            taking_422.add(f"{op.method.upper()} {op.path}")
    assert taking_422 == {"GET /api/v1/readings", "POST /api/v1/rainfall-forecasts"}
