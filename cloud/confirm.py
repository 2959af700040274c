"""End-to-end acknowledgement: after each commit, each node hears what the collector has handled.

A broker's PUBACK means the broker has a message, not that it is stored: a
broker that restarts without its sessions loses what it had queued for the
collector. So the edge keeps every message until the collector confirms it
(``edge.outbox``). After a batch commits, the messages it handled (stored,
already stored, or kept as a dead letter) are added, per (node, boot), to
ranges of ``seq``; at most every ``interval_s`` each node with news gets one
``ack`` message (``floodgate.wire.Ack``) on ``floodgate/v1/{node}/ack``, QoS 1,
not retained, holding the news of that boot and the ``REPORT_RECENT`` highest
ranges this collector knows of it. So the reports are cumulative over their
recent past: one that is lost (the edge was away) is made good by the next.
Publishing runs in its own task, off the ingest path.

At a city's size that is an ``ack`` for nearly every message (10,000 nodes
each sending every 5 s) and a fifth of a collector's time. So the reports
have a budget, ``rate`` a second: beyond it the nodes that have waited longest
go first and the others wait, gathering more news into one report, but none
waits longer than ``max_wait_s``, well inside the edge's confirmation deadline
(60 s). A district never reaches the budget: its nodes hear within
``interval_s`` as before.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

import msgspec

from cloud.ingest import Prepared
from floodgate import wire
from floodgate.errors import ContractError

log = logging.getLogger("floodgate.cloud.confirm")
Ranges = list[list[int]]  # [[first, last], ...], ascending, apart
# Known ranges a report repeats after its news: enough to make good a report or two the node
# missed; all 64 (two collectors sharing a node's seqs keep them apart) cost each side more
# than the report's news.
REPORT_RECENT = 8
WAIT_MARGIN_S = 5.0  # told to the nodes over a report's longest wait: one intake lagging another


class _Envelope(msgspec.Struct):
    """The envelope of a message the contract refused, as far as it can be read."""

    node: str | None = None
    boot: int | None = None
    seq: int | None = None


def _merge(ranges: Iterable[list[int]]) -> Ranges:
    """``ranges`` merged: ascending and apart."""
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def _place(out: Ranges, lo: int, hi: int) -> tuple[int, int, int, int]:
    """Where ``[lo, hi]`` goes in ``out`` (ascending, apart): the slice ``out[start:end]`` of the
    neighbours it overlaps or touches, and the range that takes their place."""
    start = end = bisect.bisect_left(out, [lo, hi])
    if start and out[start - 1][1] + 1 >= lo:
        start -= 1
        lo, hi = out[start][0], max(hi, out[start][1])
    while end < len(out) and out[end][0] <= hi + 1:
        hi = max(hi, out[end][1])
        end += 1
    return start, end, lo, hi


def insert_ranges(ranges: Ranges, seqs: Iterable[int], most: int | None = None) -> None:
    """``seqs`` put into ``ranges``, in place: each where it belongs (a batch holds a seq or
    two of a node, and a node's ranges, shared with another collector, are many); beyond
    ``most`` ranges the lowest go."""
    for q in seqs:
        start, end, lo, hi = _place(ranges, q, q)
        ranges[start:end] = [[lo, hi]]
    if most is not None:
        del ranges[:-most]


def add_ranges(ranges: Ranges, seqs: Iterable[int], most: int = wire.MAX_ACK_RANGES) -> Ranges:
    """``ranges`` with ``seqs`` added (merged, ascending); beyond ``most`` ranges the lowest go.

    What goes is still told once: a report puts what is news first (``report_ranges``).
    """
    out = [list(r) for r in ranges]
    insert_ranges(out, seqs, most)
    return out


def report_ranges(
    known: Ranges, news: Ranges, most: int = wire.MAX_ACK_RANGES, recent: int | None = None
) -> tuple[Ranges, Ranges]:
    """One report's ranges and the news left for the next report.

    ``news`` (handled, not reported yet) go first, lowest first, so an old seq handled
    again (a resend after a restart, a shared group) is always confirmed even when it
    is below every range ``known`` keeps; the highest ``known`` ranges (the ``recent``
    highest at most) fill the rest.
    """
    news = _merge(news)
    out, later = news[:most], news[most:]
    for r in reversed(known if recent is None else known[-recent:] if recent else []):
        start, end, lo, hi = _place(out, r[0], r[1])
        if len(out) - (end - start) + 1 > most:
            break
        out[start:end] = [[lo, hi]]
    return out, later


def handled_of(p: Prepared) -> dict[tuple[str, int], list[int]]:
    """The seqs a committed batch handled, per (node, boot): what passed and what was refused."""
    out: dict[tuple[str, int], list[int]] = {}
    for _, d in p.ok:
        m = d.message
        if isinstance(m, wire.Envelope):
            out.setdefault((m.node, m.boot), []).append(m.seq)
    for letter in p.dead:
        found = _refused_envelope(letter["topic"], letter["payload"])
        if found is not None:
            out.setdefault(found[:2], []).append(found[2])
    return out


def _refused_envelope(topic: str, payload: bytes) -> tuple[str, int, int] | None:
    """(node, boot, seq) of a dead letter when its topic and payload still say them."""
    try:
        t = wire.Topic.parse(topic)
        e = msgspec.json.decode(payload, type=_Envelope)
    except (ContractError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if t.node == wire.HOST or t.kind is wire.Kind.STATE or e.node != t.node:
        return None
    if (
        e.boot is None
        or e.seq is None
        or not (0 <= e.boot <= wire.INT64_MAX and 0 <= e.seq <= wire.INT64_MAX)
    ):
        return None
    return t.node, e.boot, e.seq


class Confirmer:
    """Keeps what was handled per (node, boot) and tells each node, batched, off the ingest path."""

    def __init__(
        self,
        publish: Callable[[str, bytes], Awaitable[None]],
        interval_s: float = 0.5,
        max_boots: int = 100_000,
        now_ms: Callable[[], int] | None = None,
        rate: float = 500.0,
        max_wait_s: float = 15.0,
        recent: int = REPORT_RECENT,
    ) -> None:
        from floodgate.ids import now_ms as wall  # noqa: PLC0415

        self.publish = publish
        self.interval_s = interval_s
        self.rate = rate  # reports a second beyond which nodes wait (the longest waiting first)
        self.max_wait_s = max_wait_s  # ... but none longer than this
        self.recent = recent  # known ranges a report repeats after its news, the highest
        # The longest a report waits after the commit, told to the nodes (``State.ack_wait_s``),
        # with 5 s for one collector's intake lagging another's (the nodes measure the wait
        # between a hole and a message confirmed after it, both late alike otherwise).
        self.wait_s = round(max_wait_s + interval_s + WAIT_MARGIN_S, 3)
        self.max_boots = max_boots
        self.now_ms = now_ms or wall
        self.known: OrderedDict[tuple[str, int], Ranges] = OrderedDict()
        # Nodes with news, in the order they first had it since their last report.
        self._dirty: dict[str, set[int]] = {}
        self._since: dict[str, float] = {}  # node -> when it first had news (time.monotonic)
        self._news: dict[tuple[str, int], Ranges] = {}  # handled, not yet in a published report
        self._wake = asyncio.Event()
        self.sent = 0  # ack messages published
        self.failed = 0  # ack messages that could not be published (sent again with the next news)

    def handled(self, p: Prepared) -> None:
        """A batch committed: what it handled joins the ranges (cheap: no I/O)."""
        known = self.known
        for key, seqs in handled_of(p).items():
            ranges = known.get(key)
            if ranges is None:
                known[key] = ranges = []
            else:
                known.move_to_end(key)  # the most recently heard last
            insert_ranges(ranges, seqs, wire.MAX_ACK_RANGES)
            news = self._news.get(key)
            if news is None:
                self._news[key] = news = []
            insert_ranges(news, seqs)
            while len(known) > self.max_boots:
                self._news.pop(known.popitem(last=False)[0], None)
            self._mark(key[0], key[1])
        if self._dirty:
            self._wake.set()

    def _mark(self, node: str, boot: int) -> None:
        """``node`` has news of ``boot`` to report."""
        boots = self._dirty.get(node)
        if boots is None:
            self._dirty[node] = boots = set()
            self._since[node] = time.monotonic()
        boots.add(boot)

    def _due(self, now: float) -> dict[str, set[int]]:
        """The nodes to report to now, taken from those with news: within the budget, the
        longest waiting first, and every one that has waited ``max_wait_s``."""
        budget = max(1, int(self.rate * self.interval_s))
        oldest = now - self.max_wait_s
        due: dict[str, set[int]] = {}
        for node in self._dirty:
            if len(due) >= budget and self._since[node] > oldest:
                break  # the rest had their news later still
            due[node] = self._dirty[node]
        for node in due:
            del self._dirty[node]
            del self._since[node]
        return due

    def report(self, node: str, boots: Iterable[int]) -> bytes | None:
        """The ``ack`` payload for ``node``: per boot, its news first, then its highest known ranges."""
        return self._report(node, boots)[0]

    def _report(self, node: str, boots: Iterable[int]) -> tuple[bytes | None, dict[tuple[str, int], Ranges]]:
        entries: list[wire.AckBoot] = []
        left: dict[tuple[str, int], Ranges] = {}
        for b in sorted(boots):
            key = (node, b)
            if key not in self.known:
                continue
            ranges, left[key] = report_ranges(self.known[key], self._news.get(key, []), recent=self.recent)
            entries.append(wire.AckBoot(boot=b, ranges=ranges))
        if not entries:
            return None, left
        return wire.encode(wire.Ack(v=1, node=node, ts=self.now_ms(), boots=entries)), left

    async def run(self) -> None:
        """Publish what is new, at most every ``interval_s``, one message per node."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.interval_s)  # more batches join this report
            self._wake.clear()
            await self._flush(self._due(time.monotonic()))
            if self._dirty:  # over the budget, or not published (no connection): the next interval
                self._wake.set()

    async def _flush(self, dirty: dict[str, set[int]]) -> None:
        nodes = list(dirty)
        for i in range(0, len(nodes), 100):  # a bounded number of publishes in flight
            part = nodes[i : i + 100]
            results = await asyncio.gather(*(self._send(n, dirty[n]) for n in part), return_exceptions=True)
            for node, r in zip(part, results, strict=True):
                if isinstance(r, BaseException):
                    self.failed += 1
                    # Told with the next news, or the edge resends and the duplicate is news.
                    for boot in dirty[node]:
                        self._mark(node, boot)
                    if isinstance(r, asyncio.CancelledError):
                        raise r

    async def _send(self, node: str, boots: set[int]) -> None:
        payload, left = self._report(node, boots)
        taken = {key: self._news.pop(key) for key in left if key in self._news}
        try:
            if payload is not None:
                await self.publish(str(wire.Topic(node, wire.Kind.ACK)), payload)
                self.sent += 1
        except BaseException:
            for key, news in taken.items():  # not told: still news
                self._news[key] = _merge([*self._news.get(key, []), *news])
            raise
        for key, rest in left.items():  # more news than one report holds: the next one
            if rest:
                self._news[key] = _merge([*self._news.get(key, []), *rest])
                self._mark(node, key[1])
                self._wake.set()


async def alongside(confirmer: Confirmer | None, work: Awaitable[None]) -> None:
    """``work`` (an intake's run), with ``confirmer`` publishing its reports meanwhile, when the
    intake owns one."""
    if confirmer is None:
        await work
        return
    publishing = asyncio.create_task(confirmer.run(), name="confirmer")
    try:
        await work
    finally:
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
