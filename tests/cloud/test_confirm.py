"""The collector's ``ack`` reports: an old seq handled again is always confirmed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from cloud.confirm import Confirmer
from cloud.ingest import Prepared
from edge.outbox import PRIORITY_BULK, Outbox
from edge.uplink import Uplink
from floodgate import wire
from floodgate.broker import BrokerSettings
from tests.helpers import wait_until

NODE, BOOT = "hp-test-01", 7
TOPIC = str(wire.Topic(NODE, wire.Kind.TELEMETRY))


def batch(*seqs: int) -> Prepared:
    """A committed batch that handled ``seqs`` (dead letters whose envelope still says node, boot, seq)."""
    dead = [
        {"topic": TOPIC, "payload": json.dumps({"node": NODE, "boot": BOOT, "seq": s}).encode()} for s in seqs
    ]
    return Prepared(size=len(seqs), dead=dead)


def covers(report: bytes, seq: int) -> bool:
    return any(lo <= seq <= hi for b in json.loads(report)["boots"] for lo, hi in b["ranges"])


async def test_old_seq_handled_after_many_scattered_ones_is_confirmed_and_not_resent(tmp_path: Path) -> None:
    sent: list[bytes] = []

    async def publish(topic: str, payload: bytes) -> None:
        assert topic == str(wire.Topic(NODE, wire.Kind.ACK))
        sent.append(payload)

    box = Outbox(tmp_path / "outbox.db")
    await box.open()
    c = Confirmer(publish, interval_s=0.01)
    task = asyncio.create_task(c.run())
    try:
        # The edge sent seq 0 and, scattered above it, 100 more; the broker acknowledged all.
        scattered = list(range(10, 210, 2))
        ids = [await box.put("telemetry", TOPIC, b"{}", PRIORITY_BULK, 0, BOOT, s) for s in [0, *scattered]]
        pending = await box.peek(1000)
        assert len(pending) == len(ids)
        await box.delivered(
            [p.id for p in pending], sent_ms=1, now_ms=1, timeout_ms=60_000, timeout_max_ms=900_000
        )
        # The collector handled the scattered ones (more ranges than one report holds) ...
        c.handled(batch(*scattered))
        await wait_until(lambda: bool(sent))
        assert len(c.known[(NODE, BOOT)]) == wire.MAX_ACK_RANGES
        # ... then seq 0 arrives late (a collector restart, a shared group): the lowest range of all.
        before = len(sent)
        c.handled(batch(0))
        await wait_until(lambda: len(sent) > before)
        assert covers(sent[-1], 0)
        for report in sent:
            assert all(len(b["ranges"]) <= wire.MAX_ACK_RANGES for b in json.loads(report)["boots"])
        # The edge, told every report, forgets seq 0 and never resends it.
        for report in sent:
            for b in json.loads(report)["boots"]:
                await box.confirm(b["boot"], b["ranges"], now_ms=10_000, grace_ms=1_000)
        assert await box.resend_due(now_ms=10**12) == 0
        assert (await box.stats()).awaiting == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await box.close()


async def test_retained_collector_state_redelivered_on_reconnect_does_not_postpone_resends(
    tmp_path: Path,
) -> None:
    now = [0]
    box = Outbox(tmp_path / "outbox.db")
    await box.open()

    async def nothing(*_: object) -> None:
        return None

    up = Uplink(
        BrokerSettings(url="mqtt://127.0.0.1:1"), NODE, BOOT, box, nothing, nothing, clock_ms=lambda: now[0]
    )
    online = wire.encode(wire.State(online=True, boot=1, acks=True))
    offline = wire.encode(wire.State(online=False, boot=1))
    try:
        await box.put("telemetry", TOPIC, b"{}", PRIORITY_BULK, 0, BOOT, 1)
        ids = [p.id for p in await box.peek(10)]
        await box.delivered(ids, sent_ms=0, now_ms=0, timeout_ms=60_000, timeout_max_ms=900_000)
        await up.on_host_state(online)  # first seen: held a deadline (to 60 s)
        now[0] = 50_000
        await up.on_host_state(online)  # the retained state again, on a reconnect: no new hold
        assert await box.resend_due(60_000) == 1
        await box.delivered(ids, sent_ms=60_000, now_ms=60_000, timeout_ms=60_000, timeout_max_ms=900_000)
        now[0] = 170_000  # sent again at 60 s: its next deadline is 180 s
        await up.on_host_state(offline)
        await up.on_host_state(online)  # back online: held again (to 230 s)
        assert await box.resend_due(229_999) == 0
        assert await box.resend_due(230_000) == 1
    finally:
        await box.close()
