"""What ingest keeps of messages beyond the ledger and readings (``cloud.db.store``): dead letters, events."""

from __future__ import annotations

import json
from typing import Any

from cloud.db.schema import dead_letters, events
from cloud.db.store import Conn


async def dead(conn: Conn, letters: list[dict[str, Any]]) -> None:
    """Dead letters (``dead_letters`` rows: topic, payload, code, detail, received_ms)."""
    if letters:
        await conn.execute(dead_letters.insert(), letters)


async def event(
    conn: Conn, msg_id: str, node: str, dev: str | None, type_: str, detail: Any, ts: int
) -> None:
    """A node's event, its detail as JSON."""
    await conn.execute(
        events.insert().values(
            msg_id=msg_id, node=node, dev=dev, type=type_, detail=json.dumps(detail), ts=ts
        )
    )
