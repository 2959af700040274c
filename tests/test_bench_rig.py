"""What the fault benches (bench/rig.py) count by, on PostgreSQL: a message is stored when
its row is in the ``messages`` ledger, whenever it was received."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from bench.rig import Key, database, dead_letters_of, stored_keys, wait_stored
from cloud.db.store import Store
from floodgate.ids import now_ms


async def _store(url: str, key: Key, received_ms: int) -> None:
    s = Store(url)
    try:
        async with s.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO messages (msg_id, node, boot, seq, kind, ts, received_ms)"
                    " VALUES (:id, :node, :boot, :seq, 'telemetry', :ts, :received)"
                ),
                {
                    "id": f"id-{key[2]}",
                    "node": key[0],
                    "boot": key[1],
                    "seq": key[2],
                    "ts": received_ms,
                    "received": received_ms,
                },
            )
    finally:
        await s.close()


async def test_a_message_fetched_long_before_its_commit_is_seen_stored() -> None:
    # The chaos check once polled the rows received (fetched) in the last 30 s: a row whose
    # commit became visible more than 30 s after its fetch was never seen, though stored.
    async with database("fg_rig") as url:
        now = now_ms()
        await _store(url, ("city-1", 7, 4), now)
        left = {("city-1", 7, 3), ("city-1", 7, 4)}
        with pytest.raises(AssertionError, match="everything sent before stored"):
            await wait_stored(url, left, now - 30_000, 0.5)
        assert left == {("city-1", 7, 3)}  # what is still missing, for the report
        fetched = now - 120_000  # by a collector whose commit lasted two minutes
        await _store(url, ("city-1", 7, 3), fetched)
        late, lag_s = await wait_stored(url, left, now - 30_000, 30)
        assert left == set()
        assert late == 1
        assert lag_s >= 120
        assert await stored_keys(url, [("city-1", 7, 3), ("city-1", 8, 3)]) == {("city-1", 7, 3): fetched}


async def test_a_dead_letter_is_found_by_its_envelope() -> None:
    async with database("fg_rig") as url:
        s = Store(url)
        try:
            async with s.engine.begin() as conn:
                for payload in ({"node": "city-1", "boot": 7, "seq": 5}, b"\xff not json"):
                    await conn.execute(
                        text(
                            "INSERT INTO dead_letters (topic, payload, code, detail, received_ms)"
                            " VALUES ('floodgate/v1/city-1/telemetry', :p, 'store_error', 'refused', 1)"
                        ),
                        {"p": json.dumps(payload).encode() if isinstance(payload, dict) else payload},
                    )
        finally:
            await s.close()
        got = await dead_letters_of(url, [("city-1", 7, 5), ("city-1", 7, 6)])
        assert list(got) == [("city-1", 7, 5)]
        assert got[("city-1", 7, 5)].startswith("store_error (refused) on floodgate/v1/city-1/telemetry")
