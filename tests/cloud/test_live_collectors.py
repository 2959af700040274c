"""Live dashboard events with three collectors on one PostgreSQL (issue 13 §3).

An alert ingested by one collector (a shared subscription on a real mosquitto hands it to
one of three) reaches the live stream of all three, once each; the listening connection
cut by the server comes back and its clients are told to fetch again; events too large for
one NOTIFY are chunked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from cloud.collector import Collector
from cloud.db import live as live_db
from cloud.db.store import Store
from cloud.live import OUTGOING_MAX, Feed, Hub
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer
from tests.cloud.conftest import _pg_admin, pg_database
from tests.cloud.test_collector import collecting
from tests.cloud.test_watch import running
from tests.helpers import Mosquitto, free_port, wait_until


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    try:
        admin = await _pg_admin()
    except OSError as exc:  # the CI check of db_url fails the run when PostgreSQL is missing
        pytest.skip(f"no PostgreSQL: {exc}")
    async with pg_database(admin, "fg_live") as url:
        yield url


class Watcher:
    """What one live stream (a dashboard's ``GET /api/v1/stream``) receives."""

    def __init__(self, hub: Hub) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._task = asyncio.create_task(self._read(hub))

    async def _read(self, hub: Hub) -> None:
        async for chunk in hub.stream(keepalive_s=60):
            text = chunk.decode()
            if text.startswith("event: "):
                head, data = text.strip().split("\n", 1)
                self.events.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def publish_alert(broker: Mosquitto, node: str, episode: str) -> None:
    seq = Sequencer(node, 1)
    alert = {"id": episode, "dev": "lvl-1", "kind": "flood", "level": "warning", "prev": "clear", "ts": 1}
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        await c.publish(
            f"floodgate/v1/{node}/alert", json.dumps({**seq.envelope(), "alert": alert}).encode(), qos=1
        )


async def test_an_alert_ingested_by_one_collector_reaches_every_collectors_live_stream_once(
    broker: Mosquitto, node_id: str, pg_url: str
) -> None:
    group = f"live-{node_id}"
    async with contextlib.AsyncExitStack() as stack:
        cs: list[Collector] = [
            await stack.enter_async_context(collecting(pg_url, broker, f"{x}-{node_id}", group))
            for x in "abc"
        ]
        await wait_until(lambda: all(c.feed.listening for c in cs), 10, "every collector listening")
        watchers = [Watcher(c.hub) for c in cs]
        stack.push_async_callback(lambda: asyncio.gather(*(w.close() for w in watchers)))
        await wait_until(lambda: all(c.hub.listeners == 1 for c in cs), 5, "streams open")

        episode = new_ulid()
        await publish_alert(broker, node_id, episode)
        await wait_until(lambda: all(w.kinds("alert") for w in watchers), 20, "the alert on every stream")
        (ingester,) = [c for c in cs if c.ingestor.counters.stored]
        await wait_until(lambda: all(w.kinds("ticket") for w in watchers), 20, "its ticket on every stream")
        # A marker sent after them by the same collector arrives after them (one sender's
        # NOTIFYs are delivered in commit order): anything sent twice would be in by then.
        await ingester.feed.publish([("resync", {"reason": "marker"})])
        await wait_until(
            lambda: all({"reason": "marker"} in w.kinds("resync") for w in watchers), 10, "the marker"
        )
        for w in watchers:
            alerts = w.kinds("alert")
            assert [(a["node"], a["id"], a["level"]) for a in alerts] == [(node_id, episode, "warning")]
            assert [t["action"] for t in w.kinds("ticket")] == ["open"]


async def test_a_dashboard_of_one_collector_hears_the_other_over_http_and_its_stream_ends_when_revoked(
    broker: Mosquitto, node_id: str, pg_url: str
) -> None:
    """Through the API: a live stream opened on B hears an alert whichever collector took it, and
    ends when its token is revoked through A."""
    group = f"http-{node_id}"
    async with (
        running(pg_url, broker, f"ha-{node_id}", group) as a,
        running(pg_url, broker, f"hb-{node_id}", group) as b,
    ):
        await wait_until(lambda: a.feed.listening and b.feed.listening, 10, "listening")
        await b.auth.add_user("chen", "viewer", "a long enough password", None)
        token = await b.auth.issue_token("chen")
        token_id = (await b.auth.authenticate(token)).token_id
        assert token_id is not None and b.api is not None
        events: list[tuple[str, dict[str, Any]]] = []

        async def read() -> None:
            url = f"http://127.0.0.1:{b.api.port}/api/v1/stream"  # type: ignore[union-attr]
            async with (
                httpx.AsyncClient(timeout=30) as http,
                http.stream("GET", url, params={"token": token}) as r,
            ):
                kind = None
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        kind = line.removeprefix("event: ")
                    elif line.startswith("data: ") and kind is not None:
                        events.append((kind, json.loads(line.removeprefix("data: "))))

        reader = asyncio.create_task(read())
        try:
            await wait_until(lambda: ("hello", {}) in events, 10, "the stream open")
            episode = new_ulid()
            await publish_alert(broker, node_id, episode)
            await wait_until(lambda: any(k == "alert" for k, _ in events), 20, "the alert on B's stream")
            assert [d["id"] for k, d in events if k == "alert"] == [episode]
            await a.auth.revoke(token_id)
            await asyncio.wait_for(reader, 15)  # the response ends after its ``end`` event
            assert events[-1] == ("end", {"reason": "revoked"})
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def test_the_listener_comes_back_after_the_server_ends_its_connection_and_clients_refetch(
    pg_url: str,
) -> None:
    store = Store(pg_url)
    hub = Hub()
    feed = Feed(hub, store, check_s=0.5)
    task = asyncio.create_task(feed.run())
    watcher = Watcher(hub)
    admin = await _pg_admin()
    try:
        await wait_until(lambda: feed.listening and hub.listeners == 1, 10, "listening")
        assert feed.listener is not None
        await feed.publish([("state", {"node": "n1", "online": True})])
        await wait_until(lambda: watcher.kinds("state"), 10, "the first event")
        pid = feed.listener.backend_pid()
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        await wait_until(lambda: feed.listener is not None and feed.listener.connections == 2, 15, "back")
        await wait_until(lambda: watcher.kinds("resync"), 5, "clients told to fetch again")
        assert "reconnected" in watcher.kinds("resync")[0]["reason"]
        await feed.publish([("state", {"node": "n2", "online": False})])
        await wait_until(lambda: len(watcher.kinds("state")) == 2, 10, "events flow again")
        assert [s["node"] for s in watcher.kinds("state")] == ["n1", "n2"]
    finally:
        await admin.close()
        await watcher.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_events_are_chunked_under_notifys_limit_and_one_too_large_becomes_a_resync(
    pg_url: str,
) -> None:
    store = Store(pg_url)
    hub = Hub()
    feed = Feed(hub, store)
    task = asyncio.create_task(feed.run())
    watcher = Watcher(hub)
    try:
        events = [
            ("event", {"node": f"n{i}", "type": "x", "detail": {"note": "水" * 100}}) for i in range(200)
        ]
        huge = ("event", {"node": "big", "detail": {"blob": "x" * 9000}})
        payloads = feed.pack([*events, huge])
        assert len(payloads) > 1
        assert all(len(p.encode()) <= live_db.PAYLOAD_MAX for p in payloads)
        await wait_until(lambda: feed.listening and hub.listeners == 1, 10, "listening")
        await feed.publish([*events, huge])
        await wait_until(lambda: watcher.kinds("resync"), 10, "everything through")
        assert [e["node"] for e in watcher.kinds("event")] == [f"n{i}" for i in range(200)], "all, in order"
        assert "too large" in watcher.kinds("resync")[0]["reason"]
    finally:
        await watcher.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_on_sqlite_the_feed_is_this_process_alone(tmp_path: Any) -> None:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    hub = Hub()
    feed = Feed(hub, store)
    watcher = Watcher(hub)
    try:
        assert not feed.shared and feed.listening
        await wait_until(lambda: hub.listeners == 1, 5, "stream open")
        await feed.publish([("alert", {"node": "n", "id": "a"})])
        await wait_until(lambda: watcher.kinds("alert"), 5, "straight to the hub")
    finally:
        await watcher.close()
        await store.close()


async def test_a_notify_that_fails_still_reaches_this_collectors_streams_and_a_backlog_gives_way(
    pg_url: str,
) -> None:
    store = Store(pg_url)
    hub = Hub()
    feed = Feed(hub, store)
    watcher = Watcher(hub)
    task: asyncio.Task[None] | None = None
    real = store.engine
    try:
        await wait_until(lambda: hub.listeners == 1, 5, "stream open")
        # Nothing sends yet (the sender runs with ``run``): a backlog past OUTGOING_MAX gives way
        # to one resync, so a database away for long cannot fill the memory.
        await feed.publish([("state", {"node": f"n{i}", "online": True}) for i in range(OUTGOING_MAX)])
        await feed.publish([("state", {"node": "one-more", "online": True})])
        # The database refuses the NOTIFY (here: an engine pointed at a port nobody listens on).
        store.engine = create_async_engine(
            f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none", connect_args={"timeout": 2}
        )
        task = asyncio.create_task(feed.run())
        await wait_until(lambda: watcher.kinds("resync"), 15, "the resync, on this collector's stream")
        assert watcher.kinds("resync") == [{"reason": "the live feed fell behind"}]
        assert watcher.kinds("state") == []
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await watcher.close()
        await store.engine.dispose()
        store.engine = real
        await store.close()
