"""End-to-end acknowledgement: after each commit, each node hears what the collector has handled.

A broker's PUBACK means the broker has a message, not that it is stored: a
broker that restarts without its sessions loses what it had queued for the
collector. So the edge keeps every message until the collector confirms it
(``edge.outbox``). After a batch commits, the messages it handled (stored,
already stored, or kept as a dead letter) are added, per (node, boot), to
ranges of ``seq``; at most every ``interval_s`` each node with news gets one
``ack`` message (``floodgate.wire.Ack``) on ``floodgate/v1/{node}/ack``, QoS 1,
not retained, holding every range this collector knows of that boot. The
reports are cumulative, so one that is lost (the edge was away) is made good
by the next. Publishing runs in its own task, off the ingest path.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

import msgspec

from cloud.ingest import Prepared
from floodgate import wire
from floodgate.errors import ContractError

log = logging.getLogger("floodgate.cloud.confirm")
Ranges = list[list[int]]  # [[first, last], ...], ascending, apart


class _Envelope(msgspec.Struct):
    """The envelope of a message the contract refused, as far as it can be read."""

    node: str | None = None
    boot: int | None = None
    seq: int | None = None


def add_ranges(ranges: Ranges, seqs: Iterable[int], most: int = wire.MAX_ACK_RANGES) -> Ranges:
    """``ranges`` with ``seqs`` added (merged, ascending); beyond ``most`` ranges the lowest go."""
    new: Ranges = []
    for s in sorted(set(seqs)):
        if new and s == new[-1][1] + 1:
            new[-1][1] = s
        else:
            new.append([s, s])
    out: Ranges = []
    for lo, hi in sorted([*ranges, *new]):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out[-most:]


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
    ) -> None:
        from floodgate.ids import now_ms as wall  # noqa: PLC0415

        self.publish = publish
        self.interval_s = interval_s
        self.max_boots = max_boots
        self.now_ms = now_ms or wall
        self.known: OrderedDict[tuple[str, int], Ranges] = OrderedDict()
        self._dirty: dict[str, set[int]] = {}
        self._wake = asyncio.Event()
        self.sent = 0  # ack messages published
        self.failed = 0  # ack messages that could not be published (sent again with the next news)

    def handled(self, p: Prepared) -> None:
        """A batch committed: what it handled joins the ranges (cheap: no I/O)."""
        for key, seqs in handled_of(p).items():
            known = self.known
            known[key] = add_ranges(known.pop(key, []), seqs)
            while len(known) > self.max_boots:
                known.popitem(last=False)
            self._dirty.setdefault(key[0], set()).add(key[1])
        if self._dirty:
            self._wake.set()

    def report(self, node: str, boots: Iterable[int]) -> bytes | None:
        """The ``ack`` payload for ``node``: every range known of each of ``boots``."""
        entries = [
            wire.AckBoot(boot=b, ranges=self.known[(node, b)])
            for b in sorted(boots)
            if (node, b) in self.known
        ]
        if not entries:
            return None
        return wire.encode(wire.Ack(v=1, node=node, ts=self.now_ms(), boots=entries))

    async def run(self) -> None:
        """Publish what is new, at most every ``interval_s``, one message per node."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.interval_s)  # more batches join this report
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            await self._flush(dirty)
            if self._dirty:  # not published (no connection): again after the next interval
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
                    self._dirty.setdefault(node, set()).update(dirty[node])
                    if isinstance(r, asyncio.CancelledError):
                        raise r

    async def _send(self, node: str, boots: set[int]) -> None:
        payload = self.report(node, boots)
        if payload is not None:
            await self.publish(str(wire.Topic(node, wire.Kind.ACK)), payload)
            self.sent += 1
