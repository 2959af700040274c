"""The durable outbox: every message is on disk before it is sent.

SQLite in WAL mode with ``synchronous=FULL``: a message written here survives
``kill -9`` and power loss. A message is deleted only after the broker has
acknowledged it (QoS 1 PUBACK). Alerts, events and command results (priority
0) go out before backlog telemetry (priority 1). The outbox is bounded by
bytes: when full it sheds the *oldest telemetry* and never an alert or event,
and it counts what it shed so the agent can report an ``outbox.dropped`` event.

The database also keeps the agent's boot counter and the ids of commands
already seen (to refuse replays across restarts).

All SQLite work runs on one dedicated thread, so the event loop never blocks
on a disk sync.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

PRIORITY_BIRTH = -1
PRIORITY_URGENT = 0
PRIORITY_BULK = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen_commands (cmd_id TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Pending:
    id: int
    kind: str
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Stats:
    depth: int
    bytes: int
    dropped_total: int


class Outbox:
    def __init__(self, path: Path | str, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self._bytes = 0
        self.dropped_total = 0
        self.unreported_drops = 0
        self.changed = asyncio.Event()

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    # --- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        def _open() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            self._db = db
            self._bytes = db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0]
            row = db.execute("SELECT value FROM meta WHERE key='dropped_total'").fetchone()
            self.dropped_total = row[0] if row else 0

        await self._run(_open)
        if self._bytes:
            self.changed.set()

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(_close)
        self._pool.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("outbox is not open")
        return self._db

    # --- boot counter ----------------------------------------------------------

    async def next_boot(self) -> int:
        """Increment and return the persisted boot counter (1 on a new box)."""

        def _boot() -> int:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                row = self.db.execute("SELECT value FROM meta WHERE key='boot'").fetchone()
                boot = (row[0] if row else 0) + 1
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('boot', ?)", (boot,))
            return boot

        return await self._run(_boot)

    # --- messages --------------------------------------------------------------

    async def put(self, kind: str, topic: str, payload: bytes, priority: int, ts_ms: int) -> int:
        """Store one message durably; returns how many telemetry messages were shed for it."""

        def _put() -> int:
            size = len(payload)
            dropped = 0
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute(
                    "INSERT INTO outbox (priority, kind, topic, payload, size, created_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (priority, kind, topic, payload, size, ts_ms),
                )
                self._bytes += size
                while self._bytes > self.max_bytes:
                    row = self.db.execute(
                        "SELECT id, size FROM outbox WHERE priority = ? ORDER BY id LIMIT 1",
                        (PRIORITY_BULK,),
                    ).fetchone()
                    if row is None:
                        break  # only alerts and events left: they are never shed
                    self.db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
                    self._bytes -= row[1]
                    dropped += 1
                if dropped:
                    self.dropped_total += dropped
                    self.db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('dropped_total', ?)",
                        (self.dropped_total,),
                    )
            return dropped

        dropped = await self._run(_put)
        self.unreported_drops += dropped
        self.changed.set()
        return dropped

    async def peek(self, limit: int) -> list[Pending]:
        """The next messages to send: urgent first, then oldest first."""

        def _peek() -> list[Pending]:
            rows = self.db.execute(
                "SELECT id, kind, topic, payload FROM outbox ORDER BY priority, id LIMIT ?",
                (limit,),
            ).fetchall()
            return [Pending(r[0], r[1], r[2], bytes(r[3])) for r in rows]

        return await self._run(_peek)

    async def ack(self, ids: list[int]) -> None:
        """The broker acknowledged these: forget them."""
        if not ids:
            return

        def _ack() -> None:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                marks = ",".join("?" * len(ids))
                freed = self.db.execute(
                    f"SELECT COALESCE(SUM(size), 0) FROM outbox WHERE id IN ({marks})",  # noqa: S608
                    ids,
                ).fetchone()[0]
                self.db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)  # noqa: S608
                self._bytes -= freed

        await self._run(_ack)

    async def stats(self) -> Stats:
        def _stats() -> Stats:
            depth = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            return Stats(depth, self._bytes, self.dropped_total)

        return await self._run(_stats)

    async def purge(self) -> int:
        def _purge() -> int:
            with self.db:
                n: int = self.db.execute("DELETE FROM outbox").rowcount
                self._bytes = 0
            return n

        return await self._run(_purge)

    # --- commands already seen -------------------------------------------------

    async def remember_command(self, cmd_id: str, expires_ms: int, now_ms: int) -> bool:
        """Record a command id; False when it was seen before (a replay)."""

        def _remember() -> bool:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute("DELETE FROM seen_commands WHERE expires_ms < ?", (now_ms - 86_400_000,))
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO seen_commands VALUES (?, ?)", (cmd_id, expires_ms)
                )
                return cur.rowcount == 1

        return await self._run(_remember)
