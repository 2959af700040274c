"""Export to a real InfluxDB (Debian's influxd on a free port, its own data directory)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from cloud.db.schema import readings
from cloud.db.store import Store
from cloud.db.turns import turn as follower_turn
from cloud.influx import NAME, InfluxExport, InfluxSettings, line
from cloud.ingest import Ingestor
from cloud.retention import Retention
from floodgate.clock import ManualClock
from floodgate.wire import Sequencer
from tests.cloud.test_retention import n_rows, send
from tests.helpers import Influxd


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[Influxd]:
    (tmp_path / "influx").mkdir()
    d = Influxd(tmp_path / "influx")
    d.start()
    yield d
    d.stop()


async def count(url: str) -> int:
    async with httpx.AsyncClient() as c:
        r = await c.get(url + "/query", params={"db": "floodgate", "q": "SELECT count(value) FROM reading"})
    series = r.json()["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def test_line_protocol_escapes_tags_and_strings() -> None:
    assert line("hp-1", "lvl 1", "a,b=c", 5, 1.5, 'ba"d') == (
        'reading,node=hp-1,dev=lvl\\ 1,metric=a\\,b\\=c value=1.5,quality="ba\\"d" 5'
    )


async def test_export_survives_an_influxdb_outage_and_holds_back_retention(
    store: Store, influxd: Influxd
) -> None:
    clock = ManualClock(start_ms=1_790_000_000_000)
    ing = Ingestor(store)
    seq = Sequencer("hp-1", boot=1)
    export = InfluxExport(store, clock, InfluxSettings(influxd.url, batch_max=7))
    await export.ensure_database()
    await send(ing, seq, [(1_790_000_000_000 + i, float(i)) for i in range(10)])
    assert await export.run_once() == 0, "the first round marks what it saw"
    while await export.run_once():
        pass
    assert await count(influxd.url) == 10

    influxd.stop()
    await send(ing, seq, [(1_790_000_100_000 + i, float(i)) for i in range(5)])
    await export.run_once()  # marks the new rows
    with pytest.raises(httpx.HTTPError):
        await export.run_once()
    # Retention may not drop raw rows InfluxDB has not got, however old.
    clock.advance(40 * 86_400_000)
    ret = Retention(store, clock, raw_days=30)
    await ret.run_once()
    await ret.run_once()
    assert await n_rows(store, readings) == 5

    influxd.start()
    while await export.run_once():
        pass
    assert await count(influxd.url) == 15
    await ret.run_once()
    assert await n_rows(store, readings) == 0
    export_again = InfluxExport(store, clock, InfluxSettings(influxd.url))
    assert await export_again.run_once() == 0, "the watermark is stored: nothing is sent twice"
    assert await count(influxd.url) == 15


async def test_credentials_go_in_a_header_never_in_the_url(store: Store, tmp_path: Path) -> None:
    (tmp_path / "influx").mkdir()
    d = Influxd(tmp_path / "influx", auth=True)
    d.start()
    password = "pa55-w0rd-in-a-header"
    try:
        async with httpx.AsyncClient() as c:  # the first user of a server with auth on
            q = f"CREATE USER fg WITH PASSWORD '{password}' WITH ALL PRIVILEGES"
            assert (await c.post(d.url + "/query", params={"q": q})).status_code == 200
        urls: list[str] = []

        async def seen(request: httpx.Request) -> None:
            urls.append(str(request.url))

        clock = ManualClock(start_ms=1_790_000_000_000)
        ing = Ingestor(store)
        await send(ing, Sequencer("hp-1", boot=1), [(1_790_000_000_000 + i, float(i)) for i in range(6)])
        wrong = InfluxExport(
            store, clock, InfluxSettings(d.url, username="fg", password="not it"), httpx.AsyncClient()
        )
        await wrong.run_once()  # marks the rows
        with pytest.raises(RuntimeError, match="401"):
            await wrong.run_once()
        http = httpx.AsyncClient(event_hooks={"request": [seen]})
        export = InfluxExport(store, clock, InfluxSettings(d.url, username="fg", password=password), http)
        await export.ensure_database()
        while await export.run_once():
            pass
        async with httpx.AsyncClient(auth=("fg", password)) as c:
            r = await c.get(
                d.url + "/query", params={"db": "floodgate", "q": "SELECT count(value) FROM reading"}
            )
        assert r.json()["results"][0]["series"][0]["values"][0][1] == 6
        assert urls and not any(password in u or "fg" in u.split("?", 1)[-1] for u in urls), urls
    finally:
        d.stop()


async def test_three_collectors_export_each_reading_once(db_url: str, influxd: Influxd) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several collectors share PostgreSQL; SQLite is one collector")
    clock = ManualClock(start_ms=1_790_000_000_000)
    stores = [Store(db_url) for _ in range(3)]
    sent: list[int] = []  # points per /write, from any collector

    async def count_points(request: httpx.Request) -> None:
        if request.url.path == "/write":
            sent.append(len(request.content.splitlines()))

    exports = [
        InfluxExport(
            s,
            clock,
            InfluxSettings(influxd.url, batch_max=7),
            httpx.AsyncClient(event_hooks={"request": [count_points]}),
        )
        for s in stores
    ]
    try:
        await stores[0].migrate()
        await exports[0].ensure_database()
        await send(
            Ingestor(stores[0]),
            Sequencer("hp-1", boot=1),
            [(clock.now_ms() + i, float(i)) for i in range(40)],
        )
        for _ in range(20):  # the three at the same moment, round after round
            await asyncio.gather(*(e.run_once() for e in exports))
        assert sum(sent) == 40, f"each point sent once, not {sum(sent)} ({sent})"
        assert sum(e.exported for e in exports) == 40
        assert await count(influxd.url) == 40
    finally:
        for e in exports:
            await e.http.aclose()
        for s in stores:
            await s.close()


async def test_no_transaction_stays_open_while_the_export_sends(db_url: str, influxd: Influxd) -> None:
    """The export's turn is a session advisory lock in autocommit, not a transaction held over
    the HTTP send (a slow InfluxDB left it idle in transaction)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the turn is PostgreSQL's; SQLite is one collector")
    clock = ManualClock(start_ms=1_790_000_000_000)
    store, probe, other = Store(db_url), Store(db_url), Store(db_url)
    idle: list[int] = []  # sessions idle in a transaction, seen while each /write is sent
    turns: list[bool] = []  # another collector's turn, asked while each /write is sent

    async def look(request: httpx.Request) -> None:
        if request.url.path == "/write":
            q = text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
            )
            async with probe.read() as conn:
                idle.append(int((await conn.execute(q)).scalar_one()))
            async with follower_turn(other, NAME) as mine:
                turns.append(mine)

    export = InfluxExport(
        store,
        clock,
        InfluxSettings(influxd.url, batch_max=7),
        httpx.AsyncClient(event_hooks={"request": [look]}),
    )
    try:
        await store.migrate()
        await export.ensure_database()
        await send(
            Ingestor(store), Sequencer("hp-1", boot=1), [(clock.now_ms() + i, float(i)) for i in range(10)]
        )
        for _ in range(5):  # 10 readings, 7 a batch: two rounds
            await export.run_once()
        assert export.exported == 10
        assert idle and idle == [0] * len(idle)
        assert turns == [False] * len(idle), "still one collector at a time"
        async with follower_turn(other, NAME) as mine:
            assert mine, "released after the round"
    finally:
        await export.http.aclose()
        for s in (store, probe, other):
            await s.close()
