"""The MQTT wire contract, version 1 (docs/wire-contract.md).

This module is the only place the contract is written down in code: the edge
agent builds its messages with these models and the collector parses with
them. :func:`json_schemas` gives the JSON Schema of every message kind, which
the tests validate real messages against.

A message is checked in this order by :func:`decode`: topic, size, JSON,
version, shape (schema), then identity (``node`` in the payload equals the
node in the topic). Each failure raises :class:`~floodgate.errors.ContractError`
with a short code and a detail that says what is wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct, field

from floodgate.errors import ContractError
from floodgate.ids import new_ulid, now_ms
from floodgate.vocab import LEVEL_RANK, DeviceKind

# The contract's words are the vocabulary's; named here too, as the edge imports them.
from floodgate.vocab import LEVELS as LEVELS  # noqa: PLC0414
from floodgate.vocab import AlertKind as AlertKind  # noqa: PLC0414
from floodgate.vocab import Level as Level  # noqa: PLC0414

M = TypeVar("M", bound="_Model")
VERSION = 1
PREFIX = "floodgate/v1"
MAX_MESSAGE_BYTES = 64 * 1024
MAX_READINGS = 500
HOST = "_host"

# Each collector's own online state (its Will) and the shared ``_host/state`` of older ones: one
# subscription (``_host`` carries state topics only), not two (a NATS cluster makes each a consumer).
HOST_STATES = f"{PREFIX}/{HOST}/#"
_HOST_STATE_RE = re.compile(rf"^{PREFIX}/{HOST}/([A-Za-z0-9_.-]{{1,64}})/state$")


def host_state_topic(collector: str | None = None) -> str:
    """A collector's online-state topic: its own (``floodgate/v1/_host/<client_id>/state``), or,
    for None, the one every collector shared before (still honoured)."""
    return f"{PREFIX}/{HOST}/{collector}/state" if collector else f"{PREFIX}/{HOST}/state"


def collector_of(topic: str) -> str | None:
    """The collector a per-collector state topic is for; None for any other topic."""
    m = _HOST_STATE_RE.match(topic)
    return m.group(1) if m else None


ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
ULID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"

METRIC_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
# The largest integer a message may carry (boot, seq): a signed 64-bit one,
# what every database's integer column holds.
INT64_MAX = 2**63 - 1
# The latest time a message may carry: 9999-12-31T23:59:59.999Z, the last
# instant a date type (Python's, a database's) can hold.
MAX_MS = 253_402_300_799_999
# A JSON escape of a UTF-16 surrogate that is not half of a pair (\ud800 alone):
# JSON text that is not Unicode text.
_HIGH, _LOW = rb"\\u[dD][89abAB][0-9a-fA-F]{2}", rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_LONE_SURROGATE = re.compile(_HIGH + b"(?!" + _LOW + b")|(?<!" + _HIGH + b")" + _LOW)


class _Pattern:
    """A regex that ids must match, checked in ``__post_init__`` rather than by msgspec.

    msgspec would run the regex on every id of every message: a quarter of a
    microsecond each, 30-odd times per telemetry message, the larger part of
    decoding one. Node, device and metric names repeat from message to message,
    so a name that matched once is remembered (up to ``remember`` of them) and
    then costs a set lookup. The JSON Schema still carries the pattern.
    """

    def __init__(self, pattern: str, remember: int = 0) -> None:
        self.pattern = pattern
        self._match = re.compile(pattern).fullmatch  # "$" alone lets a trailing newline through
        self._remember = remember
        self._ok: set[str] = set()

    def schema(self) -> Meta:
        return Meta(extra_json_schema={"pattern": self.pattern})

    def check(self, value: str | None, name: str) -> None:
        """Raise ValueError (msgspec reports it with the path) unless ``value`` matches."""
        if value is None or value in self._ok:
            return
        if self._match(value) is None:
            raise ValueError(f"{name}: Expected `str` matching regex {self.pattern!r}")
        if self._remember:
            if len(self._ok) >= self._remember:
                self._ok.clear()
            self._ok.add(value)


_ID = _Pattern(ID_PATTERN, remember=100_000)
_ULID = _Pattern(ULID_PATTERN)  # unique per message: nothing to remember
_METRIC = _Pattern(METRIC_PATTERN, remember=10_000)
NodeId = Annotated[str, _ID.schema()]
DevId = Annotated[str, _ID.schema()]
Ulid = Annotated[str, _ULID.schema()]
Millis = Annotated[int, Meta(ge=0, le=MAX_MS)]
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
Metric = Annotated[str, _METRIC.schema()]

Quality = Literal["good", "suspect", "bad"]
EventType = Literal[
    "device.fault",
    "device.recovered",
    "actuator.state",
    "override.on",
    "override.off",
    "config.applied",
    "outbox.dropped",
    "heartbeat",
]
CommandType = Literal["sign.show", "sign.clear", "gate.close", "gate.open", "rebirth", "thresholds.set"]
CommandStatus = Literal["done", "rejected", "failed"]


def level_rank(level: Level) -> int:
    """0 for clear, 1 for warning, 2 for danger (``floodgate.vocab.LEVEL_RANK``)."""
    return LEVEL_RANK[level]


class Kind(StrEnum):
    """The last topic segment: what a message is."""

    STATE = "state"
    BIRTH = "birth"
    TELEMETRY = "telemetry"
    ALERT = "alert"
    EVENT = "event"
    CMD = "cmd"
    CMD_RESULT = "cmd-result"
    ACK = "ack"


_TOPIC_RE = re.compile(r"^floodgate/v1/([^/]+)/([^/]+)$")


@dataclass(frozen=True)
class Topic:
    """A validated topic ``floodgate/v1/{node}/{kind}``; ``node`` may be ``_host`` for state."""

    node: str
    kind: Kind

    def __post_init__(self) -> None:
        if self.node == HOST:
            if self.kind is not Kind.STATE:
                raise ContractError("bad_topic", f"{HOST} only has a state topic, not {self.kind}")
        else:
            try:
                _ID.check(self.node, "node")
            except ValueError:
                raise ContractError(
                    "bad_topic", f"node id {self.node!r} does not match {ID_PATTERN}"
                ) from None

    def __str__(self) -> str:
        return f"{PREFIX}/{self.node}/{self.kind.value}"

    @classmethod
    def parse(cls, topic: str) -> Topic:
        """The topic of a received message; the valid ones are remembered (they repeat)."""
        known = _TOPICS.get(topic)
        if known is not None:
            return known
        parsed = cls._parse(topic)
        if len(_TOPICS) >= 100_000:
            _TOPICS.clear()
        _TOPICS[topic] = parsed
        return parsed

    @classmethod
    def _parse(cls, topic: str) -> Topic:
        m = _TOPIC_RE.match(topic)
        if m is None:
            raise ContractError("bad_topic", f"{topic!r} is not floodgate/v1/<node>/<kind>")
        try:
            kind = Kind(m.group(2))
        except ValueError:
            raise ContractError("bad_topic", f"unknown message kind {m.group(2)!r}") from None
        return cls(m.group(1), kind)


_TOPICS: dict[str, Topic] = {}


class _Model(Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Unknown fields are ignored (the contract lets senders add fields).

    ``gc=False``: a message holds no reference cycles, so the cyclic garbage
    collector need not track it; tracked, the ten-odd structs of every
    telemetry message made it run every few dozen messages at ingest rates.
    """


class Envelope(_Model, frozen=True, kw_only=True, omit_defaults=True):
    """Fields every edge-to-cloud message but ``state`` carries."""

    v: Literal[1]
    node: NodeId
    msg_id: Ulid
    boot: Count
    seq: Count
    ts: Millis

    def __post_init__(self) -> None:
        _ID.check(self.node, "node")
        _ULID.check(self.msg_id, "msg_id")


class State(_Model, frozen=True, kw_only=True, omit_defaults=True):
    """Retained ``state``: online with boot and time, or the Will's offline.

    The collector's own (``_host``) online state says ``acks: true`` when it
    confirms what it stored on each node's ``ack`` topic (``Ack``), and
    ``ack_wait_s``, the longest it may hold a report back after the commit
    (its report budget): with two or more collectors online, a hole in one's
    report acknowledged less than that before a message it confirms was sent
    may be another's message not reported yet, not a gap.
    """

    online: bool
    boot: Count
    ts: Millis | None = None
    acks: bool | None = None
    ack_wait_s: Annotated[float, Meta(ge=0, le=600)] | None = None


class SiteInfo(_Model, frozen=True, kw_only=True, omit_defaults=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    lat: Annotated[float, Meta(ge=-90, le=90)]
    lon: Annotated[float, Meta(ge=-180, le=180)]
    address: str = ""
    exercise: bool = False  # a drill or a simulation: what it raises is not real (CAP status Exercise)


class DeviceInfo(_Model, frozen=True, kw_only=True, omit_defaults=True):
    id: DevId
    kind: DeviceKind
    model: Annotated[str, Meta(max_length=64)]
    unit: Annotated[str, Meta(max_length=16)] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _ID.check(self.id, "id")


class Birth(Envelope, frozen=True, kw_only=True, omit_defaults=True):
    agent_version: Annotated[str, Meta(max_length=32)]
    config_hash: Annotated[str, Meta(max_length=64)]
    site: SiteInfo
    devices: list[DeviceInfo]
    health: dict[str, Any] = field(default_factory=dict)


# Readings whose value has a range of its own: a rain gauge's (mm since its last reading; mm/h).
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "rainfall_mm": (0.0, 10000.0),
    "rain_intensity_mm_h": (0.0, 1000.0),
}


class Reading(_Model, frozen=True, kw_only=True, omit_defaults=True):
    dev: DevId
    ts: Millis
    metric: Metric
    value: float
    quality: Quality

    def __post_init__(self) -> None:
        _ID.check(self.dev, "dev")
        _METRIC.check(self.metric, "metric")
        bounds = METRIC_RANGES.get(self.metric)
        if bounds is not None and not bounds[0] <= self.value <= bounds[1]:
            raise ValueError(
                f"value: {self.metric} must be within {bounds[0]:g}..{bounds[1]:g}, not {self.value}"
            )


class Telemetry(Envelope, frozen=True, kw_only=True, omit_defaults=True):
    readings: Annotated[list[Reading], Meta(min_length=1, max_length=MAX_READINGS)]


class Action(_Model, frozen=True, kw_only=True, omit_defaults=True):
    dev: DevId
    do: Annotated[str, Meta(min_length=1, max_length=32)]
    arg: str | None = None

    def __post_init__(self) -> None:
        _ID.check(self.dev, "dev")


class Alert(_Model, frozen=True, kw_only=True, omit_defaults=True):
    id: Ulid
    dev: DevId
    kind: AlertKind
    level: Level
    prev: Level
    value: float | None = None
    unit: Annotated[str, Meta(max_length=16)] | None = None
    threshold: float | None = None
    rate_per_min: float | None = None
    ts: Millis
    actions: list[Action] = field(default_factory=list)
    eta_s: float | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        _ULID.check(self.id, "id")
        _ID.check(self.dev, "dev")


class AlertMessage(Envelope, frozen=True, kw_only=True, omit_defaults=True):
    alert: Alert


class Event(_Model, frozen=True, kw_only=True, omit_defaults=True):
    type: EventType
    dev: DevId | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _ID.check(self.dev, "dev")


class EventMessage(Envelope, frozen=True, kw_only=True, omit_defaults=True):
    event: Event


class CmdResult(Envelope, frozen=True, kw_only=True, omit_defaults=False):
    # A command too broken to parse is still answered, so its id may not be a ULID.
    cmd_id: Annotated[str, Meta(min_length=1, max_length=64)]
    status: CommandStatus
    reason: str = ""


class Command(_Model, frozen=True, kw_only=True, omit_defaults=True):
    """A signed cloud-to-edge command. Verify the signature on the raw dict
    (:func:`verify_command`), not on this model: unknown fields are signed too."""

    v: Literal[1]
    cmd_id: Ulid
    type: CommandType
    dev: DevId | None = None
    args: dict[str, Any] = field(default_factory=dict)
    issued_by: Annotated[str, Meta(min_length=1, max_length=128)]
    issued_at: Millis
    expires_at: Millis
    sig: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]

    def __post_init__(self) -> None:
        _ULID.check(self.cmd_id, "cmd_id")
        _ID.check(self.dev, "dev")


# The most seq ranges one ``ack`` report carries per boot (the lowest go first).
MAX_ACK_RANGES = 64
SeqRange = Annotated[list[Count], Meta(min_length=2, max_length=2)]


class AckBoot(_Model, frozen=True, kw_only=True, omit_defaults=True):
    """What the collector has handled of one boot: ``[first, last]`` seq ranges, ascending."""

    boot: Count
    ranges: Annotated[list[SeqRange], Meta(min_length=1, max_length=MAX_ACK_RANGES)]


class Ack(_Model, frozen=True, kw_only=True, omit_defaults=True):
    """Cloud to edge, after commit: the messages of ``node`` the collector has handled.

    Handled means stored, already stored (a duplicate ``msg_id``) or kept as a
    dead letter: the edge may forget them. Each boot's ranges are what this
    collector handled since its last report, then the highest it knows of;
    a hole below the last range is a message the collector has not had (yet).
    """

    v: Literal[1]
    node: NodeId
    ts: Millis
    boots: Annotated[list[AckBoot], Meta(min_length=1)]

    def __post_init__(self) -> None:
        _ID.check(self.node, "node")


MODELS: dict[Kind, type[_Model]] = {
    Kind.STATE: State,
    Kind.BIRTH: Birth,
    Kind.TELEMETRY: Telemetry,
    Kind.ALERT: AlertMessage,
    Kind.EVENT: EventMessage,
    Kind.CMD: Command,
    Kind.CMD_RESULT: CmdResult,
    Kind.ACK: Ack,
}

QOS = 1


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes a signature is computed over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def command_signature(fields: Mapping[str, Any], key: bytes) -> str:
    """Hex HMAC-SHA256 over the canonical JSON of every field except ``sig``."""
    body = {k: v for k, v in fields.items() if k != "sig"}
    return hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()


def node_command_key(master: bytes, node: str) -> bytes:
    """A node's command key derived from the operator's master key.

    The collector keeps one secret; each box gets only its own key (hex text,
    as ``command_key_file`` holds it), so a stolen box cannot command another.
    """
    return hmac.new(master, f"floodgate-cmd:{node}".encode(), hashlib.sha256).hexdigest().encode()


def sign_command(fields: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """Return ``fields`` with ``sig`` set."""
    out = dict(fields)
    out["sig"] = command_signature(out, key)
    return out


def verify_command(raw: Mapping[str, Any], key: bytes) -> bool:
    sig = raw.get("sig")
    if not isinstance(sig, str):
        return False
    return hmac.compare_digest(sig, command_signature(raw, key))


def encode(message: _Model) -> bytes:
    """Serialise a message; refuses one over the contract's size limit."""
    data = msgspec.json.encode(message)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ContractError("too_large", f"{len(data)} bytes > {MAX_MESSAGE_BYTES}")
    return data


def describe(err: msgspec.ValidationError) -> tuple[str, str]:
    """(path, message) of a validation error: msgspec says "... - at `$.a[0].b`"."""
    text = str(err)
    msg, sep, where = text.rpartition(" - at `")
    path = where.rstrip("`").removeprefix("$").lstrip(".") if sep else ""
    if not sep:
        msg = text
    name, colon, rest = msg.partition(": ")  # from a __post_init__ check: "dev: Expected …"
    if colon and name.isidentifier() and rest.startswith("Expected"):
        return f"{path}.{name}" if path else name, rest
    return path, msg


def build(model: type[M], fields: Mapping[str, Any]) -> M:
    """A message from plain fields, validated as a received one would be."""
    return msgspec.convert(fields, type=model)


@dataclass(frozen=True)
class Decoded:
    """A message that passed every check, with the topic it came on."""

    topic: Topic
    message: _Model


def decode(topic: str, payload: bytes) -> Decoded:
    """Check one received message against the contract; raise ContractError if it fails."""
    t = Topic.parse(topic)
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ContractError("too_large", f"{len(payload)} bytes > {MAX_MESSAGE_BYTES}")
    model = MODELS[t.kind]
    try:
        message = msgspec.json.decode(payload, type=model)
    except msgspec.ValidationError as exc:
        path, msg = describe(exc)
        if path == "v" and t.kind is not Kind.STATE:
            raise ContractError("bad_version", f"{msg}: this collector speaks v=1") from None
        raise ContractError("schema", f"{path or '(message)'}: {msg}") from None
    except msgspec.DecodeError as exc:
        lone = _LONE_SURROGATE.search(payload)
        if lone is not None:  # msgspec says "truncated" or "invalid utf-16 surrogate pair"
            where = f"{lone.group().decode()} at byte {lone.start()}"
            raise ContractError("bad_json", f"{where} is a lone UTF-16 surrogate, not Unicode text") from None
        raise ContractError("bad_json", str(exc)) from None
    if b"\\u0000" in payload:  # the only way JSON text holds U+0000; rarely anywhere
        nul = _nul_in(message, "")
        if nul is not None:
            raise ContractError("schema", f"{nul or '(message)'}: U+0000 (NUL) is not allowed in a string")
    if isinstance(message, Envelope) and message.node != t.node:
        raise ContractError("node_mismatch", f"payload node {message.node!r} is not topic node {t.node!r}")
    return Decoded(t, message)


def _nul_in(value: Any, path: str) -> str | None:
    """The path of the first string (or key) in ``value`` holding U+0000, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items: Any
    if isinstance(value, Struct):
        items = ((f"{path}.{f}" if path else f, getattr(value, f)) for f in value.__struct_fields__)
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        for k in value:
            if isinstance(k, str) and "\x00" in k:
                return f"{path}[{k!r}]"
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    else:
        return None
    for where, v in items:
        found = _nul_in(v, where)
        if found is not None:
            return found
    return None


class Sequencer:
    """Stamps the envelope of one agent boot: unique ``msg_id``, ``seq`` counting up."""

    def __init__(self, node: str, boot: int, first_seq: int = 0) -> None:
        if not re.match(ID_PATTERN, node):
            raise ContractError("bad_topic", f"node id {node!r} does not match {ID_PATTERN}")
        self.node = node
        self.boot = boot
        self._seq = first_seq

    def envelope(self, ts: int | None = None) -> dict[str, Any]:
        t = now_ms() if ts is None else ts
        env = {
            "v": VERSION,
            "node": self.node,
            "msg_id": new_ulid(t),
            "boot": self.boot,
            "seq": self._seq,
            "ts": t,
        }
        self._seq += 1
        return env

    def take_back(self, env: Mapping[str, Any]) -> None:
        """Un-stamp the last envelope, for a message that was never stored: no gap in ``seq``."""
        if env.get("seq") == self._seq - 1:
            self._seq -= 1

    @property
    def next_seq(self) -> int:
        return self._seq


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every message kind, keyed by topic kind."""
    return {kind.value: msgspec.json.schema(model) for kind, model in MODELS.items()}
