"""What the API takes and gives: request bodies, response models and the shared field types.

The OpenAPI document is generated from these, and every route returns one of
them, so the document cannot drift from what is sent. Response models list
every field the route gives; a field added to a query without one here is
refused by the response check instead of leaking out undocumented.
"""

from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from floodgate.vocab import ACTIONS
from floodgate.vocab import Level as Level  # noqa: PLC0414 - the vocabulary's words, named here too
from floodgate.vocab import Priority as Priority  # noqa: PLC0414
from floodgate.vocab import Role as Role  # noqa: PLC0414
from floodgate.vocab import TicketKind as TicketKind  # noqa: PLC0414
from floodgate.wire import ID_PATTERN, METRIC_PATTERN, ULID_PATTERN

# ----------------------------------------------------------------- field types
# Every parameter is bounded: ids by the wire contract's own patterns, numbers
# by a range, free text by a length and NO_NUL (PostgreSQL cannot hold U+0000;
# a lone surrogate is refused by the JSON decoding already).

NO_NUL = r"^[^\x00]*$"
MAX_OFFSET = 1_000_000
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: any later time is not a time

NodeId = Annotated[str, Field(pattern=ID_PATTERN)]
DevId = Annotated[str, Field(pattern=ID_PATTERN)]
NodeQ = Annotated[str, Query(pattern=ID_PATTERN)]
DevQ = Annotated[str, Query(pattern=ID_PATTERN)]
MetricQ = Annotated[str, Query(pattern=METRIC_PATTERN)]
UnitQ = Annotated[str, Query(max_length=64, pattern=NO_NUL)]
NodePath = Annotated[str, Path(pattern=ID_PATTERN)]
TicketId = Annotated[str, Path(pattern=ULID_PATTERN)]
CommandId = Annotated[str, Path(pattern=ULID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
Ms = Annotated[int, Query(ge=0, le=MAX_MS, description="ms since 1970-01-01 UTC")]
ULID = ULID_PATTERN

T = TypeVar("T")


class _Body(BaseModel):
    """A request body: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    """A response."""


# ---------------------------------------------------------------------- errors


class Problem(_Out):
    where: str = Field(description="the parameter or body field, dotted (body.node, query.limit)")
    problem: str
    code: str | None = Field(
        default=None,
        description="the problem's kind, machine-readable (missing, string_too_short, …)",
    )


class Error(_Out):
    """Every 4xx and 5xx body: ``detail`` says what is wrong in one sentence."""

    detail: str
    code: str | None = Field(default=None, description="a machine-readable reason, where there is one")
    problems: list[Problem] | None = Field(default=None, description="each invalid field (422 only)")


class Page(_Out, Generic[T]):
    total: int = Field(description="how many match, over all pages")
    items: list[T]


# ---------------------------------------------------------------- request bodies


class Login(_Body):
    username: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    password: str = Field(min_length=1, max_length=256, pattern=NO_NUL)


class TicketCreate(_Body):
    node: NodeId
    kind: TicketKind
    priority: Priority
    note: str = Field(min_length=1, max_length=4000, pattern=NO_NUL)


class TicketAction(_Body):
    """An action's body; which fields an action needs is in its own model below."""

    unit: str | None = Field(default=None, max_length=64, pattern=NO_NUL)
    note: str | None = Field(default=None, max_length=4000, pattern=NO_NUL)
    score: int | None = Field(default=None, ge=1, le=5)
    photo_url: str | None = Field(default=None, max_length=1000, pattern=r"^https?://[^\x00]*$")
    of: str | None = Field(default=None, pattern=ULID)
    confirm: bool = Field(
        default=False,
        description="verify: the caller knows the site's sensor still reads water and verifies anyway "
        "(without it such a verify is refused with 409, code still_wet); recorded on the timeline",
    )


class TicketActionNoted(TicketAction):
    """An action the vocabulary gives a required note (reject, report, reopen, comment)."""

    note: str = Field(min_length=1, max_length=4000, pattern=NO_NUL)


class TicketEvaluation(TicketAction):
    score: int = Field(ge=1, le=5)


class TicketMerge(TicketAction):
    of: str = Field(pattern=ULID, description="the ticket this one duplicates")


# Each action's body: a note where the vocabulary requires one, a score to evaluate, the other
# ticket to merge into; the rest take TicketAction.
ACTION_BODY: dict[str, type[TicketAction]] = {
    **{name: TicketActionNoted for name, a in ACTIONS.items() if a.note},
    "evaluate": TicketEvaluation,
    "merge": TicketMerge,
}

# Command arguments: JSON the wire contract can carry (no NUL, integers a double holds, no NaN).
Key = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]
Scalar = (
    Annotated[str, Field(max_length=1000, pattern=NO_NUL)]
    | Annotated[int, Field(ge=-(2**53), le=2**53)]
    | Annotated[float, Field(allow_inf_nan=False)]
    | bool
    | None
)
ArgValue = (
    Scalar
    | Annotated[dict[Key, Scalar], Field(max_length=20)]
    | Annotated[list[Scalar], Field(max_length=20)]
)
Args = Annotated[dict[Key, ArgValue], Field(max_length=20)]
REASON = r"^[^\x00]*[^\x00\s][^\x00]*$"  # something besides white space


class _CommandBase(_Body):
    node: NodeId
    args: Args = Field(default_factory=dict)
    reason: str = Field(min_length=1, max_length=1000, pattern=REASON)
    ttl_s: float = Field(default=60.0, ge=1, le=3600)


class DeviceCommand(_CommandBase):
    """A command for one device of the node: its board or gate, or a level sensor's thresholds."""

    type: Literal["sign.show", "sign.clear", "gate.close", "gate.open", "thresholds.set"]
    dev: DevId


class NodeCommand(_CommandBase):
    type: Literal["rebirth"]
    dev: DevId | None = None


CommandCreate = Annotated[DeviceCommand | NodeCommand, Field(discriminator="type")]

Username = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{1,63}$")]
Password = Annotated[str, Field(min_length=10, max_length=256, pattern=NO_NUL)]


class _UserBase(_Body):
    username: Username
    password: Password | None = None
    display_name: str | None = Field(default=None, max_length=200, pattern=NO_NUL)


class StaffCreate(_UserBase):
    role: Literal["viewer", "operator", "dispatcher", "forecaster", "admin"]
    unit: str | None = Field(default=None, max_length=64, pattern=NO_NUL)


class UnitMemberCreate(_UserBase):
    role: Literal["unit"]
    unit: str = Field(min_length=1, max_length=64, pattern=NO_NUL, description="the member's unit")


UserCreate = Annotated[StaffCreate | UnitMemberCreate, Field(discriminator="role")]


class TokenCreate(_Body):
    username: str | None = Field(default=None, max_length=64, pattern=NO_NUL)
    label: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    ttl_s: float | None = Field(default=None, gt=0, le=366 * 86400)


# ------------------------------------------------------------------------ auth


class Session(_Out):
    token: str
    username: str
    role: Role
    unit: str | None


class Me(_Out):
    username: str
    role: Role
    unit: str | None
    actor: str = Field(description="how the timeline and the audit log name the caller")


class User(_Out):
    username: str
    role: Role
    unit: str | None


class Token(_Out):
    token: str
    id: str = Field(
        description="the token's id (``fgt_<id>_…``), to revoke it with DELETE /api/v1/tokens/{id}"
    )
    username: str
    expires_ms: int


# ------------------------------------------------------------------------- ops


class Health(_Out):
    status: Literal["ok", "degraded"]
    database: bool
    broker: bool


class Live(_Out):
    status: Literal["ok"]


class Ready(_Out):
    status: Literal["ready", "not ready"]
    database: bool
    intake: bool
    schema_version: int  # the database's
    schema_expected: int  # this collector's
    live: bool  # the live feed hears the other collectors (PostgreSQL); not a condition of readiness


class DeadLetter(_Out):
    id: int
    topic: str
    code: str
    detail: str
    received_ms: int
    payload: str = Field(description="the payload as UTF-8 (bytes that are not UTF-8 replaced)")


# ----------------------------------------------------------------------- sites


class FloodSeason(_Out):
    start: str = Field(description="MM-DD, local time")
    end: str


class Names(_Out):
    units: dict[str, dict[Literal["zh", "en"], str]] = Field(description="unit id → {zh, en}")
    sites: dict[str, dict[Literal["zh", "en"], str]] = Field(description="node id → {zh, en}")
    addresses: dict[str, dict[Literal["zh", "en"], str]] = Field(
        default_factory=dict, description="node id → its address {zh, en}, where the registry gives one"
    )


class UiConfig(_Out):
    map_tiles: str | None
    flood_season: FloodSeason
    timezone: str  # the IANA zone the measures count months and seasons in
    names: Names = Field(description="the registry's names of units and sites, per language")


class SiteFault(_Out):
    dev: str
    kind: str
    reason: str | None


class SiteTicket(_Out):
    id: str
    node: str
    kind: str
    state: str
    priority: str
    forecast: bool = Field(description="opened by a forecast, no measured alert joined yet (as on Ticket)")


class GateClosing(_Out):
    """A close the site's agent has announced: the board warns, the gate is still open."""

    closes_at: int | None = Field(
        description="when the agent will close the gate (ms since the epoch, the agent's clock): once"
        " its board has warned for min_warning_s; null while the board does not warn yet"
    )
    min_warning_s: float | None = Field(description="how long the board warns before the gate closes")
    announced_ms: int = Field(description="when the agent announced it")


class Site(_Out):
    node: str
    name: str
    address: str | None
    lat: float | None
    lon: float | None
    online: bool
    last_seen_ms: int | None
    level: Level = Field(description="the highest level of the site's active measured water alerts")
    forecast: Level | None = Field(
        default=None,
        description="the highest level of the site's active forecast alerts (water expected, not measured)",
    )
    faults: list[SiteFault]
    gate: str | None
    gate_closing: GateClosing | None = Field(
        default=None,
        description="the gate is still open and the agent will close it: its board is warning drivers"
        " (the gate's newest actuator.state event says closing: pending)",
    )
    sign: str | None
    tickets: list[SiteTicket]
    exercise: bool = Field(
        default=False,
        description="a drill or a simulation (its birth's site.exercise): what it raises is not real",
    )


class Node(_Out):
    node: str
    site_name: str | None
    address: str | None
    lat: float | None
    lon: float | None
    agent_version: str | None
    config_hash: str | None
    exercise: bool = Field(
        default=False,
        description="a drill or a simulation (its birth's site.exercise): what it raises is not real",
    )
    online: bool
    boot: int | None
    last_seen_ms: int | None
    birth_ms: int | None
    health: dict[str, Any] | None


class Device(_Out):
    node: str
    dev: str
    kind: str
    model: str
    unit: str | None
    thresholds: dict[str, Any] | None
    last_reading_ms: int | None


class NodeDetail(Node):
    devices: list[Device]


class Reading(_Out):
    node: str
    dev: str
    metric: str
    ts: int
    value: float
    quality: str


class RawPoint(_Out):
    ts: int
    value: float
    quality: str


class Bucket(_Out):
    ts: int = Field(description="the bucket's start")
    min: float
    avg: float
    max: float
    n: int


class History(_Out):
    node: str
    dev: str
    metric: str
    resolution_s: int
    points: list[RawPoint | Bucket] = Field(description="raw points at resolution 0, else buckets")


# ---------------------------------------------------------------------- alerts


class Alert(_Out):
    id: str
    node: str
    dev: str
    kind: str
    level: Level
    max_level: Level
    first_ts: int
    last_ts: int
    peak_value: float | None
    unit: str | None
    threshold: float | None
    reason: str | None


# --------------------------------------------------------------------- tickets


class Ticket(_Out):
    id: str
    node: str
    kind: str
    title: str
    state: str
    priority: str
    department: str
    unit: str
    created_ms: int
    updated_ms: int
    dispatched_ms: int | None
    opened_ms: int | None = Field(description="when it last became open (made, reopened, rejected)")
    dispatch_due_ms: int | None = Field(
        description="while open: dispatch by then, or it escalates (as long as a dispatched ticket of "
        "its priority has to be accepted); null for a ticket opened before this existed"
    )
    accept_due_ms: int | None
    handle_due_ms: int | None
    accepted_ms: int | None
    handled_ms: int | None
    verified_ms: int | None
    closed_ms: int | None
    accepted_on_time: bool | None
    handled_on_time: bool | None
    escalation: int
    escalations: int
    score: int | None
    comment: str | None
    duplicate_of: str | None
    reopened: int
    last_alert_id: str | None
    lat: float | None
    lon: float | None
    overdue: bool
    forecast: bool = Field(
        description="opened by a forecast and no measured alert has joined it yet: water expected, "
        "not seen (a measured alert joining it makes it false, with a `measured` timeline entry)"
    )


class TimelineEntry(_Out):
    id: int
    ticket_id: str
    ts: int = Field(description="when the entry was recorded on the ticket (the collector's clock)")
    happened_ms: int = Field(
        description="when what it records happened: an alert transition's time at the edge "
        "(its detail's ts; a backlog after an outage is recorded later), else the same as ts"
    )
    received_ms: int | None = Field(
        description="an alert transition that came in a message: when the collector received it; "
        "null for any other entry and for transitions the collector made itself"
    )
    actor: str
    action: str
    from_state: str | None
    to_state: str | None
    note: str | None
    detail: dict[str, Any] | None


class TicketPrediction(_Out):
    """The forecast of a ticket's forecast episodes (kind ``forecast``): while one is open, the
    site's latest forecast round's for its level (what the site page and the at-risk list show);
    else the episode's last rise or update."""

    alert_id: str
    level: Level = Field(description="the level the forecast expects")
    threshold: float | None = Field(description="that level's threshold")
    issued_ms: int = Field(description="when the forecast was issued (its round, or its alert transition)")
    expected_ms: int | None = Field(description="when the level is expected to be crossed")
    peak: float | None = Field(description="the predicted peak (mm)")
    probability: float | None = Field(description="how likely the crossing is, 0 to 1")
    active: bool = Field(description="false once the forecast no longer expects it (its episode clear)")
    source: Literal["round", "alert"] = Field(
        description="round: the site's latest forecast round; alert: the episode's last transition "
        "(withdrawn, or no current round for the site)"
    )


class TicketDetail(Ticket):
    timeline: list[TimelineEntry]
    alerts: list[Alert]
    prediction: TicketPrediction | None = Field(
        default=None, description="the ticket's latest forecast, when a forecast alert is among its alerts"
    )
    allowed_actions: list[str] = Field(
        default_factory=list,
        description="The actions the caller may take on the ticket now (its state, their role, their unit)",
    )


# -------------------------------------------------------------------- commands


class Command(_Out):
    cmd_id: str
    node: str
    type: str
    dev: str | None
    args: dict[str, Any]
    issued_by: str
    reason: str
    issued_ms: int
    expires_ms: int
    status: Literal["sent", "done", "rejected", "failed", "timeout"]
    result_reason: str | None
    result_ms: int | None


# -------------------------------------------------------------------- measures


class UnitMeasure(_Out):
    unit: str
    month: str
    tickets: int
    on_time_accept_rate: float | None
    on_time_handle_rate: float | None
    handling_hours_avg: float | None
    handling_hours_p90: float | None
    satisfaction: float | None
    evaluated: int
    escalations: int


class AlertCounts(_Out):
    """Floods by the highest level each reached (each flood in one column)."""

    warning: int = Field(description="floods that reached warning and no higher")
    danger: int = Field(description="floods that reached danger")


class SiteMeasure(_Out):
    node: str
    season: int
    floods: int = Field(
        description="floods at the site: its observed water episodes (depth sensor, immersion "
        "contact) that overlap in time, or follow within 10 minutes, count as one"
    )
    alerts: AlertCounts = Field(description="the floods by the highest level each reached")
    faults: int = Field(description="sensor fault and silence episodes")
    peak_depth_mm: float | None = Field(
        description="the highest depth reading while a flood episode lasted, in mm"
    )
    hours_above_threshold: float = Field(
        description="hours the site's floods lasted: from a sensor over its warning threshold "
        "to the last back under"
    )


# --------------------------------------------------------------------- Open311


class Service(_Out):
    service_code: TicketKind
    service_name: str
    description: str
    metadata: bool
    type: str
    keywords: str
    group: str


class ServiceRequest(_Out):
    service_request_id: str
    status: Literal["open", "closed"]
    status_notes: str
    service_name: str
    service_code: str
    description: str
    agency_responsible: str
    service_notice: str
    requested_datetime: str | None
    updated_datetime: str | None
    expected_datetime: str | None
    address: str
    lat: float | None
    long: float | None
    media_url: str | None


# ------------------------------------------------------------ rainfall forecasts


class RainfallAccepted(_Out):
    issued: str = Field(description="the document's issue time (UTC)")
    source: str
    steps: int = Field(description="how many intensities each series has")
    sites: list[str] = Field(description="the sites it gave a series for (by their own entry or their cell)")
    unchanged: list[str] = Field(
        default_factory=list,
        description="of those, the sites whose same forecast (issue time, source, steps, series) was "
        "stored before: not stored again",
    )


class RainfallForecast(_Out):
    """A site's latest forecast: intensity i (mm/h) holds from ``steps[i]`` to ``steps[i + 1]``."""

    node: str
    issued: str
    source: str
    steps: list[str]
    mm_h: list[float]
    members: list[list[float]] | None = None
    quantiles: dict[str, list[float]] | None = None
    via: str = Field(description="`site` (its own entry) or `cell <row>,<col>` (the grid cell it lies in)")
    origin: str = Field(description="who sent it: `api <user>` or `file <name>`")
    received: str


# ------------------------------------------------------------ site forecasts


class FitOut(_Out):
    """A site's fitted depth model (docs/rainfall-forecast.md: the parameters in engineers' words)."""

    fitted_at: str
    rmse_mm: float = Field(description="the fit's root-mean-square error over the wet events, mm")
    span_from: str = Field(description="the first sample of the history it was fitted on")
    span_to: str
    n: int = Field(description="depth samples inside the wet events fitted")
    events: int = Field(description="wet events in the history")
    dev: str = Field(description="the level sensor whose depth it learnt")
    rain: str = Field(description="where its rain came from: `gauge <dev>` or `forecasts`")
    params: dict[str, float] = Field(
        description="initial_loss_mm, lag_min, drain_mm_h, fill_mm, shape (cloud.forecast.model)"
    )


class ForecastStep(_Out):
    t: str = Field(description="the end of the step (UTC)")
    p10: float = Field(description="depth, mm: 1 in 10 below")
    p50: float
    p90: float


class Crossing(_Out):
    level: Literal["warning", "danger"]
    threshold_mm: float
    eta_s: float | None = Field(description="seconds from issued_at to the median crossing; null: never")
    at: str | None
    probability: float = Field(description="of crossing within the horizon, 0 to 1")


class SiteForecastOut(_Out):
    site_id: str
    status: Literal["ok", "no_model", "pending", "no_rain", "stale"] = Field(
        description="pending: fitted, but no forecast round has run the site since"
    )
    detail: str | None = Field(description="why not ok, in words")
    issued_at: str = Field(
        description="when this forecast was issued: the forecast round that ran it (the time of "
        "the answer for a site no round has run)"
    )
    rain_issued_at: str | None = Field(description="the issue time of the rainfall forecast it ran on")
    rain_source: str | None = Field(
        default=None, description="the source of the rainfall forecast it ran on (its `source`)"
    )
    fit: FitOut | None = Field(
        description="the fit it ran: its error `rmse_mm` is over the history it was fitted on "
        "(`span_from` to `span_to`, `n` samples, `events` wet events), not the forecast's; the "
        "band (`steps`) is the forecast's spread"
    )
    warning_mm: float | None
    danger_mm: float | None
    steps: list[ForecastStep]
    crossing: list[Crossing]
    peak_mm: float | None = Field(description="the highest median depth")


class AtRiskItem(_Out):
    site_id: str
    name: str
    level: Literal["warning", "danger"] = Field(description="the highest level likely within the hours")
    eta_s: float = Field(description="seconds from now to that crossing")
    at: str
    probability: float
    peak_mm: float | None
    issued_at: str = Field(description="when the site's forecast was issued (its forecast round)")


class AtRisk(_Out):
    items: list[AtRiskItem] = Field(description="by eta_s, soonest first")
    status: Literal["forecasting", "no_forecasts"] = Field(
        description="no_forecasts: no site has a current forecast, so an empty list means nothing"
    )
    forecasting: int = Field(description="sites with a current forecast (status ok)")
    no_model: int = Field(description="sites without a fitted model")
    no_rain: int = Field(description="sites with a model but no rainfall forecast")
    stale: int = Field(description="sites whose rainfall forecast or depth is out of date")
    issued_at: str | None = Field(description="when the last forecast round ran; null: none has")
