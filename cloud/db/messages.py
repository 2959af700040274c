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


async def events_many(conn: Conn, rows: list[dict[str, Any]]) -> None:
    """Nodes' events (``events`` rows: msg_id, node, dev, type, detail as JSON text, ts), one statement."""
    if rows:
        await conn.execute(events.insert(), rows)


def event_row(msg_id: str, node: str, dev: str | None, type_: str, detail: Any, ts: int) -> dict[str, Any]:
    """A node's event as an ``events`` row, its detail as JSON."""
    return {"msg_id": msg_id, "node": node, "dev": dev, "type": type_, "detail": json.dumps(detail), "ts": ts}
