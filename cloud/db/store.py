"""The collector's storage: one code path for SQLite (default) and PostgreSQL.

SQLAlchemy Core over asyncio drivers (aiosqlite, asyncpg): the engine, the
migrations' runner, and the hot path of a batch (the message ledger, readings,
nodes and devices heard from), with the splitting of a batch the database
refuses. The tables are in ``cloud.db.schema``, their migrations in
``cloud.db.migrations``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import asyncpg.exceptions._base
import msgspec
from sqlalchemy import RowMapping, Table, event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cloud.db.migrations import MIGRATIONS
from cloud.db.schema import messages, schema_version

READING_COLUMNS = ("series", "ts", "value", "quality")  # a reading row's tuple, in insert order
SERIES_CACHE_MAX = 1_000_000  # series ids remembered (one per metric of each device)
LEDGER_COLUMNS = ("msg_id", "node", "boot", "seq", "kind", "ts", "received_ms")
_LEDGER_PG_TYPES = ("text", "text", "int8", "int8", "text", "int8", "int8")
LETTER_COLUMNS = ("topic", "payload", "code", "detail", "received_ms")
_LETTER_SQLITE = f"INSERT INTO dead_letters ({', '.join(LETTER_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"  # noqa: S608
_LETTER_PG = f"INSERT INTO dead_letters ({', '.join(LETTER_COLUMNS)}) VALUES ($1, $2, $3, $4, $5)"  # noqa: S608
# A message's readings for ``Store.store_batch``: its index in the batch's ledger, its reading rows.
Part = tuple[int, Sequence[tuple[Any, ...]]]
# A message the database refused: its index in the batch's ledger, the database's reason.
Refused = tuple[int, str]
# A message's (by ledger index) devices' newest reading times, (node, dev) -> ms.
Times = Callable[[int], Mapping[tuple[str, str], int]]
# Reading rows per statement of a batch (``Store.store_batch``): a refused value wastes what
# its chunk stored before it, and each chunk costs a statement. SQLite's statements are
# cheap, and it does not say which row it refused (the chunk is halved). On PostgreSQL a
# COPY costs about 2 ms of CPU to set up, more than a chunk of 1,000 rows spares, and the
# refusal names the row (``refused_row``): one chunk, the batch (bench/ingest.py).
READINGS_CHUNK = {"postgresql": 1_000_000, "sqlite": 250}
_KNOWN_IDS_SQLITE = "SELECT msg_id FROM messages WHERE msg_id IN (SELECT value FROM json_each(?))"
_FORGET_IDS_SQLITE = "DELETE FROM messages WHERE msg_id IN (SELECT value FROM json_each(?))"
# PostgreSQL: how often the nodes' and devices' times heard by telemetry are written
# (``Store.note_heard``): the most they lag behind what is stored.
HEARD_FLUSH_S = 1.0
KNOWN_NODES_MAX = 1_000_000  # nodes a collector remembers having a row (``Store.ensure_nodes``)

log = logging.getLogger("floodgate.cloud.db")


# What repositories take and give: a connection (in a transaction, from
# ``Store.begin`` or ``Store.read``) and a row by column name. Callers outside
# ``cloud.db`` name these, never SQLAlchemy's.
Conn = AsyncConnection
Row = RowMapping


def _insert(dialect: str, table: Table) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def insert_into(conn: AsyncConnection, table: Table) -> Any:
    """``conn``'s dialect's INSERT into ``table``, which knows ON CONFLICT."""
    return _insert(conn.dialect.name, table)


def greatest(dialect: str, a: Any, b: Any) -> Any:
    """The larger of two values in ``dialect``, ignoring a NULL (as PostgreSQL's GREATEST does)."""
    if dialect == "postgresql":
        return func.greatest(a, b)
    return func.max(func.coalesce(a, b), func.coalesce(b, a))


def savepoint(conn: AsyncConnection) -> Any:
    """A savepoint in ``conn``'s transaction, as an async context: rolled back to if the block raises."""
    return conn.begin_nested()


def for_update(conn: AsyncConnection, q: Any) -> Any:
    """``q`` locking the rows it reads until the transaction ends (PostgreSQL; SQLite has one
    writer at a time already, BEGIN IMMEDIATE)."""
    return q.with_for_update() if conn.dialect.name == "postgresql" else q


@dataclass
class Heard:
    """Times a batch heard: node → newest receive time, (node, dev) → newest reading time.

    On PostgreSQL a batch does not write them in its own transaction (that took
    a row lock on every node and device of the batch, held to its commit, and
    batches of a shared consumer, which hold most nodes each, waited on each
    other): they are collected here, handed to ``Store.note_heard`` once the
    batch has committed, and written by the store's flush (``flush_heard``).
    """

    nodes: dict[str, int] = field(default_factory=dict)
    devices: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, nodes: Mapping[str, int], devices: Mapping[tuple[str, str], int]) -> None:
        """Each time kept if newer than the one held."""
        mine = self.nodes
        for node, t in nodes.items():
            if t > mine.get(node, -1):
                mine[node] = t
        devs = self.devices
        for key, t in devices.items():
            if t > devs.get(key, -1):
                devs[key] = t

    def __bool__(self) -> bool:
        return bool(self.nodes or self.devices)


class Store:
    """The database; ``url`` is ``sqlite:///path`` or ``postgresql://…``."""

    def __init__(self, url: str) -> None:
        self.url = url
        # (node, dev, metric) -> series id; ids never change once committed.
        self.series_ids: dict[tuple[str, str, str], int] = {}
        # Times heard by committed batches, not yet written (PostgreSQL; ``note_heard``).
        self._pending = Heard()
        self._flush_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._known_nodes: set[str] = set()  # nodes this collector knows have a row
        self.engine: AsyncEngine = create_async_engine(_async_url(url), **_engine_options(url))
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        else:
            event.listen(self.engine.sync_engine.pool, "checkout", _no_transaction_left_open)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def migrate(self, upto: int | None = None) -> int:
        """Apply pending migrations (all, or up to ``upto``); returns the schema version."""
        target = len(MIGRATIONS) if upto is None else upto
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(4242)"))
            await conn.run_sync(schema_version.create, checkfirst=True)
            current = (await conn.execute(select(func.max(schema_version.c.version)))).scalar() or 0
            for version, step in enumerate(MIGRATIONS[current:target], start=current + 1):
                await conn.run_sync(step)
                await conn.execute(schema_version.insert().values(version=version, applied_ms=_now()))
            return max(current, target)

    @property
    def defer_heard(self) -> bool:
        """Whether telemetry's node and device times are written after the batch (``Heard``).

        PostgreSQL only: SQLite has one writer, a batch waits for no other's row
        locks, and it keeps writing them in the batch's own transaction.
        """
        return self.dialect == "postgresql"

    async def close(self) -> None:
        """The times still pending written (``flush_heard``), then the engine closed."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        try:
            await self.flush_heard()
        except Exception:
            log.exception("the nodes' and devices' last heard times could not be written at shutdown")
        await self.engine.dispose()

    def note_heard(self, heard: Heard) -> None:
        """Times of a committed batch (``Heard``), written within ``HEARD_FLUSH_S`` by a task
        of the store's own (started here, on the first), coalesced per node and device."""
        if not heard:
            return
        self._pending.add(heard.nodes, heard.devices)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every())

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(HEARD_FLUSH_S)
            try:
                await self.flush_heard()
            except Exception as exc:  # the database gone a while: kept, tried again
                log.warning("writing the nodes' and devices' last heard times failed (%s); will retry", exc)

    async def flush_heard(self) -> None:
        """The pending times (``note_heard``) written, in a transaction of their own.

        ``nodes.last_seen_ms`` (a node unknown is created online, as by its first
        message) and then ``devices.last_reading_ms``, each in key order and only
        ever moved on (GREATEST). Deadlock-free with the batches: this transaction
        locks nodes rows in node order, then devices rows in (node, dev) order, and
        takes no other lock; a batch with non-telemetry messages locks its nodes
        rows first, in node order (``lock_nodes``), writes only those nodes'
        devices, and takes the ticket lock after (``lock_tickets``): no one waits
        for a nodes row while holding a devices row, or for a ticket lock while
        another waits on it for a nodes row. If writing fails the times are kept
        for the next flush (a newer one heard meanwhile wins).
        """
        async with self._flush_lock:
            todo, self._pending = self._pending, Heard()
            if not todo:
                return
            try:
                async with self.engine.begin() as conn:
                    await self.touch_nodes(conn, todo.nodes)
                    await self.devices_read(conn, todo.devices)
            except BaseException:
                todo.add(self._pending.nodes, self._pending.devices)
                self._pending = todo
                raise
            self._remember_nodes(todo.nodes)

    def _remember_nodes(self, names: Iterable[str]) -> None:
        if len(self._known_nodes) > KNOWN_NODES_MAX:
            self._known_nodes.clear()
        self._known_nodes.update(names)

    async def ensure_nodes(self, heard: Mapping[str, int]) -> None:
        """PostgreSQL: a row for each node of ``heard`` (node → receive time) this collector
        does not know to have one, created online as by its first message, in a transaction
        of its own before the batch that names it (``INSERT … ON CONFLICT DO NOTHING``, in
        node order: an existing row is not locked). Readers see a node as soon as its first
        batch commits, not only after the next ``flush_heard``; no table refers to ``nodes``
        (no foreign key), so the batch itself would not need the row."""
        todo = {n: t for n, t in heard.items() if n not in self._known_nodes}
        if not todo or not self.defer_heard:
            return
        select_, params = self._rows(sorted(todo.items()), ("text", "int8"))
        async with self.engine.begin() as conn:
            await self._run(
                conn,
                f"INSERT INTO nodes (node, online, last_seen_ms) SELECT c0, true, c1 FROM ({select_}) AS s "  # noqa: S608
                "WHERE true ORDER BY c0 ON CONFLICT (node) DO NOTHING",
                params,
            )
        self._remember_nodes(todo)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed when the block ends (rolled back if it raises)."""
        async with self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reading: on SQLite it does not take the write lock."""
        async with self.engine.connect() as conn:
            await conn.execution_options(floodgate_read=True)
            yield conn

    def insert(self, table: Table) -> Any:
        """The dialect's INSERT, which knows ON CONFLICT."""
        return _insert(self.dialect, table)

    async def _driver(self, conn: AsyncConnection) -> Any:
        """The driver's own connection (aiosqlite or asyncpg), inside ``conn``'s transaction.

        A statement sent to it directly is one round trip to the database
        thread or server. Through SQLAlchemy's asyncio adaptation it is three
        or four (cursor, execute, fetch, close), each waiting for a turn of the
        event loop, which at ingest rates is busy receiving: for the hot path
        that cost more than the database's own work.
        """
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        started = driver.is_in_transaction() if self.dialect == "postgresql" else driver.in_transaction
        if not started:  # SQLAlchemy begins lazily, at its first statement
            await conn.exec_driver_sql("SELECT 1")
        return driver

    async def _run(self, conn: AsyncConnection, sql: str, params: Sequence[Any]) -> list[Any]:
        """One statement on the driver (``_driver``); its rows."""
        driver = await self._driver(conn)
        if self.dialect == "postgresql":
            return list(await driver.fetch(sql, *params))
        return list(await driver.execute_fetchall(sql, params))

    def _rows(self, rows: Sequence[tuple[Any, ...]], pg_types: Sequence[str]) -> tuple[str, list[Any]]:
        """A SELECT of ``rows`` as columns c0, c1, …, and its parameters.

        PostgreSQL gets one array per column (``unnest``), SQLite one JSON
        array that it takes apart in C, without the GIL (``json_each``):
        either way one parameter list for any number of rows, not a bind per
        row in Python.
        """
        names = [f"c{i}" for i in range(len(pg_types))]
        if self.dialect == "postgresql":
            arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(pg_types, start=1))
            columns: list[Any] = [list(c) for c in zip(*rows, strict=True)]
            return f"SELECT * FROM unnest({arrays}) AS s({', '.join(names)})", columns  # noqa: S608 (no input)
        picks = ", ".join(f"value->>{i} AS {n}" for i, n in enumerate(names))
        return f"SELECT {picks} FROM json_each(?)", [msgspec.json.encode(rows).decode()]  # noqa: S608

    async def _copy_readings(self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> None:
        """PostgreSQL: readings (``READING_COLUMNS`` tuples) by COPY, in ``conn``'s transaction.

        asyncpg's executemany costs several times as much per row.
        """
        if rows:
            driver = await self._driver(conn)
            await driver.copy_records_to_table("readings", records=rows, columns=list(READING_COLUMNS))

    async def resolve_series(self, keys: set[tuple[str, str, str]]) -> None:
        """Series ids for ``keys`` (node, dev, metric) into ``series_ids``, creating new series.

        In a transaction of its own, committed before the ids are remembered:
        a series is only ever named by an id the database has. A series whose
        readings then fail to commit stays, empty, which is harmless.
        """
        if len(self.series_ids) + len(keys) > SERIES_CACHE_MAX:
            self.series_ids.clear()
        todo = sorted(keys - self.series_ids.keys())
        if not todo:
            return
        select_, params = self._rows(todo, ("text", "text", "text"))
        async with self.engine.begin() as conn:
            # In key order, so two collectors creating the same series lock in the same order.
            await self._run(
                conn,
                f"INSERT INTO series (node, dev, metric) SELECT c0, c1, c2 FROM ({select_}) AS s"  # noqa: S608
                " WHERE true ORDER BY c0, c1, c2 ON CONFLICT (node, dev, metric) DO NOTHING",
                params,
            )
            found = await self._run(
                conn,
                f"SELECT series.id, c0, c1, c2 FROM ({select_}) AS s JOIN series"  # noqa: S608
                " ON series.node = c0 AND series.dev = c1 AND series.metric = c2",
                params,
            )
        self.series_ids.update({(n, d, m): int(i) for i, n, d, m in found})

    async def store_batch(
        self,
        conn: AsyncConnection,
        ledger: Sequence[tuple[Any, ...]],
        rows: Mapping[str, Sequence[tuple[Any, ...]]],
        newest: dict[tuple[str, str], int] | None,
        times: Times,
        heard: Heard | None = None,
    ) -> tuple[set[str], list[Refused]]:
        """What grows with a batch, in ``conn``'s transaction; returns the ids new to the ledger and
        kept, and the messages the database refused.

        Given ``heard`` (PostgreSQL), the nodes heard from and the devices' times
        are added to it, for the caller to hand to ``note_heard`` once committed,
        instead of being written here: the batch locks no nodes or devices row.

        ``ledger``: a ``LEDGER_COLUMNS`` tuple per message (its first copy), in
        order. Of the new ones: their readings (``rows`` by msg_id,
        ``READING_COLUMNS`` tuples), their nodes heard from, and, given
        ``newest``, the devices' reading times. Readings first: they only add
        rows, so batches committing side by side copy theirs in parallel; the
        rows batches share come after, in key order.

        Readings go in chunks (``READINGS_CHUNK``), each under a savepoint: a
        chunk the database refuses is rolled back to it alone and tried in
        parts (``_copy_apart``) down to the messages refused, which leave the
        ledger again; so a refused value costs its chunk twice, not the batch.
        Their (ledger index, reason) are returned, and the devices' times are
        then those of the messages kept (``times``). A refusal anywhere else,
        and any error not about the data (``refusal``), is raised.

        On SQLite all of it is one call on the database thread: each call to
        it waits for a turn of a busy event loop and for the GIL, which cost
        more than the statements did.
        """
        if not ledger:
            return set(), []
        driver = await self._driver(conn)
        if self.dialect == "sqlite":
            # aiosqlite's own way to run a function on its thread (pinned <0.23).
            done: tuple[set[str], list[Refused]] = await driver._execute(
                self._store_batch_sqlite, driver._conn, ledger, rows, newest, times
            )
            return done
        new = await self.new_message_ids(conn, ledger)
        fresh = [(i, m) for i, m in enumerate(ledger) if m[0] in new]
        refused: list[Refused] = []
        for chunk in _chunks([(i, rows.get(m[0], ())) for i, m in fresh], READINGS_CHUNK["postgresql"]):
            await self._copy_apart(driver, chunk, refused)
        gone: set[str] = set()
        if refused:
            gone = {ledger[i][0] for i, _ in refused}
            await driver.execute("DELETE FROM messages WHERE msg_id = ANY($1::text[])", list(gone))
            new -= gone
            newest = None if newest is None else kept_newest(newest, ledger, times, refused)
        # Heard from every message kept, the ledger's own too: a delivery again of what a collector
        # committed and died before writing its heard times (``flush_heard``) is all there is of them.
        nodes = _heard([m for m in ledger if m[0] not in gone])
        if heard is not None:
            heard.add(nodes, newest or {})
            return new, refused
        await self.touch_nodes(conn, nodes)
        if newest is not None:
            await self.devices_read(conn, newest)
        return new, refused

    async def _copy_apart(
        self,
        driver: Any,
        units: Sequence[Part],
        refused: list[Refused],
        reason: str | None = None,
        row: int | None = None,
    ) -> None:
        """PostgreSQL: the readings of ``units`` copied under a savepoint (or, refused for
        ``reason``, in parts, each under its own), the refused ones appended to ``refused``.

        ``row``, the reading the refusal names (``refused_row``), points at the
        suspect: the parts are then what comes before it, it alone, and what
        follows (three tries, not two per halving). Halves otherwise. A wrong
        hint costs a try, never a message: each part is tried on its own.
        """
        if reason is not None and len(units) == 1:
            refused.append((units[0][0], reason))
            return
        parts = (
            [units]
            if reason is None
            else [p for _, p in (_halves(units) if row is None else _around(units, row))]
        )
        for part in parts:
            records = [r for _, rs in part for r in rs]
            if not records:
                continue
            # Not released: a savepoint lives to the commit, and one of the same
            # name later hides it. One round trip, not two.
            await driver.execute("SAVEPOINT readings")
            try:
                await driver.copy_records_to_table("readings", records=records, columns=list(READING_COLUMNS))
            except Exception as exc:
                why = refusal(exc)
                if why is None:
                    raise
                await driver.execute("ROLLBACK TO SAVEPOINT readings")
                await self._copy_apart(driver, part, refused, why, refused_row(exc))

    async def commit_batch(
        self,
        ledger: Sequence[tuple[Any, ...]],
        rows: Mapping[str, Sequence[tuple[Any, ...]]],
        newest: dict[tuple[str, str], int],
        times: Times,
        letter: Callable[[int, str], dict[str, Any]],
        heard: Heard | None = None,
    ) -> tuple[set[str], list[dict[str, Any]]]:
        """``store_batch`` in a transaction of its own: a batch of telemetry alone.

        ``heard``: as ``store_batch``'s (PostgreSQL; on SQLite the times are
        written in the transaction).

        The refused messages' dead letters (``letter(index, reason)``: a
        ``dead_letters`` row) go in the same transaction; returns the ids
        stored and the dead letters.

        On SQLite the whole transaction, BEGIN IMMEDIATE to COMMIT, is one call
        on the database thread instead of six or seven. On PostgreSQL it is
        SQLAlchemy's transaction, the statements sent through the driver inside
        it: with asyncpg's own, SQLAlchemy's statements ran in a savepoint of its
        own, and a commit cancelled again while it rolled back (a lost MQTT link
        cancels the commits in flight) went back to the pool *idle in
        transaction*, holding its nodes' row locks for good: every collector's
        next batch of those nodes waited on them and nothing of theirs was
        stored. The pool's reset rolls back SQLAlchemy's transaction, whole.
        """
        if not ledger:
            return set(), []
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            if self.dialect == "postgresql":
                async with conn.begin():
                    new, refused = await self.store_batch(conn, ledger, rows, newest, times, heard)
                    letters = [letter(i, why) for i, why in refused]
                    if letters:
                        await driver.executemany(_LETTER_PG, [_letter_row(d) for d in letters])
                    return new, letters
            done: tuple[set[str], list[dict[str, Any]]] = await driver._execute(
                self._commit_batch_sqlite, driver._conn, ledger, rows, newest, times, letter
            )
            return done

    def _commit_batch_sqlite(
        self,
        db: sqlite3.Connection,
        ledger: Sequence[tuple[Any, ...]],
        rows: Mapping[str, Sequence[tuple[Any, ...]]],
        newest: dict[tuple[str, str], int],
        times: Times,
        letter: Callable[[int, str], dict[str, Any]],
    ) -> tuple[set[str], list[dict[str, Any]]]:
        db.execute("BEGIN IMMEDIATE")
        try:
            new, refused = self._store_batch_sqlite(db, ledger, rows, newest, times)
            letters = [letter(i, why) for i, why in refused]
            if letters:
                db.executemany(_LETTER_SQLITE, [_letter_row(d) for d in letters])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return new, letters

    def _store_batch_sqlite(
        self,
        db: sqlite3.Connection,
        ledger: Sequence[tuple[Any, ...]],
        rows: Mapping[str, Sequence[tuple[Any, ...]]],
        newest: dict[tuple[str, str], int] | None,
        times: Times,
    ) -> tuple[set[str], list[Refused]]:
        # The ids the ledger has already, most often none: one step of SQLite.
        # RETURNING the new ones would take a step, and take the GIL back from
        # the busy event loop, for each message. A writer holds BEGIN IMMEDIATE:
        # nothing else adds to the ledger in between.
        ids = msgspec.json.encode([m[0] for m in ledger]).decode()
        known = {r[0] for r in db.execute(_KNOWN_IDS_SQLITE, (ids,)).fetchall()}
        fresh = [(i, m) for i, m in enumerate(ledger) if m[0] not in known]
        if not fresh:
            return set(), []
        db.execute(*self._ledger_sql([m for _, m in fresh], returning=False))
        refused: list[Refused] = []
        for chunk in _chunks([(i, rows.get(m[0], ())) for i, m in fresh], READINGS_CHUNK["sqlite"]):
            self._insert_apart_sqlite(db, chunk, refused)
        new = {m[0] for _, m in fresh}
        if refused:
            gone = {ledger[i][0] for i, _ in refused}
            db.execute(_FORGET_IDS_SQLITE, (msgspec.json.encode(sorted(gone)).decode(),))
            new -= gone
            newest = None if newest is None else kept_newest(newest, ledger, times, refused)
        db.execute(*self._touch_sql(_heard([m for _, m in fresh if m[0] in new])))
        if newest:
            db.execute(*self._devices_sql(newest))
        return new, refused

    def _insert_apart_sqlite(
        self, db: sqlite3.Connection, units: Sequence[Part], refused: list[Refused], reason: str | None = None
    ) -> None:
        """SQLite: ``_copy_apart``'s work, in halves (SQLite does not say which row it refused).

        No savepoint: a statement SQLite refuses (a constraint, a trigger's
        ``RAISE(ABORT)``) is undone alone, and the transaction goes on; one
        that ended the transaction is raised.
        """
        if reason is not None and len(units) == 1:
            refused.append((units[0][0], reason))
            return
        for part in [units] if reason is None else [p for _, p in _halves(units)]:
            records = [r for _, rs in part for r in rs]
            if not records:
                continue
            select_, params = self._rows(records, ["text"] * len(READING_COLUMNS))  # one JSON array
            try:
                db.execute(f"INSERT INTO readings ({', '.join(READING_COLUMNS)}) {select_}", params)
            except Exception as exc:
                why = refusal(exc)
                if why is None or not db.in_transaction:
                    raise
                self._insert_apart_sqlite(db, part, refused, why)

    def _ledger_sql(self, rows: Sequence[tuple[Any, ...]], returning: bool = True) -> tuple[str, list[Any]]:
        select_, params = self._rows(rows, _LEDGER_PG_TYPES)
        sql = (
            f"INSERT INTO messages ({', '.join(LEDGER_COLUMNS)}) SELECT * FROM ({select_}) AS s WHERE true "  # noqa: S608
            "ON CONFLICT (msg_id) DO NOTHING"
        )
        return sql + (" RETURNING msg_id" if returning else ""), params

    def _touch_sql(self, heard: dict[str, int]) -> tuple[str, list[Any]]:
        select_, params = self._rows(sorted(heard.items()), ("text", "int8"))
        newer = "GREATEST(nodes.last_seen_ms, excluded.last_seen_ms)"
        if self.dialect == "sqlite":
            newer = "max(coalesce(nodes.last_seen_ms, excluded.last_seen_ms), excluded.last_seen_ms)"
        # "WHERE true": SQLite's parser needs it between SELECT … FROM and ON CONFLICT.
        sql = (
            f"INSERT INTO nodes (node, online, last_seen_ms) SELECT c0, true, c1 FROM ({select_}) AS s "  # noqa: S608
            f"WHERE true ORDER BY c0 ON CONFLICT (node) DO UPDATE SET last_seen_ms = {newer}"
        )
        return sql, params

    def _devices_sql(self, newest: dict[tuple[str, str], int]) -> tuple[str, list[Any]]:
        """SQLite's: one UPDATE … FROM the rows (PostgreSQL's is per row, in order: ``devices_read``)."""
        select_, params = self._rows(
            sorted((n, d, t) for (n, d), t in newest.items()), ("text", "text", "int8")
        )
        sql = (
            "UPDATE devices SET last_reading_ms = max(coalesce(last_reading_ms, s.c2), s.c2) "  # noqa: S608
            f"FROM ({select_}) AS s WHERE devices.node = s.c0 AND devices.dev = s.c1"
        )
        return sql, params

    async def touch_nodes(self, conn: AsyncConnection, heard: dict[str, int]) -> None:
        """Nodes heard from (node → newest receive time): created online, or their time moved on.

        One statement; rows in node order, so two collectors lock in the same order.
        Every row named is locked (an ON CONFLICT DO UPDATE locks the conflicting row
        whether or not it changes it): on PostgreSQL only ``flush_heard`` calls it.
        """
        if heard:
            await self._run(conn, *self._touch_sql(heard))

    async def devices_read(self, conn: AsyncConnection, newest: dict[tuple[str, str], int]) -> None:
        """Known devices' newest reading time ((node, dev) → ms) moved on; unknown ones are skipped."""
        if not newest:
            return
        if self.dialect == "postgresql":
            # One statement per row, pipelined in one round trip, in (node, dev)
            # order: two collectors lock devices in the same order.
            driver = await self._driver(conn)
            await driver.executemany(
                "UPDATE devices SET last_reading_ms = GREATEST(last_reading_ms, $3)"
                " WHERE node = $1 AND dev = $2",
                sorted((n, d, t) for (n, d), t in newest.items()),
            )
            return
        await self._run(conn, *self._devices_sql(newest))

    async def lock_tickets(self, conn: AsyncConnection) -> None:
        """Serialize ticket changes across collectors until ``conn``'s transaction ends.

        Alert transitions, people's actions and escalations each take it before
        they touch an episode or a ticket, so concurrent batches and collectors
        never wait on each other's rows in opposite orders (no deadlock) and each
        sees what the one before it committed. SQLite has one writer already.
        """
        if self.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(4243)"))

    async def lock_nodes(self, conn: AsyncConnection, names: Iterable[str]) -> None:
        """PostgreSQL: lock the ``nodes`` rows a batch will write, in node order, before it writes any.

        The nodes of its non-telemetry messages only (``Ingestor._write``):
        telemetry's times are written apart (``Heard``). Taken first in the
        transaction, before the ticket lock (``lock_tickets``), which no holder
        of it follows with a nodes row: no deadlock between the two.

        A batch updates nodes in message order (states, births, heartbeats);
        two batches doing so in opposite orders would deadlock. A node new to
        the batch is inserted here, in the same order, as a row the batch's
        own writes then fill in: locking only the rows that exist let a batch
        insert a new node out of order (its state, before the ordered touch of
        every node heard) and deadlock with one waiting for that row.
        """
        if self.dialect == "postgresql":
            ordered = sorted(set(names))
            if ordered:
                await conn.execute(
                    text(
                        "INSERT INTO nodes (node, online)"
                        " SELECT n, false FROM unnest(CAST(:names AS text[])) AS n ORDER BY n"
                        " ON CONFLICT (node) DO UPDATE SET node = excluded.node"
                    ),
                    {"names": ordered},
                )

    def greatest(self, a: Any, b: Any) -> Any:
        """The larger of two values, ignoring a NULL (as PostgreSQL's GREATEST does)."""
        return greatest(self.dialect, a, b)

    async def new_message_ids(self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> set[str]:
        """Record messages in the ledger (``LEDGER_COLUMNS`` tuples); returns the ids not seen before.

        One statement for the whole batch (``_rows``): the ledger is on every message's path.
        """
        if not rows:
            return set()
        return {r[0] for r in await self._run(conn, *self._ledger_sql(rows))}

    async def seq_gaps(self) -> list[dict[str, Any]]:
        """Per (node, boot): how many sequence numbers are missing between its first and highest.

        A boot's numbering starts where its first message (the lowest ``seq``
        stored) says, not at 0: a node may number a boot from anywhere, and
        a message lost before the first one received cannot be told from one
        never sent.
        """
        q = select(
            messages.c.node,
            messages.c.boot,
            func.min(messages.c.seq).label("first_seq"),
            func.max(messages.c.seq).label("max_seq"),
            func.count().label("n"),
        ).group_by(messages.c.node, messages.c.boot)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            {
                "node": r.node,
                "boot": r.boot,
                "first_seq": r.first_seq,
                "max_seq": r.max_seq,
                "missing": r.max_seq - r.first_seq + 1 - r.n,
            }
            for r in rows
        ]


# SQLSTATE classes in which PostgreSQL refuses the values of a statement, not the
# statement itself: data exceptions (a NUL in text, a number out of range),
# integrity constraints, program limits (an index row too long).
_REFUSING_CLASSES = ("22", "23", "54")


def _root(exc: BaseException) -> BaseException:
    """The driver's own error under SQLAlchemy's wrapper and the driver adapter's."""
    root = exc
    while True:
        inner = getattr(root, "orig", None) or root.__cause__
        if not isinstance(inner, BaseException) or inner is root:
            return root
        root = inner


def refusal(exc: BaseException) -> str | None:
    """The database's reason when ``exc`` refused the data of a statement, else None.

    A refusal comes again with the same values and never with others: the
    messages that carry them are to be set aside. Anything else (a connection
    lost, a lock or deadlock, a serialisation failure, a missing table, a full
    disk) says nothing about the data, and the same batch may commit once it
    is over. Errors of Python's own (a ``KeyError`` on a value the code does
    not know, an integer too large for SQLite) are of the data.
    """
    root = _root(exc)
    name = type(root).__name__
    if isinstance(root, asyncpg.PostgresError):
        sqlstate = getattr(root, "sqlstate", None) or ""
        return f"{name} ({sqlstate}): {root}" if sqlstate[:2] in _REFUSING_CLASSES else None
    if isinstance(root, asyncpg.exceptions._base.DataError):  # a value asyncpg cannot encode
        return f"{name}: {root}"
    if isinstance(root, sqlite3.IntegrityError | sqlite3.DataError):
        return f"{name}: {root}"
    if isinstance(root, sqlite3.Error | asyncpg.InterfaceError | OSError | TimeoutError):
        return None  # locked, busy, I/O, a connection gone: nothing to do with the data
    if isinstance(root, SQLAlchemyError) or not isinstance(root, Exception):
        return None  # the pool, the engine, cancellation: not the data either
    return f"{name}: {root}"


def _chunks(units: Sequence[Part], rows: int) -> list[Sequence[Part]]:
    """``units`` in order, cut after each reaches ``rows`` reading rows."""
    out: list[Sequence[Part]] = []
    start = count = 0
    for k, (_, rs) in enumerate(units):
        count += len(rs)
        if count >= rows:
            out.append(units[start : k + 1])
            start, count = k + 1, 0
    if start < len(units):
        out.append(units[start:])
    return out


def _halves(units: Sequence[Part]) -> list[tuple[int, Sequence[Part]]]:
    half = len(units) // 2
    return [(0, units[:half]), (half, units[half:])]


def _around(units: Sequence[Part], row: int) -> list[tuple[int, Sequence[Part]]]:
    """``units`` before the one holding reading ``row`` (counting their rows in order), it, and after."""
    seen = 0
    for k, u in enumerate(units):
        seen += len(u[1])
        if row < seen:
            parts = [(0, units[:k]), (k, units[k : k + 1]), (k + 1, units[k + 1 :])]
            return [(start, part) for start, part in parts if part]
    return _halves(units)


def kept_newest(
    newest: Mapping[tuple[str, str], int],
    ledger: Sequence[tuple[Any, ...]],
    times: Times,
    refused: Sequence[Refused],
) -> dict[tuple[str, str], int]:
    """``newest`` (each device's newest reading time over the messages of ``ledger``) without
    the refused. Most often none of them held a device's newest time and nothing changes;
    the devices one did are counted again, over the kept messages of their nodes."""
    gone = {i for i, _ in refused}
    again = {key for i in gone for key, t in times(i).items() if t >= newest.get(key, -1)}
    out = {key: t for key, t in newest.items() if key not in again}
    if not again:
        return out
    nodes = {node for node, _ in again}
    for i, m in enumerate(ledger):
        if i not in gone and m[1] in nodes:
            for key, t in times(i).items():
                if key in again and t > out.get(key, -1):
                    out[key] = t
    return out


_COPY_LINE = re.compile(r"^COPY readings, line (\d+)")


def refused_row(exc: BaseException) -> int | None:
    """PostgreSQL: the index of the reading a refused COPY names ("COPY readings, line N"), or None."""
    root = _root(exc)
    m = (
        _COPY_LINE.match(getattr(root, "context", None) or "")
        if isinstance(root, asyncpg.PostgresError)
        else None
    )
    return int(m.group(1)) - 1 if m else None


def _letter_row(letter: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(letter[c] for c in LETTER_COLUMNS)


def _heard(ledger: Sequence[tuple[Any, ...]]) -> dict[str, int]:
    """Node → the newest receive time of its messages (``LEDGER_COLUMNS`` tuples)."""
    heard: dict[str, int] = {}
    for m in ledger:
        node, received = m[1], m[6]
        if received > heard.get(node, -1):
            heard[node] = received
    return heard


def _sqlite_begin(conn: Any) -> None:
    # Writers take the write lock up front: a deferred transaction that reads, then
    # writes, fails at once with "database is locked" instead of waiting for
    # busy_timeout. Readers (Store.read) must not take it, or every query would
    # queue behind ingest.
    if conn.get_execution_options().get("floodgate_read"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _no_transaction_left_open(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """PostgreSQL: a pooled connection still in a transaction is closed, never used again.

    A task cancelled at the wrong moment (a commit cancelled again while it rolled back,
    or while asyncpg began its transaction: a lost MQTT or NATS link cancels the commits
    in flight) can give its connection back with the server's transaction still open
    and SQLAlchemy unaware of it. Used again, the next batch ran inside that transaction,
    its COMMIT a no-op, and what it stored (and confirmed to the edges) was rolled back
    later: lost. Meanwhile the transaction held its nodes' row locks and every
    collector's next batch of them waited. ``DisconnectionError`` has the pool close it
    (the server rolls it back) and connect anew.
    """
    driver = getattr(dbapi_conn, "_connection", None)  # asyncpg's, under SQLAlchemy's adapter
    if driver is not None and driver.is_in_transaction():
        log.warning("a pooled database connection was left in a transaction (a cancelled commit): closed")
        raise DisconnectionError("connection left in a transaction")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _async_url(url: str) -> str:
    if url.startswith("sqlite:///") or url == "sqlite://":
        return "sqlite+aiosqlite" + url.removeprefix("sqlite")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        return url
    raise ValueError(f"database url must be sqlite:///… or postgresql://…, not {url!r}")


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {"pool_size": 5, "max_overflow": 5}


def _now() -> int:
    from floodgate.ids import now_ms  # noqa: PLC0415

    return now_ms()
