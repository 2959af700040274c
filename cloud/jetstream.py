"""The collector's intake from a NATS JetStream cluster: one durable pull consumer every collector shares.

The cluster's MQTT gateway stores each QoS 1 PUBLISH in its own stream
``$MQTT_msgs`` (subject ``$MQTT.msgs.<topic, / as .>``, payload as it was)
before it sends the PUBACK, replicated to the cluster. A durable pull consumer
on that stream, filtered to ``$MQTT.msgs.floodgate.v1.>`` with explicit acks,
is shared by every collector (same durable name): the server hands each
message to one of them, and gives it to another when it is not acknowledged
within ``ack_wait_s``. The stream keeps only what some consumer is interested
in, so the consumer is made before traffic (here, at start, if missing).

Each collector fetches batches of up to ``batch_max``, gives them to the same
ingest as the MQTT intake (the topic is the subject with ``.`` turned back into
``/`` and ``//`` into ``.``), and acknowledges a batch's messages only after
its commit; a commit that lasts tells the server every ``ack_wait_s / 3`` that
its batch is in progress, so that it is not given to another collector. A poison
message, or one on a topic no collector takes (not ``floodgate/v1/<node>/<kind>``),
is stored as a dead letter by ingest and acknowledged with its batch. When the
commit fails (the database), the batch is negatively acknowledged with a delay
and comes again, to this collector or another; the ledger makes a second delivery
harmless. When the intake stops consuming (shutdown, a lost connection), the
commits in flight finish, for up to ``DRAIN_S``, and acknowledge their batches.

A durable of the same name made by hand with other settings (a push consumer,
no acks, another filter) is refused: the intake is not ready and says why once
at ERROR. The consumer's lag is asked every ``LAG_EVERY_S``; the intake counts as
ready only while the server answered it (a fetch or that question) within
``STALE_S``.

A user stream capturing ``floodgate.v1.>`` is not used: the gateway does not
wait for it before its PUBACK (acknowledged messages were lost across a leader
``kill -9``). ``tests/test_nats.py`` pins the gateway's behaviour. Nor is
``$MQTT_msgs`` a safe copy of everything: nats-server 2.9.10 drops some messages
that another QoS 1 subscriber of the edges' topics acknowledges before this
consumer has delivered them (docs/deployment.md); the edges send again what
the collectors do not confirm.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cloud.confirm import Confirmer, alongside
from cloud.consumer import EDGE_KINDS
from cloud.ingest import Applied, CaughtUp, Ingestor, Prepared, Received
from cloud.metrics import IntakeMetrics
from cloud.pull import Puller
from floodgate.broker import reconnect_delays
from floodgate.ids import now_ms
from floodgate.wire import PREFIX, Kind, collector_of

log = logging.getLogger("floodgate.cloud.jetstream")
STREAM = "$MQTT_msgs"  # the MQTT gateway's own stream (nats-server 2.9)
SUBJECT_PREFIX = "$MQTT.msgs."
FILTER = SUBJECT_PREFIX + PREFIX.replace("/", ".") + ".>"
# The alert lane's consumer: every node's alerts, and nothing else (2.9 has one filter a consumer).
ALERT_FILTER = SUBJECT_PREFIX + PREFIX.replace("/", ".") + ".*." + Kind.ALERT.value
ALERT_LANE_SUFFIX = "-alerts"  # its durable: the shared one's name and this
PREPARE_SLICE = 50  # messages checked between two turns of the event loop
EDGE_KIND_NAMES = frozenset(k.value for k in EDGE_KINDS)
NODE_KIND_NAMES = frozenset(k.value for k in (Kind.CMD, Kind.ACK))  # what the collector sends the nodes
DRAIN_S = 10.0  # how long the commits in flight may finish when the intake stops consuming
LAG_EVERY_S = 5.0  # the consumer's lag asked this often
STALE_S = 30.0  # not ready when the server has not answered (a fetch, a lag question) for this long


def _for_nodes(topic: str) -> bool:
    """A topic the collector sends on (``floodgate/v1/<node>/cmd``, ``…/ack``): stored by the gateway
    for the nodes' subscriptions, acknowledged unread. Any other goes to ingest, which stores what
    the MQTT intake would and makes a dead letter of the rest (a node id with a dot, an unknown
    kind, a level too many). A collector's own online state (``…/_host/<client_id>/state``) is
    for the nodes too."""
    if collector_of(topic) is not None:
        return True
    return topic.rpartition("/")[2] in NODE_KIND_NAMES and topic.count("/") == 3


def topic_of(subject: str) -> str:
    """The MQTT topic a ``$MQTT_msgs`` subject was stored under (the gateway stores a topic's
    ``/`` as ``.`` and its ``.`` as ``//``)."""
    return subject.removeprefix(SUBJECT_PREFIX).replace("//", "\x00").replace(".", "/").replace("\x00", ".")


def subject_of(topic: str) -> str:
    """The NATS subject the MQTT gateway delivers to the subscribers of ``topic`` (its ``.`` as
    ``//``, its ``/`` as ``.``)."""
    return topic.replace(".", "//").replace("/", ".")


class ConsumerMismatch(Exception):
    """The durable exists with settings the intake cannot work with."""


class ConsumerGone(nats.errors.Error):
    """The durable is no longer on the server (deleted by hand, or its stream was): bound again,
    which makes it again."""


def mismatch(c: ConsumerConfig, want: str = FILTER) -> str | None:
    """What is wrong with an existing durable's config for an intake filtering ``want``; None
    when nothing."""
    wrong = []
    if c.deliver_subject:
        wrong.append(f"a push consumer (deliver_subject {c.deliver_subject}), not a pull one")
    policy = str(getattr(c.ack_policy, "value", c.ack_policy))  # consumer_info gives a str
    if policy != AckPolicy.EXPLICIT.value:
        wrong.append(f"ack policy {policy}, not explicit (messages would be lost)")
    filters = [f for f in (c.filter_subject, *(c.filter_subjects or ())) if f]
    if filters != [want]:
        wrong.append(f"filter {', '.join(filters) or '(none)'}, not {want}")
    return "; ".join(wrong) or None


@dataclass(frozen=True)
class NatsSettings:
    urls: tuple[str, ...]
    durable: str = "floodgate-collectors"
    ack_wait_s: float = 30.0
    max_ack_pending: int = 20_000
    fetch_wait_s: float = 1.0
    user: str | None = None
    password: str | None = None
    reconnect_max_s: float = 2.0
    filter: str = FILTER  # ALERT_FILTER for the alert lane

    def alert_lane(self) -> NatsSettings:
        """The alert lane's: its own durable (this one's name and ``-alerts``) on the alerts only."""
        return dataclasses.replace(self, durable=self.durable + ALERT_LANE_SUFFIX, filter=ALERT_FILTER)


def consumer_config(s: NatsSettings) -> ConsumerConfig:
    """The durable pull consumer every collector shares."""
    return ConsumerConfig(
        durable_name=s.durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=s.filter,
        ack_wait=s.ack_wait_s,
        max_ack_pending=s.max_ack_pending,
        max_deliver=-1,  # never given up: a message that cannot be stored is a dead letter, acked
        max_waiting=512,
    )


@dataclass
class JetStreamCounters:
    fetched: int = 0
    acked: int = 0
    redelivered: int = 0  # fetched with num_delivered > 1
    nacked: int = 0  # after a failed commit
    batches: int = 0
    # Messages for the nodes (cmd, ack, a collector's state), acknowledged unread, by the topic's last level.
    skipped_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    progress: int = 0  # times a committing batch was said in progress (its ack_wait started again)

    @property
    def skipped(self) -> int:
        return self.skipped_kinds.total()


# A JetStream API request (consumer info/create, bind) on a loaded cluster can take
# longer than nats-py's 5 s default; every retry of one that timed out adds load.
JS_API_TIMEOUT_S = 15.0


def failure(exc: BaseException) -> str:
    """Type and message: a timeout's str() is empty, which made 'not consuming: ' say nothing."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class JetStreamIntake:
    """Fetch, ingest, then acknowledge, with up to ``commits_in_flight`` batches committing at once."""

    def __init__(
        self,
        settings: NatsSettings,
        ingestor: Ingestor,
        on_applied: Callable[[Applied], Awaitable[None]] | None = None,
        batch_max: int = 500,
        commits_in_flight: int = 1,
        metrics: IntakeMetrics | None = None,
        confirm_interval_s: float = 0.5,
        confirm: bool = True,
        lane: str = "",
    ) -> None:
        """``confirm=False`` (the alert lane): what it handles is not reported to the nodes; the
        shared consumer's copy of each message is, as already had, once it comes (a report of
        an alert ahead of the backlog would show the nodes holes before it, sent again). Nor
        does it keep dead letters: what fails the contract or the database refuses is passed
        over, and the shared consumer keeps it, once.

        ``lane``: the ``lane`` label of this intake's samples in ``metrics`` (its lag, its
        redeliveries, its connection), e.g. ``alerts``; "" (the shared consumer) none."""
        self.settings = settings
        self.metrics = metrics  # redeliveries and the consumer's lag for GET /metrics
        self._labels = {"lane": lane} if lane else {}
        self.ingestor = ingestor
        # What each node's messages became, told to the node after commit (wire contract: "ack"),
        # on this connection: see ``publish``.
        self.confirmer = Confirmer(self.publish, confirm_interval_s) if confirm else None
        self._nc: Nats | None = None  # the connection while bound to the consumer
        # How far the collectors' consumer is taken in, as this intake saw it (cloud.silence).
        self.caught_up = CaughtUp()
        self.on_applied = on_applied
        self.batch_max = batch_max
        self.commits_in_flight = max(1, commits_in_flight)
        self.counters = JetStreamCounters()
        self.ready = asyncio.Event()  # set once the consumer is bound
        self._failing = False  # a commit failed and none has succeeded since (logged once)
        self._closing = False  # our own close: its disconnect is not news
        self._answered = 0.0  # time.monotonic() of the server's last answer (a fetch, consumer info)
        self.lag_every_s = LAG_EVERY_S
        self.stale_s = STALE_S

    def consuming(self) -> bool:
        """Bound to the consumer and heard from the server within ``stale_s`` (``/readyz``)."""
        return self.ready.is_set() and time.monotonic() - self._answered <= self.stale_s

    async def publish(self, topic: str, payload: bytes) -> None:
        """A message for the nodes' MQTT subscriptions of ``topic``, as a plain NATS message: the
        gateway hands it to them at QoS 0 and stores nothing. The ``ack`` reports go so: a QoS 1
        PUBLISH through the gateway would be stored in ``$MQTT_msgs`` (replicated) and handed to
        the collectors' consumer to skip, and an MQTT PUBLISH costs both sides more than this. A
        report is cumulative: one a node misses (it was away) is made good by the next, or the
        node sends again at its deadline. Fails while not bound (the report waits for the next)."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise nats.errors.ConnectionClosedError
        await nc.publish(subject_of(topic), payload)

    async def _connect(self) -> Nats:
        s = self.settings
        down = False

        async def disconnected() -> None:
            nonlocal down
            if not down and not self._closing:
                down = True
                log.warning("NATS connection lost; reconnecting", extra={"servers": list(s.urls)})

        async def reconnected() -> None:
            nonlocal down
            down = False
            url = nc.connected_url
            log.info("NATS reconnected", extra={"server": url.netloc if url is not None else ""})

        async def error(exc: Exception) -> None:
            log.debug("NATS client: %s", exc)

        nc = await nats.connect(
            servers=list(s.urls),
            user=s.user,
            password=s.password,
            name="floodgate-collector",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=max(0.1, min(s.reconnect_max_s, 2.0)),
            connect_timeout=2,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        return nc

    async def ensure_consumer(self, nc: Nats) -> None:
        """The shared durable consumer, made if missing (the stream appears on the first MQTT connect)."""
        js = nc.jetstream(timeout=JS_API_TIMEOUT_S)
        try:
            info = await js.consumer_info(STREAM, self.settings.durable)
        except nats.js.errors.NotFoundError:
            pass
        else:
            wrong = mismatch(info.config, self.settings.filter)
            if wrong is not None:
                raise ConsumerMismatch(
                    f"JetStream consumer {self.settings.durable} on {STREAM} is {wrong}: delete it (nats"
                    f" consumer rm {STREAM} {self.settings.durable}) or set nats.durable to another name"
                )
            return
        try:
            await js.add_consumer(STREAM, consumer_config(self.settings))
            log.info("made the shared JetStream consumer", extra={"durable": self.settings.durable})
        except nats.js.errors.BadRequestError as exc:
            # Another collector made it at the same moment with other settings: theirs stays.
            log.warning("JetStream consumer %s not made: %s", self.settings.durable, exc)

    async def run(self) -> None:
        await alongside(self.confirmer, self._run())

    async def _run(self) -> None:
        delays = reconnect_delays(0.1, self.settings.reconnect_max_s)
        failing = False  # logged once, then quietly until it consumes again
        # A bug (not the network): batches committed when it was last logged at ERROR;
        # quiet, and no fresh backoff, until a batch commits after it.
        broken_at: int | None = None
        refused: str | None = None  # the consumer mismatch last logged at ERROR
        while True:
            nc: Nats | None = None
            try:
                nc = await self._connect()
                await self.ensure_consumer(nc)
                js = nc.jetstream(timeout=JS_API_TIMEOUT_S)
                puller = Puller(nc, STREAM, self.settings.durable)
                await puller.start()
                self._nc = nc
                self._answered = time.monotonic()
                self.ready.set()
                failing = False
                refused = None
                if self.metrics is not None:
                    self.metrics.connected.set(1, **self._labels)
                log.info("JetStream intake bound", extra={"durable": self.settings.durable, "stream": STREAM})
                if broken_at != self.counters.batches:
                    delays = reconnect_delays(0.1, self.settings.reconnect_max_s)
                await self._consume(puller, js)
            except ConsumerMismatch as exc:
                # Someone made the durable by hand: not ready until it is put right (asked again).
                log.log(logging.DEBUG if str(exc) == refused else logging.ERROR, "%s", exc)
                refused = str(exc)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                # No server yet, no stream yet (no MQTT client has connected), a leader election.
                why = failure(exc)
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "JetStream intake not consuming: %s", why)
                failing = True
            except Exception as exc:  # a bug: logged, and the intake starts again after a pause
                if broken_at == self.counters.batches:
                    log.debug("JetStream intake failed again: %s", failure(exc))
                else:
                    log.error("JetStream intake failed; consuming again: %s", failure(exc), exc_info=exc)
                broken_at = self.counters.batches
            finally:
                self.ready.clear()
                self._nc = None
                if self.metrics is not None:
                    self.metrics.connected.set(0, **self._labels)
                if nc is not None:
                    self._closing = True
                    with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                        await asyncio.wait_for(nc.close(), 5)
                    self._closing = False
            await asyncio.sleep(next(delays))

    async def _consume(self, puller: Puller, js: JetStreamContext) -> None:
        inflight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.commits_in_flight)
        watch = asyncio.create_task(self._watch(js))
        try:
            while True:
                await slots.acquire()
                if watch.done():  # the consumer is gone (or the watch failed): bind again
                    slots.release()
                    watch.result()
                try:
                    msgs = await self._fetch(puller)
                except BaseException:
                    slots.release()
                    raise
                if not msgs:
                    slots.release()
                    continue
                try:
                    prepared = await self._prepare(msgs)
                except BaseException:
                    slots.release()
                    raise
                # Once committed, the consumer is taken in up to the batch's last message's store
                # time, or to now when nothing waited after it.
                last = msgs[-1].metadata
                upto = now_ms() if not last.num_pending else int(last.timestamp.timestamp() * 1000)
                task = asyncio.create_task(self._commit(msgs, prepared, slots, upto))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                task.add_done_callback(_log_unexpected)
                await asyncio.sleep(0)  # it starts now, not after the next fetch
        finally:
            watch.cancel()
            # The commits in flight finish and acknowledge (a cancelled one could be mid-COMMIT,
            # its batch back only after ack_wait); what is not acknowledged by then comes again
            # after ack_wait (to whichever collector asks).
            pending = set(inflight)
            if pending:
                _, pending = await asyncio.wait(pending, timeout=DRAIN_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, watch, return_exceptions=True)

    async def _watch(self, js: JetStreamContext) -> None:
        """The consumer's lag every ``lag_every_s``, from the server (fetches may all be empty).
        Ends with ``ConsumerGone`` when the server no longer has the consumer."""
        while True:
            try:
                info = await js.consumer_info(STREAM, self.settings.durable)
            except nats.js.errors.NotFoundError as exc:
                # Pulls on it go unanswered: nothing would come until a restart.
                raise ConsumerGone(
                    f"JetStream consumer {self.settings.durable} is gone ({failure(exc)})"
                ) from exc
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                log.debug("JetStream consumer info: %s", failure(exc))
            else:
                self._answered = time.monotonic()
                if self.metrics is not None:
                    self.metrics.consumer_lag.set(info.num_pending or 0, **self._labels)
            await asyncio.sleep(self.lag_every_s)

    async def _fetch(self, puller: Puller) -> list[Msg]:
        msgs = await puller.fetch(self.batch_max, self.settings.fetch_wait_s)
        if puller.answered:
            self._answered = time.monotonic()
        if not msgs:
            if puller.answered:  # the server said it has nothing for us
                self.caught_up.taken_to(now_ms())
            return []
        self.counters.fetched += len(msgs)
        again = sum(1 for m in msgs if m.metadata.num_delivered > 1)
        self.counters.redelivered += again
        if self.metrics is not None and msgs:
            self.metrics.redeliveries.inc(again, **self._labels)
            # What the consumer still holds for the collectors after this batch's last message.
            self.metrics.consumer_lag.set(msgs[-1].metadata.num_pending or 0, **self._labels)
        return msgs

    async def _prepare(self, msgs: list[Msg]) -> Prepared:
        """The batch checked for ingest; what the nodes are sent (cmd, ack, the collectors' own
        online states) is only acknowledged.

        The consumer's one filter (2.9 has no filter list) also takes the collector's own
        commands and confirmations, stored by the gateway for the nodes' subscriptions.
        """
        t = now_ms()
        # The alert lane: the shared consumer takes every alert too and keeps the dead letters.
        prepared = Prepared(0, letters=self.confirmer is not None)
        taken = []
        for r in (Received(topic_of(m.subject), m.data, t) for m in msgs):
            if _for_nodes(r.topic):
                self.counters.skipped_kinds[r.topic.rpartition("/")[2]] += 1
            else:
                taken.append(r)
        for i in range(0, len(taken), PREPARE_SLICE):
            self.ingestor.prepare(taken[i : i + PREPARE_SLICE], prepared)
            await asyncio.sleep(0)  # the commits in flight take their next steps
        return prepared

    async def _commit(self, msgs: list[Msg], prepared: Prepared, slots: asyncio.Semaphore, upto: int) -> None:
        try:
            keep = asyncio.create_task(self._in_progress(msgs))
            try:
                applied = await self.ingestor.commit(prepared)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(msgs, exc)
                return
            finally:
                keep.cancel()
            if self._failing:
                self._failing = False
                log.info("ingest stores again")
            # Stored: an ack that cannot go (the connection dropped) undoes nothing.
            # ack_wait brings the message again and the ledger knows it.
            acked = 0
            for m in msgs:
                try:
                    await m.ack()
                    acked += 1
                except nats.errors.Error:
                    break  # the rest cannot go either
            self.counters.acked += acked
            self.counters.batches += 1
            self.caught_up.taken_to(upto)
            if self.confirmer is not None:
                self.confirmer.handled(prepared)
            if self.on_applied is not None:
                try:
                    await self.on_applied(applied)
                except Exception:  # stored and acknowledged: what reacts to it cannot undo that
                    log.exception("a reaction to a stored batch failed")
        finally:
            slots.release()

    async def _in_progress(self, msgs: list[Msg]) -> None:
        """While the batch commits, every ``ack_wait_s / 3``: it is in progress (its ack_wait starts
        again), so a long commit is not given to another collector to do twice."""
        every = self.settings.ack_wait_s / 3
        while True:
            await asyncio.sleep(every)
            for m in msgs:
                try:
                    await m.in_progress()
                except nats.errors.Error:
                    return  # the connection went: ack_wait brings them back
            self.counters.progress += 1

    async def _failed(self, msgs: list[Msg], exc: Exception) -> None:
        """A commit failed (most likely the database): the batch comes again after a pause."""
        if not self._failing:
            self._failing = True
            log.error("ingest failed; the batch is redelivered: %s", exc, exc_info=exc)
        else:
            log.debug("ingest still failing: %s", exc)
        self.counters.nacked += len(msgs)
        delay = min(self.settings.reconnect_max_s, self.settings.ack_wait_s) or 0.1
        started = time.monotonic()
        for m in msgs:
            try:
                await m.nak(delay=delay)
            except nats.errors.Error:
                break  # the connection went: ack_wait brings them back
        # Do not take the next batch at once into a failing database.
        await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))


def _log_unexpected(task: asyncio.Task[None]) -> None:
    """A commit task's exception, retrieved and logged (a commit handles what it expects)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("a JetStream commit failed: %s", exc, exc_info=exc)
