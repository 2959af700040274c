"""The collector's ``ack`` reports: an old seq handled again is always confirmed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cloud.confirm import Confirmer, _merge, add_ranges, report_ranges
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


def uplink(box: Outbox, clock_ms: Callable[[], int]) -> Uplink:
    """An edge's uplink on ``box``, never connected: what it does with states and reports."""

    async def nothing(*_: object) -> None:
        return None

    return Uplink(
        BrokerSettings(url="mqtt://127.0.0.1:1"), NODE, BOOT, box, nothing, nothing, clock_ms=clock_ms
    )


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

    up = uplink(box, lambda: now[0])
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


def test_reports_beyond_the_budget_wait_longest_first_and_none_past_max_wait(monkeypatch: Any) -> None:
    """A city's nodes gather news into fewer reports: ``rate`` a second, the longest waiting
    first; a node that has waited ``max_wait_s`` is told whatever the budget."""
    clock = [1000.0]
    monkeypatch.setattr("cloud.confirm.time.monotonic", lambda: clock[0])

    async def publish(topic: str, payload: bytes) -> None:
        raise AssertionError("not published here")

    c = Confirmer(publish, interval_s=0.5, rate=4.0, max_wait_s=15.0)  # 2 reports a round

    def news(node: str, seq: int) -> None:
        t = str(wire.Topic(node, wire.Kind.TELEMETRY))
        payload = json.dumps({"node": node, "boot": BOOT, "seq": seq}).encode()
        c.handled(Prepared(size=1, dead=[{"topic": t, "payload": payload}]))

    for i, node in enumerate("abcdef"):
        news(node, i)
    news("a", 10)  # more news of a node already waiting keeps its place
    assert list(c._due(1000.5)) == ["a", "b"]
    clock[0] = 1001.0
    news("g", 0)
    news("a", 11)  # told at 1000.5: waiting again from now, behind the rest
    assert list(c._due(1001.0)) == ["c", "d"]
    # 15 s on: e, f and g and a have all waited max_wait_s: every one of them goes.
    assert list(c._due(1016.0)) == ["e", "f", "g", "a"]
    assert c._due(1016.5) == {}
    # What a report holds is still every seq handled: nothing is lost by waiting.
    report = c.report("a", {BOOT})
    assert report is not None and covers(report, 10) and covers(report, 11)


async def test_a_hole_is_a_gap_only_when_older_than_a_collectors_ack_wait_before_a_confirmed_one(
    tmp_path: Path,
) -> None:
    """Two collectors share the intake and each may hold its reports back ``ack_wait_s``: a hole in
    one's report is the other's message, not reported yet, unless the broker acknowledged it that
    much before a message the report confirms was sent. Measured between the two messages, not
    from now, so collectors far behind on their intake do not make every hole look lost."""
    now = [0]
    box = Outbox(tmp_path / "outbox.db")
    await box.open()

    up = uplink(box, lambda: now[0])

    def report(*seqs: int) -> bytes:
        boots = [wire.AckBoot(boot=BOOT, ranges=[[s, s] for s in seqs])]
        return wire.encode(wire.Ack(v=1, node=NODE, ts=now[0], boots=boots))

    try:
        for seq, at in enumerate((0, 10_000, 15_000, 25_000, 30_000, 40_000)):  # sent and acknowledged
            await box.put("telemetry", TOPIC, b"{}", PRIORITY_BULK, 0, BOOT, seq)
            [p] = await box.peek(1)
            await box.delivered([p.id], at, at, 600_000, 900_000)
        await up.on_host_state(wire.encode(wire.State(online=True, boot=1, acks=True, ack_wait_s=15.5)), "a")
        await up.on_host_state(wire.encode(wire.State(online=True, boot=1, acks=True)), "b")  # older: 0
        now[0] = 1_000_000  # the collectors are far behind: 0 is 1,000 s old, but only 10 s before 1
        await up.on_ack(report(1))
        assert (await box.stats()).awaiting == 5  # 0, 2, 3, 4, 5
        await up.on_ack(report(3))  # 0 was acknowledged 25 s before 3 was sent: a gap; 2, 10 s: not
        assert (await box.stats()).awaiting == 3 and len(await box.peek(10)) == 1
        # Collector a gone offline: its holding back no longer counts, only the 1 s grace.
        await up.on_host_state(wire.encode(wire.State(online=False, boot=1)), "a")
        await up.on_ack(report(4))
        assert (await box.stats()).awaiting == 1 and len(await box.peek(10)) == 2
    finally:
        await box.close()


async def test_one_collector_alone_holding_reports_back_leaves_a_hole_a_gap(tmp_path: Path) -> None:
    """A collector reports all it handled of a node at once, held back or not: with it alone
    online, a hole in its report is a gap at once (as before ``ack_wait_s``), and a dead
    collector's shared session, holding messages, is made good as fast as before."""
    box = Outbox(tmp_path / "outbox.db")
    await box.open()

    up = uplink(box, lambda: 60_000)
    try:
        for seq, at in enumerate((0, 10_000)):
            await box.put("telemetry", TOPIC, b"{}", PRIORITY_BULK, 0, BOOT, seq)
            [p] = await box.peek(1)
            await box.delivered([p.id], at, at, 600_000, 900_000)
        await up.on_host_state(wire.encode(wire.State(online=True, boot=1, acks=True, ack_wait_s=15.5)), "a")
        boots = [wire.AckBoot(boot=BOOT, ranges=[[1, 1]])]
        await up.on_ack(wire.encode(wire.Ack(v=1, node=NODE, ts=1, boots=boots)))
        assert len(await box.peek(10)) == 1, "0, acknowledged 10 s before 1 was sent, sent again"
    finally:
        await box.close()


def _report_ranges_by_merging(known: list[list[int]], news: list[list[int]], most: int) -> tuple[Any, Any]:
    """``report_ranges`` as it was first written: the whole list merged again for each range."""
    news = _merge(news)
    out, later = news[:most], news[most:]
    for r in reversed(known):
        merged = _merge([*out, r])
        if len(merged) > most:
            break
        out = merged
    return out, later


@given(
    known=st.lists(st.integers(0, 300), max_size=120),
    news=st.lists(st.integers(0, 300), max_size=120),
    most=st.integers(1, 12),
)
def test_a_reports_ranges_are_those_of_merging_the_whole_list_for_each_range(
    known: list[int], news: list[int], most: int
) -> None:
    k = add_ranges([], known, most=10_000)
    n = _merge([[s, s] for s in news])
    assert report_ranges(k, n, most) == _report_ranges_by_merging(k, n, most)


@given(
    ranges=st.lists(st.integers(0, 300), max_size=120),
    seqs=st.lists(st.integers(0, 300), max_size=40),
    most=st.integers(1, 12),
)
def test_ranges_added_in_place_are_those_of_merging_the_whole_list(
    ranges: list[int], seqs: list[int], most: int
) -> None:
    before = add_ranges([], ranges, most=10_000)
    assert add_ranges(before, seqs, most) == _merge([*before, *([s, s] for s in seqs)])[-most:]


def test_a_report_repeats_its_news_and_the_highest_recent_known_ranges_only() -> None:
    """Two collectors sharing a node keep its seqs apart: a report of 64 known ranges for a seq of
    news cost both sides more than the news. Its news all go, and ``recent`` known ranges."""
    known = add_ranges([], range(0, 200, 2))  # 64 ranges: 72, 74, ... 198
    assert len(known) == wire.MAX_ACK_RANGES
    out, later = report_ranges(known, [[3, 3]], recent=8)
    assert out == [[3, 3], *([s, s] for s in range(184, 200, 2))] and later == []
    assert report_ranges(known, [[3, 3]], recent=0) == ([[3, 3]], [])
    assert report_ranges(known, [[3, 3]])[0] == [[3, 3], *known[1:]]  # all that fit in 64


def test_the_confirmers_report_holds_its_news_and_recent_known_ranges() -> None:
    async def publish(topic: str, payload: bytes) -> None:
        raise AssertionError("not published here")

    c = Confirmer(publish, recent=4)
    c.handled(batch(*range(0, 40, 2)))
    c._news.clear()  # told
    c.handled(batch(41))
    report = c.report(NODE, {BOOT})
    assert report is not None
    [b] = json.loads(report)["boots"]
    assert b["ranges"] == [[34, 34], [36, 36], [38, 38], [41, 41]]  # 41 is known too: 4 in all
