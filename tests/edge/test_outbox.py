"""The durable outbox: order, acknowledgement, bounds, boot counter, kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge.outbox import PRIORITY_BULK, PRIORITY_URGENT, Outbox, Stats


async def test_urgent_first_then_oldest_and_ack_deletes(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    await ob.open()
    try:
        for i in range(3):
            await ob.put("telemetry", "t", f"tel{i}".encode(), PRIORITY_BULK, i)
        await ob.put("alert", "a", b"alert0", PRIORITY_URGENT, 10)
        head = await ob.peek(10)
        assert [p.payload for p in head] == [b"alert0", b"tel0", b"tel1", b"tel2"]
        await ob.ack([head[0].id, head[2].id])
        assert [p.payload for p in await ob.peek(10)] == [b"tel0", b"tel2"]
        assert (await ob.stats()).depth == 2
    finally:
        await ob.close()


async def test_bound_sheds_oldest_telemetry_never_alerts(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=64 * 1024)
    await ob.open()
    try:
        blob = b"x" * 1024
        for i in range(40):
            await ob.put("alert", "a", blob, PRIORITY_URGENT, i)
        dropped = 0
        for i in range(60):
            dropped += await ob.put("telemetry", "t", blob, PRIORITY_BULK, i)
        kinds = [p.kind for p in await ob.peek(1000)]
        assert kinds.count("alert") == 40
        assert dropped == 60 - kinds.count("telemetry") > 0
        assert (await ob.stats()).bytes <= 64 * 1024
        assert ob.dropped_total == dropped
        # Only alerts left and still over the bound: alerts are kept anyway.
        for i in range(30):
            await ob.put("alert", "a", blob, PRIORITY_URGENT, i)
        assert [p.kind for p in await ob.peek(1000)].count("alert") == 70
    finally:
        await ob.close()


async def test_boot_counter_and_replay_memory_persist(tmp_path: Path) -> None:
    for expected in (1, 2, 3):
        ob = Outbox(tmp_path / "o.db")
        await ob.open()
        assert await ob.next_boot() == expected
        fresh = await ob.remember_command("01JD000000000000000000000A", 10**13, 0)
        assert fresh is (expected == 1)
        await ob.close()


WRITER = """
import asyncio, sys
import pytest

from edge.outbox import Outbox, PRIORITY_BULK
async def main():
    ob = Outbox(sys.argv[1]); await ob.open()
    i = 0
    while True:
        await ob.put("telemetry", "t", str(i).encode(), PRIORITY_BULK, i)
        print(i, flush=True)
        i += 1
asyncio.run(main())
"""


async def test_every_acknowledged_put_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    confirmed = -1
    for line in proc.stdout:
        confirmed = int(line)
        if confirmed >= 300:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ob = Outbox(db)
    await ob.open()
    try:
        stored = [int(p.payload) for p in await ob.peek(100_000)]
    finally:
        await ob.close()
    assert stored[: confirmed + 1] == list(range(confirmed + 1))  # every put that returned is there
    assert stored == list(range(len(stored)))  # and nothing half-written


async def sent(ob: Outbox, n: int, sent_ms: int, now_ms: int, timeout_ms: int = 60_000) -> list[int]:
    """Publish the next ``n`` (the broker acknowledged them at ``now_ms``); their ids."""
    ids = [p.id for p in await ob.peek(n)]
    await ob.delivered(ids, sent_ms, now_ms, timeout_ms, 900_000)
    return ids


async def test_a_message_awaits_the_collectors_confirmation_and_a_gap_goes_again_at_once(
    tmp_path: Path,
) -> None:
    ob = Outbox(tmp_path / "o.db")
    await ob.open()
    try:
        for seq in range(6):
            await ob.put("telemetry", "t", f"m{seq}".encode(), PRIORITY_BULK, seq, boot=7, seq=seq)
        await sent(ob, 3, sent_ms=1_000, now_ms=1_010)  # seq 0-2: the broker has them
        s = await ob.stats()
        assert (s.depth, s.awaiting, s.oldest_awaiting_ms) == (3, 3, 1_010)
        assert [p.payload for p in await ob.peek(10)] == [b"m3", b"m4", b"m5"]  # not the awaiting ones
        await sent(ob, 2, sent_ms=5_000, now_ms=5_010)  # seq 3, 4
        # The collector has 0, 2, 3 (sent after seq 1's PUBACK): seq 1 is lost. Seq 4 is
        # not confirmed but is above the last range: on its way, not a gap.
        done = await ob.confirm(7, [[0, 0], [2, 3]], now_ms=5_100, grace_ms=1_000)
        assert (done.confirmed, done.resend) == (3, 1)
        assert [p.payload for p in await ob.peek(10)] == [b"m1", b"m5"]  # at once, in its old place
        s = await ob.stats()
        assert (s.depth, s.awaiting) == (2, 1)
        # Another boot's report confirms nothing of this one.
        assert (await ob.confirm(8, [[0, 10]], 5_200, 1_000)).confirmed == 0
    finally:
        await ob.close()


async def test_no_gap_for_a_message_still_on_its_way(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    await ob.open()
    try:
        for seq in range(3):
            await ob.put("event", "e", f"m{seq}".encode(), PRIORITY_URGENT, seq, boot=1, seq=seq)
        [m0, m1, m2] = [p.id for p in await ob.peek(3)]
        await ob.delivered([m0, m2], 1_000, 1_000, 60_000, 900_000)
        await ob.delivered([m1], 1_000, 4_000, 60_000, 900_000)  # its PUBACK came late
        # Seq 2 was sent before seq 1's PUBACK: the collector may have it first.
        assert (await ob.confirm(1, [[0, 0], [2, 2]], 9_000, 1_000)).resend == 0
        assert (await ob.confirm(1, [[1, 1]], 9_000, 1_000)).confirmed == 1
        # A PUBACK within the grace is not a gap either.
        await ob.put("event", "e", b"m3", PRIORITY_URGENT, 3, boot=1, seq=3)
        await ob.put("event", "e", b"m4", PRIORITY_URGENT, 4, boot=1, seq=4)
        await sent(ob, 1, sent_ms=8_500, now_ms=8_600)  # seq 3
        await sent(ob, 1, sent_ms=8_800, now_ms=8_900)  # seq 4
        assert (await ob.confirm(1, [[4, 4]], 9_000, 1_000)).resend == 0
        assert (await ob.stats()).awaiting == 1
    finally:
        await ob.close()


async def test_unconfirmed_past_the_deadline_goes_again_later_each_time(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    await ob.open()
    try:
        await ob.put("alert", "a", b"a0", PRIORITY_URGENT, 0, boot=1, seq=0)
        due = 0
        for step in (1_000, 2_000, 4_000, 8_000, 8_000):  # doubling, up to the cap
            await ob.delivered([p.id for p in await ob.peek(1)], due, due, 1_000, 8_000)
            assert await ob.resend_due(due + step - 1) == 0
            await ob.hold(due + step - 1)  # an earlier hold changes nothing
            assert await ob.resend_due(due + step) == 1
            due += step
        assert [p.payload for p in await ob.peek(5)] == [b"a0"]
        await ob.delivered([p.id for p in await ob.peek(1)], due, due, 1_000, 8_000)
        await ob.hold(due + 60_000)  # the collector came online: its session first
        assert await ob.resend_due(due + 59_999) == 0
        assert await ob.resend_due(due + 60_000) == 1
    finally:
        await ob.close()


async def test_a_hold_for_some_boots_leaves_the_others_deadlines(tmp_path: Path) -> None:
    """A collector confirming boot 2 puts off boot 2's resends only: boot 1's last message,
    which no report can show as a gap, still goes again at its own deadline."""
    ob = Outbox(tmp_path / "o.db")
    await ob.open()
    try:
        await ob.put("alert", "a", b"old", PRIORITY_URGENT, 0, boot=1, seq=7)
        await ob.put("alert", "a", b"new", PRIORITY_URGENT, 0, boot=2, seq=0)
        await ob.delivered([p.id for p in await ob.peek(2)], 0, 0, 1_000, 8_000)
        await ob.hold(5_000, boots=[2])
        assert await ob.resend_due(1_000) == 1
        assert [p.payload for p in await ob.peek(5)] == [b"old"]
        await ob.delivered([p.id for p in await ob.peek(1)], 1_000, 1_000, 1_000, 8_000)
        await ob.hold(5_000)  # all boots: old was due at 3,000 (doubled), now with new at 5,000
        assert await ob.resend_due(4_999) == 0
        assert await ob.resend_due(5_000) == 2
    finally:
        await ob.close()


async def test_a_gap_sent_again_does_not_push_its_next_deadline_away(tmp_path: Path) -> None:
    """Only a deadline resend doubles the deadline: a gap (often another collector's message still
    on its way) goes again at once and keeps the base timeout, the bound of its next resend."""
    ob = Outbox(tmp_path / "o.db")
    await ob.open()
    try:
        for seq in range(4):
            await ob.put("telemetry", "t", f"m{seq}".encode(), PRIORITY_BULK, seq, boot=1, seq=seq)
        now = 1_000
        await sent(ob, 1, sent_ms=now, now_ms=now, timeout_ms=1_000)  # seq 0
        for seq in (1, 2, 3):  # each report confirms a later one: seq 0 is a gap each time
            now += 2_000
            await sent(ob, 1, sent_ms=now, now_ms=now, timeout_ms=1_000)
            assert (await ob.confirm(1, [[seq, seq]], now + 1, 500)).resend == 1
            await ob.delivered([p.id for p in await ob.peek(1)], now + 1, now + 1, 1_000, 900_000)  # seq 0
        assert await ob.resend_due(now + 1_000) == 0
        assert await ob.resend_due(now + 1_001) == 1  # the base timeout, not 8 x
    finally:
        await ob.close()


async def test_bounds_hold_for_messages_awaiting_confirmation(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=64 * 1024)
    await ob.open()
    try:
        blob = b"x" * 1024
        for seq in range(40):
            kind, prio = ("alert", PRIORITY_URGENT) if seq % 2 else ("telemetry", PRIORITY_BULK)
            await ob.put(kind, "t", blob, prio, seq, boot=1, seq=seq)
        await sent(ob, 40, 0, 0)
        dropped = 0
        for seq in range(40, 80):
            dropped += await ob.put("telemetry", "t", blob, PRIORITY_BULK, seq, boot=1, seq=seq)
        s = await ob.stats()
        assert dropped > 0 and s.bytes <= 64 * 1024
        assert s.awaiting == 20 + 20 - dropped  # the awaiting telemetry went first, oldest first
        assert await ob.forget_awaiting() == s.awaiting  # an older collector: only the PUBACK counts
        assert (await ob.stats()).bytes == s.depth * 1024
    finally:
        await ob.close()


async def test_an_older_outbox_is_upgraded_in_place(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, priority INTEGER NOT NULL,"
        " kind TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, size INTEGER NOT NULL,"
        " created_ms INTEGER NOT NULL);"
        "INSERT INTO outbox (priority, kind, topic, payload, size, created_ms)"
        " VALUES (0, 'alert', 't', x'6f6c64', 3, 0);"
    )
    con.close()
    ob = Outbox(db)
    await ob.open()
    try:
        [old] = await ob.peek(10)
        assert old.payload == b"old"
        await ob.delivered([old.id], 0, 0, 1_000, 1_000)  # no seq: nothing can confirm it
        assert (await ob.stats()) == Stats(0, 0, 0, 0, None)
    finally:
        await ob.close()


def _stored_bytes(path: Path) -> int:
    with sqlite3.connect(path) as db:
        n: int = db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0]
    return n


async def test_a_write_that_fails_and_rolls_back_leaves_the_byte_count_true(tmp_path: Path) -> None:
    """The in-memory byte count follows only committed writes (a full disk rolls the transaction back)."""
    path = tmp_path / "o.db"
    box = Outbox(path, max_bytes=1000)
    await box.open()
    try:
        for i in range(600):  # more than one 500-id chunk to delete
            await box.put("telemetry", "t", b"x", PRIORITY_BULK, i)
        ids = [p.id for p in await box.peek(1000)]
        # The disk fills in the middle of a write: what the transaction changed already is rolled back.
        with sqlite3.connect(path) as db:
            db.execute(
                "CREATE TRIGGER full_on_shed BEFORE INSERT ON meta"
                " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
            db.execute(
                f"CREATE TRIGGER full_on_delete BEFORE DELETE ON outbox WHEN old.id = {ids[550]}"
                " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        # A put that must shed (its bytes and the shed rows counted, then the write fails).
        with pytest.raises(sqlite3.DatabaseError, match="full"):
            await box.put("telemetry", "t", b"y" * 600, PRIORITY_BULK, 1000)
        s = await box.stats()
        assert (s.bytes, s.depth, s.dropped_total) == (_stored_bytes(path), 600, 0)
        # An ack over two chunks whose second chunk fails: the first chunk's bytes come back too.
        with pytest.raises(sqlite3.DatabaseError, match="full"):
            await box.ack(ids)
        s = await box.stats()
        assert (s.bytes, s.depth) == (_stored_bytes(path), 600)
        # Room again: the counts go on from the truth.
        with sqlite3.connect(path) as db:
            db.execute("DROP TRIGGER full_on_shed")
            db.execute("DROP TRIGGER full_on_delete")
        await box.ack(ids[:100])
        assert (await box.stats()).bytes == _stored_bytes(path) == 500
    finally:
        await box.close()
