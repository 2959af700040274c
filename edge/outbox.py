"""The durable outbox: every message is on disk before it is sent.

SQLite in WAL mode with ``synchronous=FULL``: a message written here survives
``kill -9`` and power loss. Alerts, events and command results (priority 0)
go out before backlog telemetry (priority 1). The outbox is bounded by bytes:
when full it sheds the *oldest telemetry* (sent or not) and never an alert or
event, and it counts what it shed so the agent can report an
``outbox.dropped`` event.

A message goes through two states: *to send*, then, once the broker has
acknowledged it (QoS 1 PUBACK), *awaiting confirmation*, until the collector
confirms it has handled it (the ``ack`` topic, ``confirm``). A broker's PUBACK
only means the broker has it: a broker that restarts without its sessions
loses it. A message awaiting confirmation past its deadline, or in a gap the
collector reports, goes back to *to send* (same bytes, same ``msg_id``). Each
resend doubles the message's deadline, up to a cap. Against a collector that
does not confirm (an older one says so in its online state), a message is
forgotten at the PUBACK, as before.

The database also keeps the agent's boot counter and the ids of commands
already seen (to refuse replays across restarts).

All SQLite work runs on one dedicated thread, so the event loop never blocks
on a disk sync.
"""

from __future__ import annotations

import asyncio
import sqlite3
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen_commands (cmd_id TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL);
"""
# Columns added for end-to-end acknowledgement (an older outbox gains them at open).
_COLUMNS = {
    "boot": "INTEGER",
    "seq": "INTEGER",
    "awaiting": "INTEGER NOT NULL DEFAULT 0",  # 1: the broker has it, the collector has not confirmed
    "sent_ms": "INTEGER",  # when it was last published
    "acked_ms": "INTEGER",  # when the broker last acknowledged it
    "due_ms": "INTEGER",  # when to send it again, unconfirmed
    "tries": "INTEGER NOT NULL DEFAULT 0",  # times sent again
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
CREATE INDEX IF NOT EXISTS outbox_send ON outbox (awaiting, priority, id);
CREATE INDEX IF NOT EXISTS outbox_seq ON outbox (boot, seq);
"""
# A message's confirmation deadline doubles with each resend at most this many times.
MAX_DOUBLINGS = 20


@dataclass(frozen=True)
class Pending:
    id: int
    kind: str
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Stats:
    depth: int  # to send: the broker does not have them
    bytes: int  # of every message kept, awaiting confirmation too
    dropped_total: int
    awaiting: int = 0  # the broker has them; the collector has not confirmed them
    oldest_awaiting_ms: int | None = None  # when the oldest of those was acknowledged by the broker


@dataclass(frozen=True)
class Confirmed:
    """What one boot's ``ack`` report did: messages forgotten, and put back to send (gaps)."""

    confirmed: int
    resend: int


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
            have = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
            for name, decl in _COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
            db.executescript(_INDEXES)
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

    async def put(
        self,
        kind: str,
        topic: str,
        payload: bytes,
        priority: int,
        ts_ms: int,
        boot: int | None = None,
        seq: int | None = None,
    ) -> int:
        """Store one message durably; returns how many telemetry messages were shed for it.

        ``boot`` and ``seq`` (its envelope's) let the collector's ``ack`` confirm it;
        a message without them is forgotten at the broker's PUBACK.
        """

        def _put() -> int:
            size = len(payload)
            dropped = 0
            total = self._bytes + size
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute(
                    "INSERT INTO outbox (priority, kind, topic, payload, size, created_ms, boot, seq)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (priority, kind, topic, payload, size, ts_ms, boot, seq),
                )
                while total > self.max_bytes:
                    row = self.db.execute(
                        "SELECT id, size FROM outbox WHERE priority = ? ORDER BY id LIMIT 1",
                        (PRIORITY_BULK,),
                    ).fetchone()
                    if row is None:
                        break  # only alerts and events left: they are never shed
                    self.db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
                    total -= row[1]
                    dropped += 1
                if dropped:
                    self.db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('dropped_total', ?)",
                        (self.dropped_total + dropped,),
                    )
            # Committed: only now do the in-memory counts follow (a failed commit rolls back, they stay).
            self._bytes = total
            self.dropped_total += dropped
            return dropped

        dropped = await self._run(_put)
        self.unreported_drops += dropped
        self.changed.set()
        return dropped

    async def peek(self, limit: int) -> list[Pending]:
        """The next messages to send: urgent first, then oldest first (none awaiting confirmation)."""

        def _peek() -> list[Pending]:
            rows = self.db.execute(
                "SELECT id, kind, topic, payload FROM outbox WHERE awaiting = 0"
                " ORDER BY priority, id LIMIT ?",
                (limit,),
            ).fetchall()
            return [Pending(r[0], r[1], r[2], bytes(r[3])) for r in rows]

        return await self._run(_peek)

    async def ack(self, ids: list[int]) -> None:
        """Forget these messages (the broker has them, and nobody will confirm them further)."""
        if not ids:
            return

        def _ack() -> None:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                freed = self._delete(ids)
            self._bytes -= freed

        await self._run(_ack)

    def _delete(self, ids: Sequence[int]) -> int:
        """Delete rows by id (in the caller's transaction); the bytes they held.

        The caller takes them off ``_bytes`` once its transaction has committed.
        """
        freed_total = 0
        for i in range(0, len(ids), 500):
            part = list(ids[i : i + 500])
            marks = ",".join("?" * len(part))
            freed = self.db.execute(
                f"SELECT COALESCE(SUM(size), 0) FROM outbox WHERE id IN ({marks})",  # noqa: S608
                part,
            ).fetchone()[0]
            self.db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", part)  # noqa: S608
            freed_total += freed
        return freed_total

    async def delivered(
        self, ids: list[int], sent_ms: int, now_ms: int, timeout_ms: int, timeout_max_ms: int
    ) -> None:
        """The broker acknowledged these: they await the collector's confirmation.

        Each is due to be sent again ``timeout_ms`` after now, doubled for each
        time it was sent again already, at most ``timeout_max_ms``. A message
        without a seq cannot be confirmed: it is forgotten.
        """
        if not ids:
            return

        def _delivered() -> None:
            freed = 0
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                for i in range(0, len(ids), 500):
                    part = ids[i : i + 500]
                    marks = ",".join("?" * len(part))
                    rows = self.db.execute(
                        f"SELECT id, seq, tries FROM outbox WHERE id IN ({marks})",  # noqa: S608
                        part,
                    ).fetchall()
                    freed += self._delete([r[0] for r in rows if r[1] is None])
                    self.db.executemany(
                        "UPDATE outbox SET awaiting = 1, sent_ms = ?, acked_ms = ?, due_ms = ? WHERE id = ?",
                        [
                            (
                                sent_ms,
                                now_ms,
                                now_ms + min(timeout_ms << min(r[2], MAX_DOUBLINGS), timeout_max_ms),
                                r[0],
                            )
                            for r in rows
                            if r[1] is not None
                        ],
                    )
            self._bytes -= freed

        await self._run(_delivered)

    async def confirm(
        self, boot: int, ranges: Sequence[Sequence[int]], now_ms: int, grace_ms: int, wait_ms: int = 0
    ) -> Confirmed:
        """The collector has handled these seqs of ``boot``: forget them; resend the gaps.

        A gap is a message awaiting confirmation whose seq is below the last
        range and in none, that the broker acknowledged before a message
        confirmed now was even sent (so the collector should have had it
        first), at least ``grace_ms`` ago. It goes back to be sent at once.

        ``wait_ms``: how long a collector may hold a report back (``State.ack_wait_s``).
        With several collectors, one's report may come that much before another's that
        covers an older message: a hole is a gap only when the broker acknowledged it at
        least ``wait_ms`` before the newest message confirmed now was sent. Measured
        between the two messages, not from now: a collector behind on its intake (both
        come late alike) does not make the other's message look lost.
        """
        bounds = sorted((int(lo), int(hi)) for lo, hi in ranges)
        if not bounds:
            return Confirmed(0, 0)
        starts = [lo for lo, _ in bounds]
        top = max(hi for _, hi in bounds)

        def covered(seq: int) -> bool:
            i = bisect_right(starts, seq) - 1
            return i >= 0 and seq <= bounds[i][1]

        def _confirm() -> Confirmed:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                rows = self.db.execute(
                    "SELECT id, seq, awaiting, sent_ms, acked_ms FROM outbox WHERE boot = ? AND seq <= ?",
                    (boot, top),
                ).fetchall()
                done = [r for r in rows if covered(r[1])]
                newest = max((r[3] for r in done if r[2] and r[3] is not None), default=None)
                gaps = (
                    [
                        r[0]
                        for r in rows
                        if r[2]
                        and not covered(r[1])
                        and r[4] < newest - wait_ms
                        and r[4] <= now_ms - grace_ms
                    ]
                    if newest is not None
                    else []
                )
                freed = self._delete([r[0] for r in done])
                # Not a try that doubles the deadline: with several collectors sharing the
                # intake a gap is often another's message still on its way, and doubling on
                # those put a message's next deadline minutes away.
                self.db.executemany("UPDATE outbox SET awaiting = 0 WHERE id = ?", [(i,) for i in gaps])
            self._bytes -= freed
            return Confirmed(len(done), len(gaps))

        result = await self._run(_confirm)
        if result.resend:
            self.changed.set()
        return result

    async def resend_due(self, now_ms: int) -> int:
        """Messages awaiting confirmation past their deadline go back to be sent; how many."""

        def _due() -> int:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                n: int = self.db.execute(
                    "UPDATE outbox SET awaiting = 0, tries = tries + 1 WHERE awaiting = 1 AND due_ms <= ?",
                    (now_ms,),
                ).rowcount
            return n

        n = await self._run(_due)
        if n:
            self.changed.set()
        return n

    async def hold(self, until_ms: int, boots: Collection[int] | None = None) -> None:
        """Send nothing awaiting confirmation again before ``until_ms`` (the collector is catching up).

        ``boots``: only the messages of these boots (the ones the collector is confirming);
        None: all of them.
        """

        def _hold() -> None:
            with self.db:
                if boots is None:
                    self.db.execute(
                        "UPDATE outbox SET due_ms = ? WHERE awaiting = 1 AND due_ms < ?", (until_ms, until_ms)
                    )
                else:
                    self.db.executemany(
                        "UPDATE outbox SET due_ms = ? WHERE awaiting = 1 AND due_ms < ? AND boot = ?",
                        [(until_ms, until_ms, b) for b in sorted(set(boots))],
                    )

        await self._run(_hold)

    async def forget_awaiting(self) -> int:
        """Forget every message awaiting confirmation (the collector does not confirm); how many."""

        def _forget() -> int:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                ids = [r[0] for r in self.db.execute("SELECT id FROM outbox WHERE awaiting = 1")]
                freed = self._delete(ids)
            self._bytes -= freed
            return len(ids)

        return await self._run(_forget)

    async def stats(self) -> Stats:
        def _stats() -> Stats:
            rows = dict(self.db.execute("SELECT awaiting, COUNT(*) FROM outbox GROUP BY awaiting").fetchall())
            oldest = self.db.execute("SELECT MIN(acked_ms) FROM outbox WHERE awaiting = 1").fetchone()[0]
            return Stats(rows.get(0, 0), self._bytes, self.dropped_total, rows.get(1, 0), oldest)

        return await self._run(_stats)

    # --- small persistent settings ------------------------------------------------

    async def setting(self, key: str) -> int | None:
        def _get() -> int | None:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else int(row[0])

        return await self._run(_get)

    async def set_setting(self, key: str, value: int) -> None:
        def _set() -> None:
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

        await self._run(_set)

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
