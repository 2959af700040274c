"""The wire contract module: what it accepts, what it rejects and why."""

from __future__ import annotations

import json

import msgspec
import pytest

from floodgate.errors import ContractError
from floodgate.ids import new_ulid
from floodgate.wire import (
    ID_PATTERN,
    MAX_ACK_RANGES,
    MAX_MESSAGE_BYTES,
    METRIC_PATTERN,
    MODELS,
    ULID_PATTERN,
    Ack,
    Kind,
    Sequencer,
    State,
    Telemetry,
    Topic,
    _Pattern,
    build,
    decode,
    encode,
    json_schemas,
    sign_command,
    verify_command,
)


def telemetry(node: str = "hp-1", **extra: object) -> dict[str, object]:
    env = Sequencer(node, boot=3).envelope(ts=1_763_700_000_000)
    reading = {"dev": "lvl-1", "ts": 1, "metric": "depth_mm", "value": 12.5, "quality": "good"}
    return {**env, "readings": [reading], **extra}


def test_topic_round_trip() -> None:
    t = Topic.parse("floodgate/v1/hp-kexiang-01/alert")
    assert str(t) == "floodgate/v1/hp-kexiang-01/alert"
    assert str(Topic.parse("floodgate/v1/_host/state")) == "floodgate/v1/_host/state"


@pytest.mark.parametrize(
    "topic", ["floodgate/v1/Bad_Node/alert", "floodgate/v2/n/alert", "floodgate/v1/n/nope", "x"]
)
def test_bad_topics_are_rejected(topic: str) -> None:
    with pytest.raises(ContractError) as e:
        Topic.parse(topic)
    assert e.value.code == "bad_topic"


def test_valid_message_decodes_and_unknown_fields_are_ignored() -> None:
    payload = json.dumps(telemetry(future_field={"x": 1})).encode()
    d = decode("floodgate/v1/hp-1/telemetry", payload)
    assert isinstance(d.message, Telemetry)
    assert d.message.readings[0].value == 12.5


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda m: m.update(v=2), "bad_version"),
        (lambda m: m.update(node="other"), "node_mismatch"),
        (lambda m: m.update(readings=[]), "schema"),
        (lambda m: m.update(msg_id="not-a-ulid"), "schema"),
        (lambda m: m["readings"][0].update(quality="great"), "schema"),
        (lambda m: m.update(readings=[m["readings"][0]] * 501), "schema"),
    ],
)
def test_contract_violations_carry_a_reason(mutate, code) -> None:  # type: ignore[no-untyped-def]
    msg = telemetry()
    mutate(msg)
    with pytest.raises(ContractError) as e:
        decode("floodgate/v1/hp-1/telemetry", json.dumps(msg).encode())
    assert e.value.code == code
    assert e.value.detail


def test_size_and_json_checks() -> None:
    with pytest.raises(ContractError, match="too_large"):
        decode("floodgate/v1/hp-1/telemetry", b" " * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(ContractError, match="bad_json"):
        decode("floodgate/v1/hp-1/telemetry", b"{not json")
    with pytest.raises(ContractError, match="schema"):
        decode("floodgate/v1/hp-1/telemetry", b"[1, 2]")


def test_non_finite_values_are_not_json() -> None:
    msg = telemetry()
    payload = json.dumps(msg).replace("12.5", "NaN").encode()
    with pytest.raises(ContractError, match="bad_json"):
        decode("floodgate/v1/hp-1/telemetry", payload)


def test_sequencer_counts_up_with_unique_ids() -> None:
    s = Sequencer("hp-1", boot=7)
    envs = [s.envelope() for _ in range(1000)]
    assert [e["seq"] for e in envs] == list(range(1000))
    assert len({e["msg_id"] for e in envs}) == 1000
    assert {e["boot"] for e in envs} == {7}


def test_encode_round_trips() -> None:
    msg = build(Telemetry, telemetry())
    assert decode("floodgate/v1/hp-1/telemetry", encode(msg)).message == msg


def test_command_signature_covers_every_field() -> None:
    key = b"k" * 32
    cmd = sign_command(
        {
            "v": 1,
            "cmd_id": new_ulid(),
            "type": "gate.close",
            "dev": "gate-1",
            "args": {},
            "issued_by": "user:chen",
            "issued_at": 1,
            "expires_at": 2,
        },
        key,
    )
    assert verify_command(cmd, key)
    assert not verify_command(cmd, b"x" * 32)
    assert not verify_command({**cmd, "dev": "gate-2"}, key)
    assert not verify_command({**cmd, "extra": 1}, key)
    assert not verify_command({k: v for k, v in cmd.items() if k != "sig"}, key)


def alert_message(node: str = "hp-1") -> dict[str, object]:
    env = Sequencer(node, boot=3).envelope(ts=1_763_700_000_000)
    alert = {"id": new_ulid(), "dev": "lvl-1", "kind": "flood", "level": "warning", "prev": "clear", "ts": 1}
    return {**env, "alert": {**alert, "actions": [{"dev": "sign-1", "do": "show"}]}}


@pytest.mark.parametrize(
    ("kind", "message", "mutate", "path"),
    [
        ("telemetry", telemetry, lambda m: m.update(node="Hp_1"), "node"),
        ("telemetry", telemetry, lambda m: m.update(msg_id="01ARZ3NDEKTSV4RRFFQ69G5FAU"), "msg_id"),
        ("telemetry", telemetry, lambda m: m["readings"][0].update(dev="LVL 1"), "readings[0].dev"),
        ("telemetry", telemetry, lambda m: m["readings"][0].update(metric="Depth"), "readings[0].metric"),
        ("alert", alert_message, lambda m: m["alert"].update(dev="-x"), "alert.dev"),
        ("alert", alert_message, lambda m: m["alert"].update(id="x"), "alert.id"),
        (
            "alert",
            alert_message,
            lambda m: m["alert"]["actions"][0].update(dev="Sign"),
            "alert.actions[0].dev",
        ),
    ],
)
def test_ids_are_checked_against_their_pattern_with_the_path(kind, message, mutate, path) -> None:  # type: ignore[no-untyped-def]
    good = message()
    decode(f"floodgate/v1/hp-1/{kind}", json.dumps(good).encode())  # its ids are now remembered as valid
    bad = message()
    mutate(bad)
    for _ in range(2):  # a refused id is never remembered: refused the second time too
        with pytest.raises(ContractError) as e:
            decode(f"floodgate/v1/hp-1/{kind}", json.dumps(bad).encode())
        assert e.value.code == "schema"
        assert e.value.detail.startswith(f"{path}: Expected `str` matching regex '^"), e.value.detail
    model = MODELS[Kind(kind)]
    with pytest.raises(msgspec.ValidationError, match="matching regex"):
        build(model, bad)  # messages built on the edge are held to the same pattern


def test_remembered_ids_are_bounded_and_only_valid_ones() -> None:
    p = _Pattern(r"^a+$", remember=2)
    for value in ["a", "aa", "aaa", "aaaa"]:
        p.check(value, "x")
        assert len(p._ok) <= 2
    with pytest.raises(ValueError, match=r"^x: Expected `str` matching regex '\^a\+\$'$"):
        p.check("b", "x")
    assert "b" not in p._ok
    p.check(None, "x")  # an optional id that is absent


def test_json_schemas_still_carry_the_id_patterns() -> None:
    text = json.dumps(json_schemas()["telemetry"])
    assert json.dumps(ID_PATTERN) in text
    assert json.dumps(METRIC_PATTERN) in text
    assert json.dumps(ULID_PATTERN) in text


def alert_message(**alert: object) -> dict[str, object]:
    env = Sequencer("hp-1", boot=3).envelope(ts=1_763_700_000_000)
    body = {"id": new_ulid(), "dev": "lvl-1", "kind": "flood", "level": "warning", "prev": "clear", "ts": 5}
    return {**env, "alert": {**body, **alert}}


@pytest.mark.parametrize(
    ("kind", "message", "path"),
    [
        ("alert", alert_message(reason="water\u0000level"), "alert.reason"),
        ("alert", alert_message(unit="\u0000"), "alert.unit"),
        ("telemetry", {**telemetry(), "node": "hp-1"}, None),  # the same with no NUL: passes
        (
            "event",
            {**telemetry(), "event": {"type": "heartbeat", "detail": {"a": [1, {"b": "x\u0000"}]}}},
            "event.detail.a[1].b",
        ),
        (
            "event",
            {**telemetry(), "event": {"type": "heartbeat", "detail": {"k\u0000": 1}}},
            "event.detail['k\\x00']",
        ),
    ],
)
def test_no_string_may_hold_nul(kind: str, message: dict[str, object], path: str | None) -> None:
    """U+0000 no PostgreSQL text can hold: refused at decode, naming where, on every database."""
    payload = json.dumps(message).encode()
    if path is None:
        decode(f"floodgate/v1/hp-1/{kind}", payload)
        return
    with pytest.raises(ContractError) as e:
        decode(f"floodgate/v1/hp-1/{kind}", payload)
    assert (e.value.code, e.value.detail) == ("schema", f"{path}: U+0000 (NUL) is not allowed in a string")


def test_an_escaped_backslash_before_u0000_is_no_nul() -> None:
    decode("floodgate/v1/hp-1/alert", json.dumps(alert_message(reason="C:\\u0000")).encode())


@pytest.mark.parametrize("escape", ["\\ud800", "\\uDBFF", "\\udc00", "\\udc00\\ud800"])
def test_a_lone_surrogate_is_not_unicode_text(escape: str) -> None:
    payload = json.dumps(alert_message(reason="@")).replace("@", f"a{escape}b").encode()
    with pytest.raises(ContractError) as e:
        decode("floodgate/v1/hp-1/alert", payload)
    assert e.value.code == "bad_json"
    assert "lone UTF-16 surrogate" in e.value.detail and escape[:6] in e.value.detail
    paired = json.dumps(alert_message(reason="a\U0001f30ab")).encode()  # ensure_ascii: a surrogate pair
    assert b"\\ud83c\\udf0a" in paired
    decode("floodgate/v1/hp-1/alert", paired)


@pytest.mark.parametrize(
    ("mutate", "path", "limit"),
    [
        (lambda m: m.update(seq=2**63), "seq", "<= 9223372036854775807"),
        (lambda m: m.update(boot=2**64), "boot", "<= 9223372036854775807"),
        (lambda m: m.update(ts=253_402_300_800_000), "ts", "<= 253402300799999"),
        (lambda m: m["readings"][0].update(ts=10**20), "readings[0].ts", "<= 253402300799999"),
        (lambda m: m["readings"][0].update(dev="lvl-1\n"), "readings[0].dev", "matching regex"),
    ],
)
def test_numbers_no_column_holds_are_refused(mutate, path: str, limit: str) -> None:  # type: ignore[no-untyped-def]
    msg = telemetry()
    mutate(msg)
    with pytest.raises(ContractError) as e:
        decode("floodgate/v1/hp-1/telemetry", json.dumps(msg).encode())
    assert e.value.code == "schema" and e.value.detail.startswith(f"{path}: ") and limit in e.value.detail


def test_a_number_beyond_float_range_is_refused() -> None:
    payload = json.dumps(telemetry()).replace("12.5", "-1e309").encode()
    with pytest.raises(ContractError) as e:
        decode("floodgate/v1/hp-1/telemetry", payload)
    assert (e.value.code, e.value.detail) == ("schema", "readings[0].value: Number out of range")


def test_the_largest_values_that_fit_pass() -> None:
    msg = telemetry(seq=2**63 - 1, boot=2**63 - 1, ts=253_402_300_799_999)
    msg["readings"][0].update(value=1.7976931348623157e308)  # type: ignore[index]
    decode("floodgate/v1/hp-1/telemetry", json.dumps(msg).encode())


@pytest.mark.parametrize(
    ("kind", "message", "path", "most"),
    [
        ("alert", alert_message(unit="x" * 17), "alert.unit", 16),
        ("birth", {"devices": [{"id": "d", "kind": "level", "model": "m" * 65}]}, "devices[0].model", 64),
        (
            "birth",
            {"devices": [{"id": "d", "kind": "level", "model": "m", "unit": "u" * 17}]},
            "devices[0].unit",
            16,
        ),
        ("birth", {"agent_version": "9" * 33}, "agent_version", 32),
        ("birth", {"config_hash": "f" * 65}, "config_hash", 64),
    ],
)
def test_strings_longer_than_their_column_are_refused(
    kind: str, message: dict[str, object], path: str, most: int
) -> None:
    env = Sequencer("hp-1", boot=3).envelope(ts=1)
    birth = {
        "agent_version": "0.1",
        "config_hash": "abc",
        "site": {"name": "T", "lat": 1, "lon": 1},
        "devices": [],
    }
    payload = {**env, **birth, **message} if kind == "birth" else message
    with pytest.raises(ContractError) as e:
        decode(f"floodgate/v1/hp-1/{kind}", json.dumps(payload).encode())
    assert (e.value.code, e.value.detail) == ("schema", f"{path}: Expected `str` of length <= {most}")


def test_the_collectors_ack_report() -> None:
    """``ack``: what the collector handled of a node's messages, per boot, as seq ranges."""
    good = {"v": 1, "node": "hp-01", "ts": 1, "boots": [{"boot": 3, "ranges": [[0, 41], [44, 50]]}]}
    d = decode("floodgate/v1/hp-01/ack", json.dumps(good).encode())
    assert isinstance(d.message, Ack) and d.message.boots[0].ranges == [[0, 41], [44, 50]]
    assert "ack" in json_schemas()
    for bad in (
        {**good, "boots": []},
        {**good, "boots": [{"boot": 3, "ranges": [[0, 1, 2]]}]},
        {**good, "boots": [{"boot": 3, "ranges": [[-1, 2]]}]},
        {**good, "boots": [{"boot": 3, "ranges": [[0, 1]] * (MAX_ACK_RANGES + 1)}]},
    ):
        with pytest.raises(ContractError) as err:
            decode("floodgate/v1/hp-01/ack", json.dumps(bad).encode())
        assert err.value.code == "schema"
    # The collector's online state says it confirms; an older one's says nothing of it.
    assert decode("floodgate/v1/_host/state", b'{"online": true, "boot": 0, "acks": true}').message == State(
        online=True, boot=0, acks=True
    )
    older = decode("floodgate/v1/_host/state", b'{"online": true, "boot": 0}').message
    assert isinstance(older, State) and older.acks is None and older.ack_wait_s is None
    # And how long it may hold a report back: 0 to 600 s.
    waits = decode(
        "floodgate/v1/_host/state", b'{"online": true, "boot": 0, "acks": true, "ack_wait_s": 15.5}'
    )
    assert waits.message == State(online=True, boot=0, acks=True, ack_wait_s=15.5)
    for wait in (-1, 601, "15"):
        body = json.dumps({"online": True, "boot": 0, "ack_wait_s": wait}).encode()
        with pytest.raises(ContractError):
            decode("floodgate/v1/_host/state", body)


@pytest.mark.parametrize(
    ("metric", "value", "ok"),
    [
        ("rainfall_mm", 0.2, True),
        ("rainfall_mm", 0.0, True),
        ("rainfall_mm", -0.2, False),
        ("rainfall_mm", 10001.0, False),
        ("rain_intensity_mm_h", 42.5, True),
        ("rain_intensity_mm_h", 1000.0, True),
        ("rain_intensity_mm_h", 1200.0, False),
        ("depth_mm", -5.0, True),  # a depth below the dry road's zero is a calibration matter, not the wire's
    ],
)
def test_rain_readings_are_checked_against_their_range(metric: str, value: float, ok: bool) -> None:
    msg = telemetry()
    msg["readings"] = [{"dev": "rain-1", "ts": 1, "metric": metric, "value": value, "quality": "good"}]
    raw = json.dumps(msg).encode()
    if ok:
        assert decode("floodgate/v1/hp-1/telemetry", raw).message.readings[0].value == value  # type: ignore[attr-defined]
        return
    with pytest.raises(ContractError) as e:
        decode("floodgate/v1/hp-1/telemetry", raw)
    assert e.value.code == "schema" and metric in str(e.value.detail), e.value.detail
