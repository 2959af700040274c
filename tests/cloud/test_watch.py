"""Watching a collector (issue 13 §8): the metrics registry, ``/metrics``, ``/healthz``, ``/readyz``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import create_async_engine

from cloud.collector import Collector
from cloud.config import Api as ApiConfig
from cloud.config import CloudConfig
from cloud.db.migrations import MIGRATIONS
from cloud.db.schema import schema_version
from cloud.db.store import Store
from cloud.metrics import Metrics
from floodgate.broker import BrokerSettings
from floodgate.ids import new_ulid
from tests.cloud.test_api import Api, an_api
from tests.cloud.test_collector import publish_telemetry
from tests.cloud.test_tickets import Site
from tests.helpers import Mosquitto, free_port, wait_until


@pytest.fixture
async def api(store: Store, tmp_path: Path) -> AsyncIterator[Api]:
    async with an_api(store, tmp_path) as a:
        yield a


def test_the_registry_writes_the_prometheus_text_format() -> None:
    m = Metrics(collector="c-1")
    sent = m.counter("x_sent_total", "Sent.")
    sent.inc(channel="email")
    sent.inc(2, channel="email")
    assert m.counter("x_sent_total", "Sent.") is sent, "declared again: the same counter"
    m.gauge("x_lag", "Lag.").set(12.5)
    h = m.histogram("x_batch", "Batch.", (1, 10))
    for v in (1, 5, 50):
        h.observe(v)
    text = m.render()
    assert 'x_sent_total{channel="email",collector="c-1"} 3' in text
    assert 'x_lag{collector="c-1"} 12.5' in text
    assert "# TYPE x_batch histogram" in text
    assert 'x_batch_bucket{collector="c-1",le="1"} 1' in text
    assert 'x_batch_bucket{collector="c-1",le="10"} 2' in text
    assert 'x_batch_bucket{collector="c-1",le="+Inf"} 3' in text
    assert 'x_batch_count{collector="c-1"} 3' in text and 'x_batch_sum{collector="c-1"} 56' in text
    with pytest.raises(ValueError, match="is a counter"):
        m.gauge("x_sent_total", "no")
    with pytest.raises(ValueError, match="only goes up"):
        sent.inc(-1)


async def test_probes_say_what_is_not_ready(api: Api) -> None:
    ctx = api.app.state.ctx
    async with api.client() as anon:
        assert (await anon.get("/healthz")).json() == {"status": "ok"}
        r = await anon.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {
            "status": "not ready",
            "database": True,
            "intake": False,
            "schema_version": len(MIGRATIONS),
            "schema_expected": len(MIGRATIONS),
            "live": True,
        }
        ctx.broker_connected = lambda: True
        assert (await anon.get("/readyz")).status_code == 200
        # A database behind this collector's schema (another collector's older version ran it):
        # not ready until migrated.
        async with api.store.begin() as conn:
            await conn.execute(delete(schema_version).where(schema_version.c.version == len(MIGRATIONS)))
        r = await anon.get("/readyz")
        assert r.status_code == 503 and r.json()["schema_version"] == len(MIGRATIONS) - 1
        await api.store.migrate()
        assert (await anon.get("/readyz")).status_code == 200
        # The database gone: liveness still answers, readiness does not.
        real = api.store.engine
        api.store.engine = create_async_engine(
            f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none", connect_args={"timeout": 2}
        )
        try:
            assert (await anon.get("/healthz")).status_code == 200
            r = await anon.get("/readyz")
            assert r.status_code == 503 and r.json()["database"] is False
        finally:
            await api.store.engine.dispose()
            api.store.engine = real


async def test_metrics_show_the_outbox_open_alerts_and_live_feed(api: Api) -> None:
    site = Site(api.ingestor)
    await site.send(site.alert(new_ulid(), "warning", "clear"))
    async with api.client() as anon:
        text = (await anon.get("/metrics")).text
    assert "floodgate_alerts_active 1" in text
    assert "floodgate_notifications_pending 0" in text and "floodgate_notifications_failed 0" in text
    assert "floodgate_live_listening 1" in text


@contextlib.asynccontextmanager
async def running(
    db_url: str, broker: Mosquitto, client_id: str, group: str | None = None
) -> AsyncIterator[Collector]:
    """A collector with its API on a free port (in a ``shared_group`` if given), until the block ends."""
    c = Collector(
        CloudConfig(
            database=db_url,
            client_id=client_id,
            shared_group=group,
            api=ApiConfig(host="127.0.0.1", port=free_port()),
        ),
        BrokerSettings(url=broker.url, reconnect_max_s=0.5),
    )
    task = asyncio.create_task(c.run())
    try:
        await asyncio.wait_for(c.consumer.subscribed.wait(), 20)
        assert c.api is not None
        await wait_until(lambda: c.api is not None and c.api.started, 10, "the API")
        yield c
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=15)


async def test_a_running_collector_reports_its_intake_by_collector(
    broker: Mosquitto, node_id: str, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'c.db'}"
    async with running(db_url, broker, f"watch-{node_id}") as c:
        assert c.api is not None
        base = f"http://127.0.0.1:{c.api.port}"
        await publish_telemetry(broker, node_id, 30)
        await wait_until(lambda: c.ingestor.counters.stored == 30, 20, "all stored")
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            ready = await http.get("/readyz")
            text = (await http.get("/metrics")).text
        assert ready.status_code == 200, ready.text
        label = f'collector="watch-{node_id}"'
        assert f"floodgate_intake_connected{{{label}}} 1" in text
        count = next(
            ln for ln in text.splitlines() if ln.startswith(f"floodgate_intake_batch_messages_sum{{{label}}}")
        )
        # Every message it took (30 here, and whatever the shared broker kept retained for it).
        assert int(count.rsplit(" ", 1)[1]) == c.ingestor.counters.received >= 30, count
        batches = next(
            ln for ln in text.splitlines() if ln.startswith(f"floodgate_intake_batches_total{{{label}}}")
        )
        assert int(batches.rsplit(" ", 1)[1]) == c.intake_metrics.batches.value() >= 1
        assert f"floodgate_intake_redeliveries_total{{{label}}} 0" in text
        assert f"floodgate_intake_commit_seconds_count{{{label}}}" in text
