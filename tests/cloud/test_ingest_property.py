"""Property: whatever the edge sends, a running collector stores it or keeps it as
a dead letter, and goes on storing what comes after (SQLite and PostgreSQL).

Messages are contract-valid and near-valid: strings with U+0000 and lone
surrogates, integers past 64 bits and times past year 9999, non-finite and
huge floats, strings longer than their column, unknown kinds, and values the
test's database itself refuses (a real CHECK constraint or trigger), all sent
through the broker to one collector that runs for the whole test.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from cloud.collector import Collector
from cloud.db.schema import dead_letters, messages
from cloud.db.store import Store
from floodgate.errors import ContractError
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer, decode
from tests.cloud.test_collector import collecting
from tests.cloud.test_poison import POISON, refuse, refuse_poison
from tests.helpers import Mosquitto, wait_until

REFUSED_REASON = "refuse-me"  # an alert reason the test's database refuses

T = TypeVar("T")


def mostly(valid: st.SearchStrategy[T], bad: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``valid``, and one time in eight ``bad``: most messages valid, many near it."""
    return st.integers(0, 7).flatmap(lambda i: bad if i == 0 else valid)


clean_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
texts = mostly(
    clean_text,
    st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfff", "\U0001f30a", "积水", "x" * 17, "m" * 65]),
)
ints = mostly(
    st.integers(0, 2**41),
    st.sampled_from([2**63 - 1, 2**63, 2**64, 10**30, -1, 253_402_300_799_999, 253_402_300_800_000]),
)
floats = mostly(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([POISON, 1.7976931348623157e308, -0.0, float("nan"), float("inf")]),
)
ids = mostly(st.sampled_from(["lvl-1", "imm-1"]), st.sampled_from(["", "Bad", "lvl-1\n", "a" * 65]))


def readings() -> st.SearchStrategy[list[dict[str, Any]]]:
    reading = st.fixed_dictionaries(
        {
            "dev": ids,
            "ts": ints,
            "metric": mostly(st.sampled_from(["depth_mm", "wet"]), st.just("Bad-Metric")),
            "value": mostly(floats, st.just(POISON)),
            "quality": mostly(st.sampled_from(["good", "suspect", "bad"]), st.just("great")),
        }
    )
    return mostly(st.lists(reading, min_size=1, max_size=2), st.just([]))


def bodies() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """(kind, the message body beyond the envelope)."""
    alert = st.fixed_dictionaries(
        {
            "id": st.builds(new_ulid),
            "dev": ids,
            "kind": st.sampled_from(
                ["flood", "immersion", "sensor_fault", "comms_lost", "forecast", "tsunami"]
            ),
            "level": st.sampled_from(["clear", "warning", "danger"]),
            "prev": st.sampled_from(["clear", "warning", "danger"]),
            "ts": ints,
        },
        optional={
            "value": floats,
            "unit": texts,
            "reason": st.one_of(st.just(REFUSED_REASON), texts, texts),
            "actions": st.lists(st.fixed_dictionaries({"dev": ids, "do": texts}), max_size=2),
        },
    )
    device = st.fixed_dictionaries(
        {"id": ids, "kind": mostly(st.sampled_from(["level", "gate"]), st.just("pump")), "model": texts},
        optional={"unit": texts, "thresholds": st.dictionaries(texts, floats, max_size=2)},
    )
    birth = st.fixed_dictionaries(
        {
            "agent_version": texts,
            "config_hash": texts,
            "site": st.fixed_dictionaries(
                {
                    "name": mostly(clean_text.filter(bool), texts),
                    "lat": st.floats(-90, 90),
                    "lon": st.floats(-180, 180),
                },
                optional={"address": texts},
            ),
            "devices": st.lists(device, max_size=2),
        },
        optional={"health": st.dictionaries(texts, st.one_of(texts, ints, floats), max_size=2)},
    )
    event = st.fixed_dictionaries(
        {"type": mostly(st.sampled_from(["heartbeat", "device.fault"]), st.just("nope"))},
        optional={"dev": ids, "detail": st.dictionaries(texts, st.one_of(texts, ints), max_size=3)},
    )
    result = st.fixed_dictionaries(
        {"cmd_id": texts, "status": st.sampled_from(["done", "rejected", "maybe"])},
        optional={"reason": texts},
    )
    return st.one_of(
        st.tuples(st.just("telemetry"), st.fixed_dictionaries({"readings": readings()})),
        st.tuples(st.just("alert"), st.fixed_dictionaries({"alert": alert})),
        st.tuples(st.just("birth"), birth),
        st.tuples(st.just("event"), st.fixed_dictionaries({"event": event})),
        st.tuples(st.just("cmd-result"), result),
    )


def envelopes() -> st.SearchStrategy[dict[str, Any]]:
    """Envelope fields to override (most often none), and unknown fields (ignored by the contract)."""
    return mostly(
        st.just({}),
        st.dictionaries(
            st.sampled_from(["seq", "boot", "ts", "x-extra"]), st.one_of(ints, texts), max_size=2
        ),
    )


def refused_by_the_database(kind: str, body: dict[str, Any]) -> bool:
    if kind == "telemetry":
        return any(r.get("value") == POISON for r in body["readings"])
    return kind == "alert" and body["alert"].get("reason") == REFUSED_REASON


@pytest.fixture
async def collector(broker: Mosquitto, db_url: str) -> AsyncIterator[Collector]:
    """One collector for every example, on a database that refuses some values itself."""
    store = Store(db_url)
    await store.migrate()
    await refuse_poison(store)
    await refuse(store, "no_reason", "alerts", "reason", f"'{REFUSED_REASON}'")
    await store.close()
    async with collecting(db_url, broker, f"col-prop-{uuid.uuid4().hex[:8]}") as col:
        yield col


async def stored_ids(col: Collector, ids: set[str]) -> set[str]:
    async with col.store.read() as conn:
        return set(
            (await conn.execute(select(messages.c.msg_id).where(messages.c.msg_id.in_(ids)))).scalars()
        )


@pytest.mark.timeout(600)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_every_message_is_stored_or_dead_lettered_and_ingest_goes_on(
    collector: Collector, broker: Mosquitto, data: st.DataObject
) -> None:
    col = collector
    connected_at = col.consumer.connected_at
    node = f"prop-{uuid.uuid4().hex[:8]}"
    seq = Sequencer(node, boot=1)
    drawn = data.draw(st.lists(st.tuples(bodies(), envelopes()), min_size=1, max_size=8))
    sent: list[tuple[str, bytes, dict[str, Any], bool]] = []
    for (kind, body), env in drawn:
        message = {**seq.envelope(), **env, **body}
        payload = json.dumps(message).encode()  # lone surrogates as \ud800 escapes; NaN as NaN
        sent.append((f"floodgate/v1/{node}/{kind}", payload, message, refused_by_the_database(kind, body)))
    last = seq.envelope()
    good = {
        **last,
        "readings": [{"dev": "lvl-1", "ts": 1, "metric": "depth_mm", "value": 1.0, "quality": "good"}],
    }
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        for topic, payload, _, _ in sent:
            await c.publish(topic, payload, qos=1)
        await c.publish(f"floodgate/v1/{node}/telemetry", json.dumps(good).encode(), qos=1)
    # Ingest did not stall: the good message sent after all the others is stored,
    # and every message is accounted for (batches in flight may commit in any order).
    await wait_until(lambda: stored_ids(col, {last["msg_id"]}), 30, "the message sent last stored")
    expected: list[str | None] = []  # per message: the dead letter's reason, or None: stored
    for topic, payload, _, refused in sent:
        try:
            decode(topic, payload)
        except ContractError as exc:
            expected.append(exc.code)
        else:
            expected.append("store_error" if refused else None)

    async def outcome() -> list[str | None]:
        stored = await stored_ids(col, {m["msg_id"] for _, _, m, _ in sent})
        async with col.store.read() as conn:
            d = dead_letters.c
            q = select(d.payload, d.code).where(d.payload.in_([p for _, p, _, _ in sent]))
            dead = {p: code for p, code in await conn.execute(q)}
        return [
            None if m["msg_id"] in stored and p not in dead else dead.get(p, "missing") for _, p, m, _ in sent
        ]

    async def settled() -> bool:
        return "missing" not in await outcome()

    await wait_until(settled, 30, "every message stored or dead-lettered")
    for (_, payload, _, _), want, have in zip(sent, expected, await outcome(), strict=True):
        assert have == want, f"{payload!r}: expected {want or 'stored'}, got {have or 'stored'}"
    assert col.consumer.connected_at == connected_at, "no batch failed whole: no reconnect"
