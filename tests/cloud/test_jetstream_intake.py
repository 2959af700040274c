"""The JetStream intake's edges (cloud/jetstream.py) on a real 3-node NATS cluster and a real database.

A fetch whose deadline a busy loop used up, a commit longer than ``ack_wait``, the intake
stopped mid-commit, a durable made by hand with other settings, a topic no collector takes,
the lag and readiness while fetches come back empty. A commit is held for as long as a test
needs by a PostgreSQL ``LOCK TABLE messages`` in another connection (a slow database).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiomqtt
import nats
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy import func, select, text

from cloud.db.schema import alerts, dead_letters
from cloud.db.store import Store
from cloud.ingest import Applied, Ingestor
from cloud.jetstream import (
    ALERT_FILTER,
    FILTER,
    STREAM,
    JetStreamIntake,
    NatsSettings,
    consumer_config,
    mismatch,
    topic_of,
)
from cloud.metrics import IntakeMetrics, Metrics
from cloud.pull import Puller
from floodgate.ids import new_ulid, now_ms
from floodgate.wire import Sequencer
from tests.cloud.test_collector import scalar
from tests.cloud.test_ingest import msg, telemetry
from tests.cloud.test_jetstream import consumer_idle, publish, stored
from tests.cloud.test_poison import POISON, refuse
from tests.helpers import NatsCluster, wait_until

PG = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
DURABLE = "floodgate-collectors"


async def stream_made(cluster: NatsCluster) -> None:
    """The gateway makes ``$MQTT_msgs`` on the first MQTT connection."""
    async with aiomqtt.Client("127.0.0.1", cluster.mqtt_ports[0], identifier="stream-maker"):
        pass


def intake_for(cluster: NatsCluster, store: Store, durable: str = DURABLE, **kw: Any) -> JetStreamIntake:
    settings = {k: kw.pop(k) for k in ("ack_wait_s", "fetch_wait_s") if k in kw}
    tuning = {k: kw.pop(k) for k in ("lag_every_s", "stale_s") if k in kw}
    intake = JetStreamIntake(
        NatsSettings(urls=tuple(cluster.nats_urls), durable=durable, reconnect_max_s=0.3, **settings),
        Ingestor(store),
        **kw,
    )
    for k, v in tuning.items():
        setattr(intake, k, v)
    return intake


@contextlib.asynccontextmanager
async def running(
    cluster: NatsCluster, intake: JetStreamIntake, wait_bound: bool = True
) -> AsyncIterator[asyncio.Task[None]]:
    await stream_made(cluster)
    task = asyncio.create_task(intake.run())
    try:
        if wait_bound:
            await wait_until(intake.ready.is_set, 30, "the intake bound to its consumer")
        yield task
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=30)


@contextlib.asynccontextmanager
async def intake_running(
    cluster: NatsCluster, store: Store, durable: str = DURABLE, wait_bound: bool = True, **kw: Any
) -> AsyncIterator[JetStreamIntake]:
    intake = intake_for(cluster, store, durable, **kw)
    async with running(cluster, intake, wait_bound):
        yield intake


@contextlib.asynccontextmanager
async def messages_locked(store: Store) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Inserts into ``messages`` wait (a slow database) until the function given is called."""
    conn = await store.engine.connect()
    tx = await conn.begin()
    await conn.exec_driver_sql("LOCK TABLE messages IN EXCLUSIVE MODE")

    async def release() -> None:
        if tx.is_active:
            await tx.rollback()

    try:
        yield release
    finally:
        await release()
        await conn.close()


def test_the_gateways_double_slash_is_a_dot_of_the_topic() -> None:
    # nats-server 2.10 stores a topic's dot as ``//``; 2.9 disconnects a client publishing one.
    assert topic_of("$MQTT.msgs.floodgate.v1.a//b.telemetry") == "floodgate/v1/a.b/telemetry"


async def pulling(nc: Any, stream: str) -> tuple[Any, Puller]:
    """A stream ``stream`` on ``<stream in lower case>.>`` (R3), its durable ``d``, and a puller on it."""
    js = nc.jetstream(timeout=15)
    await js.add_stream(name=stream, subjects=[stream.lower() + ".>"], num_replicas=3)
    await js.add_consumer(stream, ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT))
    puller = Puller(nc, stream, "d")
    await puller.start()
    return js, puller


@SQLITE
async def test_a_fetch_whose_deadline_a_busy_loop_used_up_is_an_empty_fetch(
    nats_cluster: NatsCluster, store: Store
) -> None:
    """A loaded collector's loop may hold past a pull's end (nats-py 2.16's own fetch then raised
    the builtin TimeoutError, which used to stop the intake, J1): the pull is an empty batch."""
    nc = await nats.connect(nats_cluster.nats_urls)
    stop = False

    async def busy() -> None:  # a loaded collector: the loop held up to 40 ms at a time
        held = random.Random(17)
        while not stop:
            time.sleep(held.uniform(0, 0.04))  # noqa: TID251, ASYNC251 - a held loop is the point, not a wait
            await asyncio.sleep(0)

    try:
        _, puller = await pulling(nc, "T")
        intake = JetStreamIntake(NatsSettings(urls=(), fetch_wait_s=0.03), Ingestor(store))
        loaded = asyncio.create_task(busy())
        try:
            for _ in range(60):
                assert await intake._fetch(puller) == []
        finally:
            stop = True
            await loaded
    finally:
        await nc.close()


async def test_a_pull_takes_what_an_earlier_pull_was_sent_and_is_not_ended_by_its_end(
    nats_cluster: NatsCluster,
) -> None:
    """Each pull has its own reply subject: the status that ends a pull given up on does not end
    the next, and the messages it was sent are this collector's still, taken with the next batch
    (dropped, they would come again only after ack_wait)."""
    nc = await nats.connect(nats_cluster.nats_urls)
    try:
        js, puller = await pulling(nc, "P")
        assert await puller.fetch(10, 0.2) == [] and puller.answered  # nothing: the server said so
        for i in range(5):
            await js.publish(f"p.{i}", str(i).encode())
        # A pull the puller gave up on (its reply subject is not the one under way) is answered.
        old = f"{puller._inbox}.0"
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.P.d", json.dumps({"batch": 3}).encode(), reply=old)
        await nc.flush()
        await wait_until(lambda: len(puller._held) == 3, 10, "the old pull's three messages")
        first = await puller.fetch(2, 5.0)
        assert [m.data for m in first] == [b"0", b"1"] and puller.answered
        second = await puller.fetch(10, 5.0)
        assert [m.data for m in second] == [b"2"]
        for i in range(3, 5):
            [m] = await puller.fetch(1, 5.0)
            assert m.data == str(i).encode()
        for m in [*first, *second]:
            await m.ack()
        # A pull under way: the old pull's end (its 408 at 0.3 s) does not end it; a message
        # published at 1 s is its batch.
        await nc.publish(
            "$JS.API.CONSUMER.MSG.NEXT.P.d",
            json.dumps({"batch": 10, "expires": 300_000_000}).encode(),
            reply=old,
        )
        await nc.flush()
        started = time.monotonic()

        async def later() -> None:
            await asyncio.sleep(1.0)
            await js.publish("p.5", b"5")

        publishing = asyncio.create_task(later())
        got = await puller.fetch(10, 5.0)
        await publishing
        assert [m.data for m in got] == [b"5"]
        assert time.monotonic() - started >= 0.9, "the old pull's end ended the pull under way"
        await puller.stop()
    finally:
        await nc.close()


async def test_a_pull_nobody_answers_is_empty_and_not_an_answer(nats_cluster: NatsCluster) -> None:
    """A consumer that is gone answers no pull: the batch is empty, and the server is not counted
    as having answered (``/readyz`` goes on the consumer's lag question then), nor the intake as
    caught up."""
    nc = await nats.connect(nats_cluster.nats_urls)
    try:
        js = nc.jetstream(timeout=15)
        await js.add_stream(name="G", subjects=["g.>"], num_replicas=3)
        puller = Puller(nc, "G", "nobody")
        await puller.start()
        assert await puller.fetch(10, 0.5) == []
        assert not puller.answered
    finally:
        await nc.close()


@PG
async def test_an_intake_stopped_mid_commit_lets_the_commit_finish_and_acknowledge(
    nats_cluster: NatsCluster, store: Store, db_url: str, node_id: str
) -> None:
    intake = intake_for(nats_cluster, store)
    async with messages_locked(store) as release, running(nats_cluster, intake) as run:
        await publish(nats_cluster, node_id, 1)
        await wait_until(lambda: intake.counters.fetched == 1, 20, "the message fetched")
        # Mid-commit: its insert waits on the lock. (Fetched is not enough: a stop while the batch
        # is still being checked drops it unacknowledged, to come again after ack_wait.)
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )

        async def committing() -> bool:
            return await scalar(db_url, waiting) == 1

        await wait_until(committing, 20, "the commit waiting on the lock")
        run.cancel()  # the collector stops (or its connection went) mid-commit
        await release()
        await asyncio.wait({run}, timeout=30)
        assert run.done()
    assert await stored(db_url, node_id) == 1  # type: ignore[misc]
    assert intake.counters.acked == 1
    # Acknowledged before the close: nothing waits for ack_wait (30 s) to come again.
    assert await consumer_idle(nats_cluster)


@PG
async def test_a_commit_longer_than_ack_wait_is_not_given_to_another_commit(
    nats_cluster: NatsCluster, store: Store, db_url: str, node_id: str
) -> None:
    slow = intake_running(nats_cluster, store, ack_wait_s=1.5, commits_in_flight=3)
    async with messages_locked(store) as release, slow as intake:
        await publish(nats_cluster, node_id, 1)
        await wait_until(lambda: intake.counters.fetched >= 1, 20, "the message fetched, committing")
        # Two more slots fetch meanwhile: without "in progress" they get it again after 1.5 s.
        await wait_until(
            lambda: intake.counters.redelivered or intake.counters.progress >= 6,
            20,
            "twice ack_wait of committing",
        )
        await release()
        await wait_until(lambda: consumer_idle(nats_cluster), 20, "acknowledged")
        assert intake.counters.redelivered == 0
        assert intake.ingestor.counters.duplicates == 0
    assert await stored(db_url, node_id) == 1  # type: ignore[misc]


@SQLITE
@pytest.mark.parametrize(
    ("made", "said"),
    [
        ({"deliver_subject": "by-hand", "ack_policy": AckPolicy.EXPLICIT}, "a push consumer"),
        ({"ack_policy": AckPolicy.NONE}, "ack policy none, not explicit"),
        ({"ack_policy": AckPolicy.EXPLICIT, "filter_subject": "$MQTT.msgs.>"}, "filter $MQTT.msgs.>, not"),
    ],
)
async def test_a_durable_made_by_hand_with_other_settings_is_refused_loudly(
    nats_cluster: NatsCluster,
    store: Store,
    caplog: pytest.LogCaptureFixture,
    made: dict[str, Any],
    said: str,
) -> None:
    await stream_made(nats_cluster)
    nc = await nats.connect(nats_cluster.nats_urls)
    try:
        js = nc.jetstream(timeout=15)
        made = {"filter_subject": FILTER, **made}
        await js.add_consumer(STREAM, ConsumerConfig(durable_name="by-hand", **made))
        with caplog.at_level(logging.DEBUG, "floodgate.cloud.jetstream"):
            async with intake_running(nats_cluster, store, durable="by-hand", wait_bound=False) as intake:

                def refusals() -> list[logging.LogRecord]:
                    return [r for r in caplog.records if "delete it" in r.getMessage()]

                await wait_until(lambda: len(refusals()) >= 3, 20, "asked again and again")
                assert not intake.ready.is_set() and not intake.consuming()
                assert [r.levelno for r in refusals()] == [logging.ERROR] + [logging.DEBUG] * (
                    len(refusals()) - 1
                ), "ERROR once"
                assert said in refusals()[0].getMessage()
                # Put right (deleted): the intake makes its own and consumes.
                await js.delete_consumer(STREAM, "by-hand")
                await wait_until(intake.consuming, 20, "the intake on a consumer of its own")
                info = await js.consumer_info(STREAM, "by-hand")
                assert info.config.deliver_subject is None and info.config.ack_policy == AckPolicy.EXPLICIT
    finally:
        await nc.close()


@SQLITE
async def test_a_message_on_a_topic_no_collector_takes_is_a_dead_letter_not_acked_unread(
    nats_cluster: NatsCluster, store: Store, node_id: str
) -> None:
    seq = Sequencer(node_id, 1)
    body = json.dumps({**seq.envelope(), "readings": []}).encode()
    async with intake_running(nats_cluster, store) as intake:
        async with aiomqtt.Client("127.0.0.1", nats_cluster.mqtt_ports[0], identifier="odd") as c:
            await c.publish(f"floodgate/v1/{node_id}/x/telemetry", body, qos=1)  # a level too many
            await c.publish(f"floodgate/v1/{node_id}/nonsense", body, qos=1)
            await c.publish(f"floodgate/v1/{node_id}/cmd", b"{}", qos=1)  # for the node: not ours
        await wait_until(lambda: intake.counters.acked == 3, 20, "all three acknowledged")
        assert intake.counters.skipped == 1
    async with store.read() as conn:
        rows = (await conn.execute(select(dead_letters.c.topic, dead_letters.c.code))).all()
    assert sorted(rows) == sorted(
        [
            (f"floodgate/v1/{node_id}/x/telemetry", "bad_topic"),
            (f"floodgate/v1/{node_id}/nonsense", "bad_topic"),
        ]
    )
    assert intake.ingestor.counters.dead_letters == 2


@PG
async def test_the_lag_is_asked_while_fetches_wait_and_readiness_goes_when_the_server_does(
    nats_cluster: NatsCluster, store: Store, node_id: str
) -> None:
    metrics = IntakeMetrics(Metrics())
    async with (
        messages_locked(store) as release,
        intake_running(
            nats_cluster, store, batch_max=1, metrics=metrics, lag_every_s=0.2, stale_s=2.0
        ) as intake,
    ):
        await publish(nats_cluster, node_id, 1)
        await wait_until(lambda: intake.counters.fetched == 1, 20, "one message fetched, committing")
        # Its one commit slot is busy: no fetch, yet the lag shows what comes meanwhile.
        await publish(nats_cluster, node_id, 4, boot=2)
        await wait_until(lambda: metrics.consumer_lag.value() == 4, 20, "the lag from the server")
        await release()
        await wait_until(lambda: consumer_idle(nats_cluster), 20, "all acknowledged")
        await wait_until(lambda: metrics.consumer_lag.value() == 0, 20, "no lag")
        assert intake.consuming()
        for i in range(nats_cluster.size):
            nats_cluster.kill(i)  # fetches come back empty (nats-py reconnecting), bound still
        await wait_until(lambda: not intake.consuming(), 20, "not ready without the server")


@SQLITE
async def test_the_intake_is_behind_by_its_backlogs_store_time_until_it_has_taken_it_in(
    nats_cluster: NatsCluster, store: Store, db_url: str, node_id: str
) -> None:
    """How far the intake has taken in the consumer (``caught_up``, which the silence checks
    judge nodes against): a batch with more waiting behind it takes it to its last message's
    store time, not to now; the empty fetch after the backlog, to now."""
    async with running(nats_cluster, intake_for(nats_cluster, store)):
        pass  # the durable made: from now on the stream keeps what it filters
    await publish(nats_cluster, node_id, 300)
    published = now_ms()
    seen: list[int | None] = []

    async def record(_: Applied) -> None:
        seen.append(intake.caught_up.ms)

    intake = intake_for(nats_cluster, store, batch_max=100, on_applied=record)
    async with running(nats_cluster, intake):
        await wait_until(lambda: intake.counters.acked == 300, 30, "the backlog taken in")
        await wait_until(lambda: (intake.caught_up.ms or 0) >= published, 10, "caught up after it")
    assert await stored(db_url, node_id) == 300  # type: ignore[misc]
    first = seen[0]
    assert first is not None and published - 60_000 < first <= published, (first, published)


@SQLITE
async def test_the_alert_lane_takes_an_alert_in_while_the_telemetry_before_it_waits(
    nats_cluster: NatsCluster, store: Store, db_url: str, node_id: str
) -> None:
    """The alert lane (its own durable on ``…*.alert``) stores an alert with the shared consumer
    nowhere (a backlog nobody takes); once the shared one consumes, it stores the rest, has the
    alert already (stored once), and reports every seq to the node, the alert's too."""
    main = intake_for(nats_cluster, store)
    async with running(nats_cluster, main):
        pass  # the shared durable made: the stream keeps what it filters from now on
    settings = NatsSettings(urls=tuple(nats_cluster.nats_urls), reconnect_max_s=0.3).alert_lane()
    lane = JetStreamIntake(settings, Ingestor(store), confirm=False)
    async with running(nats_cluster, lane):
        pass  # the lane's durable made
    seq = Sequencer(node_id, boot=1)
    sent = [telemetry(seq) for _ in range(30)]
    a = {
        "id": new_ulid(),
        "dev": "lvl-1",
        "kind": "flood",
        "level": "danger",
        "prev": "clear",
        "value": 900.0,
    }
    sent.append(msg(seq, "alert", {"alert": {**a, "ts": now_ms()}}))
    async with aiomqtt.Client("127.0.0.1", nats_cluster.mqtt_ports[0], identifier="pub-lane") as c:
        for r in sent:
            await c.publish(r.topic, r.payload, qos=1)

    lane = JetStreamIntake(settings, Ingestor(store), confirm=False)
    async with running(nats_cluster, lane):
        await wait_until(lambda: lane.counters.acked == 1, 20, "the alert taken by the lane")
        assert lane.counters.fetched == 1, "the lane sees the alerts only"
        assert await scalar(db_url, select(func.count()).select_from(alerts)) == 1
        assert await stored(db_url, node_id) == 1, "the telemetry before it still waits"  # type: ignore[misc]
        main = intake_for(nats_cluster, store)
        async with running(nats_cluster, main):
            await wait_until(lambda: main.counters.acked == len(sent), 20, "the backlog taken in")
            assert main.ingestor.counters.duplicates == 1, "the alert: already had"
            assert main.confirmer is not None
            await wait_until(
                lambda: main.confirmer is not None and main.confirmer.known.get((node_id, 1)) == [[0, 30]],
                10,
                "every seq, the alert's too, confirmed to the node",
            )
    assert await stored(db_url, node_id) == len(sent)  # type: ignore[misc]
    assert lane.confirmer is None


@SQLITE
async def test_an_alert_the_database_refuses_is_one_dead_letter_though_both_lanes_take_it(
    nats_cluster: NatsCluster, store: Store, db_url: str, node_id: str
) -> None:
    """The alert lane and the shared consumer both take every alert; one the database refuses
    is stored by neither, so each would set it apart: the shared consumer keeps the dead letter,
    the lane acknowledges it and writes and counts nothing (it wrote a second one)."""
    await refuse(store, "no_poison", "alert_transitions", "value", str(POISON))
    main = intake_for(nats_cluster, store)
    async with running(nats_cluster, main):
        pass  # the shared durable made
    settings = NatsSettings(urls=tuple(nats_cluster.nats_urls), reconnect_max_s=0.3).alert_lane()
    seq = Sequencer(node_id, boot=1)
    a = {"id": new_ulid(), "dev": "lvl-1", "kind": "flood", "level": "danger", "prev": "clear"}
    poison = msg(seq, "alert", {"alert": {**a, "value": POISON, "ts": now_ms()}})
    lane = JetStreamIntake(settings, Ingestor(store), confirm=False)
    async with running(nats_cluster, lane):
        async with aiomqtt.Client("127.0.0.1", nats_cluster.mqtt_ports[0], identifier="pub-refused") as c:
            await c.publish(poison.topic, poison.payload, qos=1)
        await wait_until(lambda: lane.counters.acked == 1, 20, "the alert acknowledged by the lane")
    main = intake_for(nats_cluster, store)
    async with running(nats_cluster, main):
        await wait_until(lambda: main.counters.acked == 1, 20, "the alert acknowledged by the shared one")
    async with store.read() as conn:
        rows = (await conn.execute(select(dead_letters.c.code, dead_letters.c.payload))).all()
    assert [tuple(r) for r in rows] == [("store_error", poison.payload)]
    assert main.ingestor.counters.by_reason == {"store_error": 1}
    assert lane.ingestor.counters.dead_letters == 0 and not lane.ingestor.counters.by_reason
    assert await scalar(db_url, select(func.count()).select_from(alerts)) == 0


def test_a_durable_on_another_filter_is_not_the_alert_lanes() -> None:
    shared = consumer_config(NatsSettings(urls=()))
    assert mismatch(shared) is None
    assert mismatch(shared, ALERT_FILTER) == f"filter {FILTER}, not {ALERT_FILTER}"
    lane = consumer_config(NatsSettings(urls=(), durable="fg").alert_lane())
    assert (lane.durable_name, lane.filter_subject) == ("fg-alerts", ALERT_FILTER)
    assert mismatch(lane, ALERT_FILTER) is None


@SQLITE
async def test_a_message_to_an_idle_intake_is_taken_at_once_not_when_the_pull_expires(
    nats_cluster: NatsCluster, store: Store, db_url: str, node_id: str
) -> None:
    """A pull for a whole batch on a consumer with less comes back with what there is, not
    when the batch is full or the pull expires (nats-server 2.9.10 and nats-py as pinned; an
    upgrade where it lingers would hold every message of a collector that keeps up, and each
    alert on the alert lane, for ``fetch_wait_s``). With the pull 60 s long, a lone message is
    stored long before it ends."""
    intake = intake_for(nats_cluster, store, fetch_wait_s=60.0)
    async with running(nats_cluster, intake):
        await wait_until(lambda: intake.counters.fetched == 0 and intake.consuming(), 10, "bound, idle")
        await publish(nats_cluster, node_id, 1)
        await wait_until(lambda: intake.counters.acked == 1, 20, "the message stored, the pull not over")
        await publish(nats_cluster, node_id, 3)
        await wait_until(lambda: intake.counters.acked == 4, 20, "the next ones too")
    assert await stored(db_url, node_id) == 4  # type: ignore[misc]


@SQLITE
async def test_a_consumer_deleted_under_a_running_intake_is_made_again_and_consumed(
    nats_cluster: NatsCluster, store: Store, db_url: str, node_id: str
) -> None:
    """Deleted by hand (``nats consumer rm``) while the intake runs: its pulls go unanswered, and
    its lag question finds it gone; the intake binds again, which makes it again."""
    async with intake_running(nats_cluster, store, lag_every_s=0.2) as intake:
        nc = await nats.connect(nats_cluster.nats_urls)
        try:
            js = nc.jetstream(timeout=15)
            await js.delete_consumer("$MQTT_msgs", DURABLE)

            async def there() -> bool:
                try:
                    await js.consumer_info("$MQTT_msgs", DURABLE)
                except nats.js.errors.NotFoundError:
                    return False
                return intake.consuming()

            await wait_until(there, 30, "the consumer made again and bound")
        finally:
            await nc.close()
        await publish(nats_cluster, node_id, 2)
        await wait_until(lambda: intake.counters.acked >= 2, 30, "what came after stored")
    assert await stored(db_url, node_id) == 2  # type: ignore[misc]
