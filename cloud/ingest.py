"""Ingest: every received message checked against the contract, stored once.

A batch of received messages goes into the database in one transaction:
rejected ones become dead letters (with the contract's reason code), the rest
are recorded in the ``messages`` ledger and only the ones new to the ledger
are applied, so a replayed or redelivered message changes nothing.

On PostgreSQL the transaction takes row locks only on the nodes of the
batch's non-telemetry messages (states, births, events, alerts, command
results: ``Store.lock_nodes``). What telemetry says of its nodes and devices
(``nodes.last_seen_ms``, ``devices.last_reading_ms``) is handed to the store
once the batch has committed and written by it within a second
(``Store.note_heard``), and a node the collector has not seen before gets its
row in a short transaction before the batch (``Store.ensure_nodes``). With a
shared consumer every batch holds messages of most nodes: locking them all
had the batches of several collectors, and those in flight in one, wait on
each other. On SQLite (one writer) the times are written in the batch's
transaction, as before.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from cloud import reconcile
from cloud.db import alerts, commands, messages, sites
from cloud.db.store import Conn, Heard, Store, Times, kept_newest, refusal, savepoint
from cloud.metrics import IntakeMetrics
from cloud.tickets import TicketEvent, Tickets
from floodgate import wire
from floodgate.errors import ContractError
from floodgate.ids import new_ulid, now_ms

log = logging.getLogger("floodgate.cloud.ingest")
STORE_ERROR = "store_error"  # the dead-letter reason of a message the database refused


class CaughtUp:
    """How far an intake has taken in what the broker holds, so that ``Silence`` judges nodes
    against it, not against now: a node whose messages wait in a backlog (the collectors
    behind, or away from the broker) is late, not silent.

    ``ms``: a wall time before which the broker had nothing more for the intake (None before
    it first caught up); ``idle``: waiting with nothing in hand or in flight, which while
    ``ready()`` (subscribed: the broker pushes) means the broker has nothing either. The
    JetStream intake knows it exactly (a batch's last message: when it was stored, and how
    many wait after it); the MQTT intake from its batches (one not full, with nothing queued
    behind it: the broker had no more).
    """

    def __init__(self, ready: Callable[[], bool] = lambda: True) -> None:
        self.ms: int | None = None
        self.idle = False
        self.ready = ready

    def taken_to(self, t: int) -> None:
        """Everything the broker took before ``t`` is taken in (``t`` is now when it had no more)."""
        self.ms = t if self.ms is None else max(self.ms, t)

    def behind_ms(self) -> int | None:
        """How far behind now the intake is (0 when idle); None before it has first caught up."""
        if self.idle and self.ready():
            return 0
        return None if self.ms is None else max(0, now_ms() - self.ms)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    received_ms: int


@dataclass
class Counters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    batches_split: int = 0  # parts of batches the database refused, tried apart


@dataclass(frozen=True)
class Applied:
    """What a batch changed, for whoever reacts to it (tickets, live updates)."""

    alerts: list[tuple[str, wire.Alert]]
    states: list[tuple[str, wire.State]]
    results: list[tuple[str, wire.CmdResult]]
    tickets: list[TicketEvent] = field(default_factory=list)
    events: list[tuple[str, wire.Event]] = field(default_factory=list)
    # Telemetry's node and device times (PostgreSQL), for ``Store.note_heard`` once committed.
    heard: Heard = field(default_factory=Heard)


Row = tuple[Any, ...]


@dataclass
class Prepared:
    """A batch checked against the contract, with its rows built, not yet stored."""

    size: int
    ok: list[tuple[Received, wire.Decoded]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)
    ledger: dict[str, Row] = field(default_factory=dict)  # by msg_id, the first copy
    rows: dict[str, list[Row]] = field(default_factory=dict)  # readings by msg_id
    # Each device's newest reading time, (node, dev) -> ms. Duplicates count too:
    # their readings were stored once, and a later time only ever wins.
    newest: dict[tuple[str, str], int] = field(default_factory=dict)
    # Telemetry naming a series the collector has no id for yet (their rows hold None).
    unnamed: dict[str, wire.Telemetry] = field(default_factory=dict)
    # False: another consumer takes these messages too and keeps their dead letters (the
    # JetStream alert lane): none is written or counted here, the database's refusals neither.
    letters: bool = True


class Transition(NamedTuple):
    """An alert transition to record: the id it is stored under, its node, the alert."""

    msg_id: str
    node: str
    alert: wire.Alert
    probability: float | None = None  # of a forecast the collector made itself (cloud.forecast)


class Ingestor:
    def __init__(
        self, store: Store, tickets: Tickets | None = None, metrics: IntakeMetrics | None = None
    ) -> None:
        self.store = store
        self.tickets = tickets
        self.counters = Counters()
        self.metrics = metrics  # batch sizes and commit times, whichever intake commits

    async def ingest(self, batch: list[Received]) -> Applied:
        """Check and store one batch (``prepare`` then ``commit``)."""
        return await self.commit(self.prepare(batch))

    def prepare(self, batch: list[Received], into: Prepared | None = None) -> Prepared:
        """Everything that needs no database: contract checks, ledger and reading rows.

        A consumer prepares the next batch while the last one commits, a slice
        at a time (``into`` the same ``Prepared``), letting the commit have
        its turns of the event loop in between.
        """
        p = Prepared(0) if into is None else into
        p.size += len(batch)
        for r in batch:
            try:
                d = wire.decode(r.topic, r.payload)
            except ContractError as exc:
                p.dead.append(_letter(r, exc.code, exc.detail))
                continue
            except Exception as exc:  # a decoder bug on odd bytes: this message only
                p.dead.append(_unexpected(r, "decode", exc))
                continue
            try:
                self._add(p, r, d)
            except Exception as exc:  # a bug building its rows: nothing of it was added
                p.dead.append(_unexpected(r, "prepare", exc))
        return p

    def _add(self, p: Prepared, r: Received, d: wire.Decoded) -> None:
        """One message that passed the contract: its ledger row, reading rows and times.

        Its rows are built before anything is added to ``p``: if building them
        raises, ``p`` is as it was.
        """
        m = d.message
        fresh = isinstance(m, wire.Envelope) and m.msg_id not in p.ledger
        rows = (
            _reading_rows(m, self.store.series_ids.get) if fresh and isinstance(m, wire.Telemetry) else None
        )
        p.ok.append((r, d))
        if isinstance(m, wire.Envelope) and fresh:
            kind = d.topic.kind.value  # the row in LEDGER_COLUMNS order:
            p.ledger[m.msg_id] = (m.msg_id, m.node, m.boot, m.seq, kind, m.ts, r.received_ms)
            if isinstance(m, wire.Telemetry) and rows is not None:
                node = m.node
                p.rows[m.msg_id] = rows
                if any(r[0] is None for r in rows):
                    p.unnamed[m.msg_id] = m
                newest = p.newest
                for x in m.readings:
                    if x.ts > newest.get((node, x.dev), -1):
                        newest[(node, x.dev)] = x.ts

    async def commit(self, p: Prepared) -> Applied:
        """Store a prepared batch; only messages new to the ledger apply.

        In one transaction. Readings the database refuses (a value it cannot
        hold, a constraint) are set apart inside it, a chunk at a time
        (``Store.store_batch``). Any other refusal (a kind the ticket code does
        not know) has the batch tried again in halves, again and again, until
        each refused message is alone. Either way the refused messages become
        ``store_error`` dead letters and the rest is stored, in order. An error
        that is not about the data (the database gone, a deadlock) is raised:
        nothing is acknowledged, and the broker delivers the batch again.
        """
        self.counters.received += p.size
        applied = Applied([], [], [])
        started = time.perf_counter()
        await self._commit_or_split(p, applied)
        self.store.note_heard(applied.heard)
        if self.metrics is not None:
            self.metrics.batch_size.observe(p.size)
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            self.metrics.batches.inc()
        return applied

    async def _commit_or_split(self, p: Prepared, out: Applied) -> None:
        part = Applied([], [], [])  # what this transaction changed: kept only if it commits
        try:
            new, refused = await self._store(p, part)
        except Exception as exc:
            reason = refusal(exc)
            if reason is None or not p.ok:  # not the data's fault, or only contract dead letters
                raise
            await self._split(p, reason, out)
            return
        self._settled(p, part, len(new), out, refused)
        self._count_dead(p, p.dead + refused)

    def _settled(
        self, p: Prepared, part: Applied, stored: int, out: Applied, refused: list[dict[str, Any]]
    ) -> None:
        """``p`` is committed: what it changed joins ``out``, and it is counted."""
        out.alerts.extend(part.alerts)
        out.states.extend(part.states)
        out.results.extend(part.results)
        out.tickets.extend(part.tickets)
        out.events.extend(part.events)
        out.heard.add(part.heard.nodes, part.heard.devices)
        self.counters.stored += stored
        self.counters.batches_split += bool(refused)
        # The rest of what passed: envelopes the ledger already had (a collector's
        # own state on _host is neither).
        envelopes = sum(isinstance(d.message, wire.Envelope) for _, d in p.ok)
        self.counters.duplicates += envelopes - stored - len(refused)

    async def _split(self, p: Prepared, reason: str, out: Applied) -> None:
        """``p`` was refused for ``reason``: tried again in one transaction, in parts.

        Each part under a savepoint: a part refused is rolled back to it and
        split in halves, down to single messages, which become dead letters
        in the same transaction. One commit in all (each commit waits for the
        disk), and the contract's dead letters of the batch go with it.
        """
        done: list[tuple[Prepared, Applied, int, list[dict[str, Any]]]] = []
        refused: list[dict[str, Any]] = []
        # Every series named: the parts' rows are built again (``_add``), and no
        # series can be created inside the transaction (SQLite: a second writer).
        await self._name_series([d.message for _, d in p.ok if isinstance(d.message, wire.Telemetry)])
        async with self.store.begin() as conn:
            # The nodes every part may write locked first, in order, as one batch does.
            await self.store.lock_nodes(conn, _written(p))
            await self._dead(conn, p, p.dead)
            await self._bisect(conn, p.ok, reason, done, refused, p.letters)
            await self._dead(conn, p, refused)
        for part, applied, stored, letters in done:  # in the order received
            self._settled(part, applied, stored, out, letters)
            refused += letters
        self.counters.batches_split += 1
        self._count_dead(p, p.dead + refused)

    async def _bisect(
        self,
        conn: Conn,
        items: list[tuple[Received, wire.Decoded]],
        reason: str,
        done: list[tuple[Prepared, Applied, int, list[dict[str, Any]]]],
        refused: list[dict[str, Any]],
        keep: bool,
    ) -> None:
        """``items``, refused together for ``reason``: each half under a savepoint of ``conn``
        (``keep``: ``Prepared.letters`` of the batch they are of)."""
        if len(items) == 1:
            refused.append(_letter(items[0][0], STORE_ERROR, reason))
            return
        self.counters.batches_split += 1
        half = len(items) // 2
        for chunk in (items[:half], items[half:]):
            part = Prepared(0, letters=keep)
            for r, d in chunk:
                self._add(part, r, d)
            applied = Applied([], [], [])
            try:
                async with savepoint(conn):
                    stored, letters = await self._write(conn, part, applied)
            except Exception as exc:
                why = refusal(exc)
                if why is None:
                    raise
                await self._bisect(conn, chunk, why, done, refused, keep)
                continue
            done.append((part, applied, len(stored), letters))

    async def _store(self, p: Prepared, applied: Applied) -> tuple[set[str], list[dict[str, Any]]]:
        """``p`` in one transaction; returns the ids it stored and the dead letters of the
        messages the database refused."""
        if p.unnamed:  # new series: their ids first, committed on their own
            await self._name_series(p.unnamed.values())
            ids = self.store.series_ids
            for msg_id, t in p.unnamed.items():
                p.rows[msg_id] = _reading_rows(t, ids.__getitem__)
            p.unnamed.clear()
        # Nodes new to this collector: their rows committed first, locked by no batch.
        await self.store.ensure_nodes(_heard_in(p))
        if p.letters and not p.dead and all(isinstance(d.message, wire.Telemetry) for _, d in p.ok):
            # Telemetry alone, most batches: a transaction the store runs in one go.
            times, letter = _by_index(p)
            heard = applied.heard if self.store.defer_heard else None
            return await self.store.commit_batch(
                list(p.ledger.values()), p.rows, p.newest, times, letter, heard
            )
        return await self._commit(p, applied)

    async def _name_series(self, ms: Iterable[wire.Telemetry]) -> None:
        """Ids for the series of ``ms`` (``Store.resolve_series``: its own transaction)."""
        await self.store.resolve_series({(m.node, x.dev, x.metric) for m in ms for x in m.readings})

    async def _dead(self, conn: Conn, p: Prepared, letters: list[dict[str, Any]]) -> None:
        """Dead letters of ``p`` written in ``conn``'s transaction (not when another keeps them)."""
        if p.letters:
            await messages.dead(conn, letters)

    def _count_dead(self, p: Prepared, letters: list[dict[str, Any]]) -> None:
        if not p.letters:
            return
        self.counters.dead_letters += len(letters)
        for letter in letters:
            self.counters.by_reason[letter["code"]] += 1
            log.warning("dead letter %s on %s: %s", letter["code"], letter["topic"], letter["detail"])

    async def _commit(self, p: Prepared, applied: Applied) -> tuple[set[str], list[dict[str, Any]]]:
        """Any batch, in one transaction through SQLAlchemy (``_write``)."""
        async with self.store.begin() as conn:
            await self._dead(conn, p, p.dead)
            return await self._write(conn, p, applied)

    async def _write(
        self, conn: Conn, p: Prepared, applied: Applied
    ) -> tuple[set[str], list[dict[str, Any]]]:
        """The messages of ``p`` in ``conn``'s transaction; returns the ids it stored and the
        dead letters (written) of those whose readings the database refused.

        Locks (PostgreSQL), in this order, to the commit: the nodes rows of the
        batch's non-telemetry messages, in node order, before anything is written
        (``Store.lock_nodes``); the devices rows of its births' nodes (which it
        holds); the ticket lock, when it has alerts (``Store.lock_tickets``).
        Telemetry locks no nodes or devices row (its times go to
        ``applied.heard``), and nothing holding the ticket lock then takes a
        nodes row, so two batches, or a batch and ``Store.flush_heard``, never
        wait on each other in opposite orders.
        """
        await self.store.lock_nodes(conn, _written(p))
        heard = applied.heard if self.store.defer_heard else None
        # SQLite: device times go with the rest unless a birth in the batch may create a device
        # (then after it, ``_apply``). PostgreSQL: after the commit, with the nodes' (``heard``).
        births = heard is None and any(isinstance(d.message, wire.Birth) for _, d in p.ok)
        ledger = list(p.ledger.values())
        times, letter = _by_index(p)
        new, refused = await self.store.store_batch(
            conn, ledger, p.rows, None if births else p.newest, times, heard
        )
        letters = [letter(i, why) for i, why in refused]
        await self._dead(conn, p, letters)
        done: set[str] = set()
        fresh: list[tuple[wire.Envelope, int]] = []
        states: dict[str, sites.NodeState] = {}
        for r, d in p.ok:
            m = d.message
            if isinstance(m, wire.State) and d.topic.node != wire.HOST:
                node = d.topic.node
                # Of a node's states in the batch, one in order wins over those before it unless of
                # an older boot: so the last of the highest boot (``sites.node_states``).
                if node not in states or m.boot >= states[node].boot:
                    states[node] = sites.NodeState(m.online, m.boot, r.received_ms)
                applied.states.append((node, m))
            elif isinstance(m, wire.Envelope) and m.msg_id in new and m.msg_id not in done:
                done.add(m.msg_id)
                fresh.append((m, r.received_ms))
        await sites.node_states(conn, states)
        newest = p.newest if not refused else kept_newest(p.newest, ledger, times, refused)
        await self._apply(conn, fresh, newest if births else None, applied)
        return done, letters

    async def _apply(
        self,
        conn: Conn,
        fresh: list[tuple[wire.Envelope, int]],
        newest: dict[tuple[str, str], int] | None,
        out: Applied,
    ) -> None:
        """Apply the batch's new messages beyond what ``Store.store_batch`` did, in order.

        Births, events and what heartbeats say of their nodes' health (most of a
        city's messages that are not telemetry; births all at once when the edges
        connect again) are written a few statements for the batch, not several per
        message: held, births first, then events. A birth after a held event
        writes what is held first: a birth sets the node's health too, so the
        later of a birth and a heartbeat still wins.
        """
        held = _Held()
        for m, _ in fresh:
            if isinstance(m, wire.EventMessage):
                e = m.event
                held.events.append(messages.event_row(m.msg_id, m.node, e.dev, e.type, e.detail, m.ts))
                out.events.append((m.node, e))
                if e.type == "heartbeat":
                    held.health[m.node] = e.detail
            elif isinstance(m, wire.Birth):
                if held.events:
                    await held.write(conn)
                held.birth(m)
            elif isinstance(m, wire.CmdResult):
                # A result after the timeout still counts: it is what the box did.
                await commands.answered(conn, m.node, m.cmd_id, m.status, m.reason, m.ts)
                out.results.append((m.node, m))
        await held.write(conn)
        if newest is not None:  # after births, so a device born in this batch gets its time too
            await self.store.devices_read(conn, newest)
        # Alerts last (a birth in the same batch names the site) and together.
        batch = [m for m, _ in fresh if isinstance(m, wire.AlertMessage)]
        if batch:
            await self.record_alerts(conn, batch)
            out.alerts.extend((m.node, m.alert) for m in batch)
            if self.tickets is not None:
                # In the same transaction: an alert is never stored without its ticket.
                await self.tickets.on_alerts(conn, [(m.node, m.alert) for m in batch], out.tickets)
        # Then what births and heartbeats say of the nodes' open episodes.
        reports = [r for m, _ in fresh if (r := reconcile.report(m)) is not None]
        if reports:
            await self.reconcile_alerts(conn, reports, out)

    async def reconcile_alerts(self, conn: Conn, reports: list[reconcile.Report], out: Applied) -> None:
        """Close the active episodes the ``reports`` say are over, and open those they list that
        the collector never heard of (``cloud.reconcile``): a transition of the collector's for
        each, stored and applied to its ticket like any other."""
        nodes = {r.node for r in reports}
        listed = {ep["id"] for r in reports for ep in r.listed}

        async def todo() -> list[tuple[str, wire.Alert]]:
            items = reconcile.stale(reports, await alerts.active(conn, nodes, reconcile.NOT_REPORTED))
            if listed:
                known = await alerts.known(conn, listed)
                if len(known) < len(listed):
                    items += reconcile.unseen(reports, known, await sites.boots(conn, nodes))
            return items

        if not await todo():
            return
        await self.store.lock_tickets(conn)  # then read again: what committed meanwhile counts
        items = await todo()
        for node, a in items:
            log.info("alert %s of %s %s: %s", a.id, node, a.dev, a.reason, extra={"episode": a.id})
        await self.record_transitions(conn, [Transition(new_ulid(a.ts), node, a) for node, a in items])
        out.alerts.extend(items)
        if self.tickets is not None:
            await self.tickets.on_alerts(conn, items, out.tickets)

    async def record_alerts(self, conn: Conn, ms: list[wire.AlertMessage]) -> None:
        """Alert messages' transitions recorded (``record_transitions``), each under its message id."""
        await self.record_transitions(conn, [Transition(m.msg_id, m.node, m.alert) for m in ms])

    async def record_transitions(self, conn: Conn, ms: list[Transition]) -> None:
        """Episodes upserted and transitions stored, one statement each for the whole list.

        From alert messages, or raised by the collector itself (``comms_lost``,
        under an id of its own: no message from the node stands behind it).

        Under the ticket lock (``Store.lock_tickets``), held to the commit: the
        ticket step that follows sees every transition committed before.
        """
        if not ms:
            return
        await self.store.lock_tickets(conn)
        episodes = [
            {
                "id": m.alert.id,
                "node": m.node,
                "dev": m.alert.dev,
                "kind": m.alert.kind,
                "level": m.alert.level,
                "max_level": m.alert.level,
                "first_ts": m.alert.ts,
                "last_ts": m.alert.ts,
                "peak_value": m.alert.value,
                "unit": m.alert.unit,
                "threshold": m.alert.threshold,
                "reason": m.alert.reason,
            }
            for m in ms
        ]
        transitions = [
            {
                "msg_id": m.msg_id,
                "alert_id": m.alert.id,
                "level": m.alert.level,
                "prev": m.alert.prev,
                "value": m.alert.value,
                "threshold": m.alert.threshold,
                "ts": m.alert.ts,
                "actions": msgspec.json.encode(m.alert.actions).decode(),
                "reason": m.alert.reason,
                "eta_s": m.alert.eta_s,
                "probability": m.probability,
                "ticketed": False,  # until the ticket step applies it, in the episode's order
            }
            for m in ms
        ]
        await alerts.record(conn, episodes, transitions)


@dataclass
class _Held:
    """Births, events and heartbeats' health of a batch, held to be written together
    (``Ingestor._apply``): births first, then events."""

    births: dict[str, sites.Birth] = field(default_factory=dict)  # node -> its last birth held
    events: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)  # node -> its newest heartbeat's detail

    def birth(self, m: wire.Birth) -> None:
        node = {
            "site_name": m.site.name,
            "address": m.site.address,
            "lat": m.site.lat,
            "lon": m.site.lon,
            "exercise": m.site.exercise,
            "agent_version": m.agent_version,
            "config_hash": m.config_hash,
            "boot": m.boot,
            "birth_ms": m.ts,
            "online": True,
            "health": json.dumps(m.health),
        }
        devs = [
            {
                "dev": dv.id,
                "kind": dv.kind,
                "model": dv.model,
                "unit": dv.unit,
                "thresholds": json.dumps(dv.thresholds),
            }
            for dv in m.devices
        ]
        earlier = self.births.pop(m.node, None)  # a node born twice in a batch: the later wins
        self.births[m.node] = sites.Birth(node, [*(earlier.devices if earlier else []), *devs])

    async def write(self, conn: Conn) -> None:
        await sites.born(conn, self.births)
        await messages.events_many(conn, self.events)
        await sites.health(conn, self.health)
        self.births.clear()
        self.events.clear()
        self.health.clear()


def _written(p: Prepared) -> list[str]:
    """The nodes whose rows the non-telemetry messages of ``p`` may write (``_apply``), to lock."""
    return [
        d.topic.node
        for _, d in p.ok
        if d.topic.node != wire.HOST and not isinstance(d.message, wire.Telemetry)
    ]


def _heard_in(p: Prepared) -> dict[str, int]:
    """Node → the newest receive time of its messages in ``p``'s ledger."""
    heard: dict[str, int] = {}
    for m in p.ledger.values():
        if m[6] > heard.get(m[1], -1):
            heard[m[1]] = m[6]
    return heard


def _by_index(p: Prepared) -> tuple[Times, Callable[[int, str], dict[str, Any]]]:
    """For the messages of ``p`` by their index in its ledger, asked for only when the
    database refuses some: their devices' newest reading times, and their dead letters."""
    firsts: list[tuple[Received, wire.Envelope]] = []

    def first(i: int) -> tuple[Received, wire.Envelope]:
        if not firsts:
            copies: dict[str, tuple[Received, wire.Envelope]] = {}
            for r, d in p.ok:
                if isinstance(d.message, wire.Envelope):
                    copies.setdefault(d.message.msg_id, (r, d.message))
            firsts.extend(copies[msg_id] for msg_id in p.ledger)
        return firsts[i]

    def times(i: int) -> dict[tuple[str, str], int]:
        m = first(i)[1]
        return _newest(m) if isinstance(m, wire.Telemetry) else {}

    def letter(i: int, why: str) -> dict[str, Any]:
        return _letter(first(i)[0], STORE_ERROR, why)

    return times, letter


def _newest(m: wire.Telemetry) -> dict[tuple[str, str], int]:
    """Each device's newest reading time in ``m``, (node, dev) -> ms."""
    newest: dict[tuple[str, str], int] = {}
    for x in m.readings:
        if x.ts > newest.get((m.node, x.dev), -1):
            newest[(m.node, x.dev)] = x.ts
    return newest


def _letter(r: Received, code: str, detail: str) -> dict[str, Any]:
    """A dead letter's row; its texts as any database can hold them (no NUL, no lone surrogate)."""
    return {
        "topic": _text(r.topic),
        "payload": r.payload,
        "code": code,
        "detail": _text(detail),
        "received_ms": r.received_ms,
    }


def _unexpected(r: Received, step: str, exc: Exception) -> dict[str, Any]:
    """A message that made the collector's own code fail (a bug): an ``intake_error`` dead letter.

    Logged with the traceback; the intake goes on with the next message.
    """
    log.error("%s failed on a message on %s; kept as a dead letter", step, r.topic, exc_info=exc)
    return _letter(r, "intake_error", f"{step} failed: {type(exc).__name__}: {exc}")


def _text(s: str) -> str:
    if s.isascii() and "\x00" not in s:
        return s
    return s.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _reading_rows(m: wire.Telemetry, series: Callable[[tuple[str, str, str]], int | None]) -> list[Row]:
    """A telemetry message's readings as ``READING_COLUMNS`` tuples, its series id from ``series``."""
    node = m.node
    return [(series((node, x.dev, x.metric)), x.ts, x.value, x.quality) for x in m.readings]
