"""Property-based fuzzing: no MQTT payload crashes ingest, no API body gets a 5xx."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from cloud.db.schema import dead_letters, messages
from cloud.db.store import Store
from cloud.ingest import Ingestor, Received
from floodgate.errors import ContractError
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer, decode
from tests.cloud.test_api import Api, api  # noqa: F401 - the fixture
from tests.cloud.test_tickets import Site

REASONS = {"bad_topic", "too_large", "bad_json", "bad_version", "schema", "node_mismatch"}
KINDS = ["state", "birth", "telemetry", "alert", "event", "cmd-result", "cmd", "nope"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def near_valid(seq: Sequencer) -> st.SearchStrategy[dict[str, Any]]:
    """A real envelope with fields knocked out or replaced: the interesting cases."""
    base = {
        **seq.envelope(),
        "readings": [{"dev": "lvl-1", "ts": 1, "metric": "depth_mm", "value": 1.0, "quality": "good"}],
        "alert": {
            "id": new_ulid(),
            "dev": "lvl-1",
            "kind": "flood",
            "level": "danger",
            "prev": "clear",
            "ts": 1,
        },
        "event": {"type": "heartbeat", "detail": {}},
        "cmd_id": new_ulid(),
        "status": "done",
        "online": True,
    }
    keys = sorted(base)
    return st.builds(
        lambda drop, change: {
            **{k: v for k, v in base.items() if k not in drop},
            **change,
        },
        st.sets(st.sampled_from(keys), max_size=4),
        st.dictionaries(st.sampled_from(keys), json_values, max_size=3),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_no_payload_crashes_ingest_and_every_reject_has_a_reason(
    tmp_path: Path, data: st.DataObject
) -> None:
    seq = Sequencer("hp-1", boot=1)
    kind = data.draw(st.sampled_from(KINDS))
    node = data.draw(st.sampled_from(["hp-1", "hp-2", "BAD NODE", ""]))
    payload: bytes = data.draw(
        st.one_of(
            st.binary(max_size=200),
            near_valid(seq).map(lambda d: json.dumps(d).encode()),
            json_values.map(lambda v: json.dumps(v).encode()),
        )
    )
    topic = f"floodgate/v1/{node}/{kind}"
    reason: tuple[str, str] | None = None
    try:
        decode(topic, payload)
    except ContractError as exc:
        reason = (exc.code, exc.detail)
    assert reason is None or (reason[0] in REASONS and reason[1])
    store = Store(f"sqlite:///{tmp_path / f'fuzz-{uuid.uuid4().hex}.db'}")  # one per example
    try:
        await store.migrate()
        ing = Ingestor(store)
        before = ing.counters.dead_letters
        await ing.ingest([Received(topic, payload, 1)])
        assert set(ing.counters.by_reason) <= REASONS
        async with store.read() as conn:
            dead = (await conn.execute(select(func.count()).select_from(dead_letters))).scalar()
            stored = (await conn.execute(select(func.count()).select_from(messages))).scalar()
        if reason is None:
            assert dead == 0
        else:
            assert dead == 1 and ing.counters.dead_letters - before == 1
            assert ing.counters.by_reason[reason[0]] == 1, "kept with the contract's reason"
        assert stored is not None
    finally:
        await store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(
        [
            "/api/v1/tickets",
            "/api/v1/commands",
            "/api/v1/users",
            "/api/v1/tokens",
            "/api/v1/auth/login",
            "ACTION",
        ]
    ),
    action=st.sampled_from(
        ["dispatch", "accept", "reject", "report", "verify", "evaluate", "reopen", "merge", "comment"]
    ),
    body=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "node": st.text(max_size=70),
                "kind": st.text(max_size=12),
                "priority": st.sampled_from(["danger", "warning", "fault", "x"]),
                "note": st.text(max_size=50),
                "type": st.sampled_from(["rebirth", "gate.close", "x"]),
                "dev": st.text(max_size=40),
                "args": json_values,
                "reason": st.text(max_size=30),
                "ttl_s": st.floats(allow_nan=True, allow_infinity=True),
                "score": st.integers(min_value=-10, max_value=10) | st.floats(allow_nan=True),
                "unit": st.text(max_size=70),
                "of": st.text(max_size=30),
                "photo_url": st.text(max_size=30),
                "username": st.text(max_size=70),
                "password": st.text(max_size=20),
                "role": st.text(max_size=12),
            },
        ),
    ),
    raw=st.booleans(),
)
async def test_no_api_body_gets_a_server_error(
    api: Api,  # noqa: F811
    route: str,
    action: str,
    body: Any,
    raw: bool,
) -> None:
    if not hasattr(api, "ticket_id"):
        site = Site(api.ingestor)
        await site.send(site.alert(new_ulid(), "danger", "clear"))
        _, rows = await api.tickets.list()
        api.ticket_id = rows[0]["id"]  # type: ignore[attr-defined]
    path = f"/api/v1/tickets/{api.ticket_id}/{action}" if route == "ACTION" else route  # type: ignore[attr-defined]
    async with api.client("admin") as admin:
        text = json.dumps(body).encode()  # NaN and Infinity too, as some clients send them
        if raw:
            text = text[:-1] or b"{"  # cut short
        r = await admin.post(path, content=text, headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (path, body, r.text)
    if r.status_code >= 400:
        assert r.json()["detail"], "a 4xx says what is wrong"
