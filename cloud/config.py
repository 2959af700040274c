"""The collector's config (YAML), validated like site configs: file, line and key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta, Struct, field

from floodgate.broker import BrokerSettings, Tls, urls_problems
from floodgate.yamlconfig import Source, load_yaml, validate


class _Strict(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Config objects refuse unknown keys."""


class Broker(_Strict, frozen=True, kw_only=True):
    url: str = "mqtt://127.0.0.1:1883"
    # Several brokers (a cluster's MQTT listeners): the collector connects to the first
    # and, when the link fails, to the next in turn. Given, it replaces ``url``.
    urls: list[str] | None = None
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    tls: Tls | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    reconnect_max_s: Annotated[float, Meta(ge=0)] = 2.0


NatsUrl = Annotated[str, Meta(pattern=r"^(nats|tls)://[^/\s]+$")]


class NatsConfig(_Strict, frozen=True, kw_only=True):
    """Intake from a NATS JetStream cluster (docs/deployment.md): ``broker`` is then its MQTT side."""

    urls: Annotated[list[NatsUrl], Meta(min_length=1)]
    # The durable pull consumer every collector shares: the same name on each of them.
    durable: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "floodgate-collectors"
    # A fetched message not acknowledged within this is given to a collector again.
    ack_wait_s: Annotated[float, Meta(ge=1, le=3600)] = 30.0
    # Messages fetched and not yet acknowledged, across every collector.
    max_ack_pending: Annotated[int, Meta(ge=1, le=1_000_000)] = 20_000
    # How long one fetch waits for a first message.
    fetch_wait_s: Annotated[float, Meta(gt=0, le=60)] = 1.0
    # A second durable consumer (``<durable>-alerts``) on the alerts alone, so that an alert is
    # ticketed while telemetry waits in a backlog; the shared consumer takes them again (as
    # already had) and confirms them to the nodes.
    alert_lane: bool = True
    username: str | None = None
    password_file: str | None = None


class SmtpConfig(_Strict, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 25
    sender: str = "floodgate@localhost"
    username: str | None = None
    password_file: str | None = None
    starttls: bool = False


class RetentionConfig(_Strict, frozen=True, kw_only=True):
    raw_days: Annotated[float, Meta(gt=0)] = 30.0
    rollup_interval_s: Annotated[float, Meta(ge=5, le=3600)] = 60.0
    # Rainfall forecasts that ended longer ago, and the runs of sites not forecast since, are
    # deleted (hourly, by one collector); every fit is kept. At least forecast.history_days: the
    # fits of sites without a rain gauge read their rain from the stored forecasts.
    forecast_days: Annotated[float, Meta(gt=0)] = 60.0


MonthDay = Annotated[str, Meta(pattern=r"^(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]


class FloodSeason(_Strict, frozen=True, kw_only=True):
    """The months the per-site measures count (MM-DD, local time, both days included).

    Guangzhou's flood season (汛期) by default; a season may not cross the new year.
    """

    start: MonthDay = "04-01"
    end: MonthDay = "10-15"

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise ValueError(f"the season ends ({self.end}) before it starts ({self.start})")


def _known_zone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai)") from None


class InfluxConfig(_Strict, frozen=True, kw_only=True):
    url: Annotated[str, Meta(pattern=r"^https?://")]
    database: str = "floodgate"
    username: str | None = None
    password_file: str | None = None
    batch_max: Annotated[int, Meta(ge=1, le=100_000)] = 5000
    interval_s: Annotated[float, Meta(gt=0)] = 5.0


Probability = Annotated[float, Meta(gt=0, le=1)]


class ForecastConfig(_Strict, frozen=True, kw_only=True):
    """Rainfall forecasts in and each site's depth forecast (docs/rainfall-forecast.md)."""

    # Forecast files dropped in a folder the collector polls; relative to the config file;
    # done/ and rejected/ are made inside it. None: forecasts come only through the API.
    watch_dir: str | None = None
    poll_s: Annotated[float, Meta(ge=1, le=3600)] = 30.0
    # The precipitation variable read from NetCDF files in watch_dir (the optional extra netcdf);
    # None: the one whose CF standard_name is a precipitation rate or amount.
    netcdf_variable: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    # Every site is forecast this often from its latest rainfall forecast (cloud.forecast).
    every_s: Annotated[float, Meta(ge=10, le=3600)] = 300.0
    # A forecast alert when a level is at least this likely to be crossed within horizon_h and
    # the storm is confirmed at the site (confirm_rain_mm of rain measured over the last hour,
    # or water there now; None: on the forecast alone). Once raised it is held while the level
    # stays probability - hysteresis likely, the depth rises or the rain still falls
    # (cloud.forecast.rule). 0.3: the threshold bench/forecast_lead.py chooses on held-out storms.
    probability: Probability = 0.3
    hysteresis: Annotated[float, Meta(ge=0, lt=1)] = 0.1
    confirm_rain_mm: Annotated[float, Meta(gt=0, le=100)] | None = 1.0
    horizon_h: Annotated[float, Meta(gt=0, le=48)] = 3.0
    # The model's step, the history it is fitted on, and how often it is refitted.
    step_s: Annotated[float, Meta(ge=60, le=3600)] = 300.0
    history_days: Annotated[float, Meta(ge=1, le=3650)] = 60.0
    refit_every_h: Annotated[float, Meta(ge=0.1, le=8760)] = 24.0
    # Each round's scheduled refits (after its runs) stop once they have taken this long (at least
    # one is done), oldest fit first and spread so every site is refitted within refit_every_h.
    refit_budget_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    # Fits run in this many worker processes (their CPU never holds up the collector's intake);
    # 0: in a thread of the collector's process.
    fit_processes: Annotated[int, Meta(ge=0, le=64)] = 1
    # A rainfall forecast issued longer ago is out of date (status stale, any alert cleared);
    # so is a site whose newest depth is older than depth_stale_s.
    stale_after_h: Annotated[float, Meta(gt=0, le=240)] = 6.0
    # A rainfall forecast whose issue time is further than this past the collector's clock is
    # refused (a local time stamped Z would hide every later forecast); those stored before
    # are passed over.
    issued_ahead_min: Annotated[float, Meta(ge=0, le=1440)] = 10.0
    depth_stale_s: Annotated[float, Meta(ge=60, le=86400)] = 1800.0
    # A forecast's ticket is to be dispatched this long before the water is expected (or by
    # its priority's deadline, if sooner).
    dispatch_lead_min: Annotated[float, Meta(ge=0, le=1440)] = 30.0

    def __post_init__(self) -> None:
        if self.hysteresis >= self.probability:
            raise ValueError(
                f"hysteresis ({self.hysteresis:g}) must be below probability ({self.probability:g})"
            )


class Api(_Strict, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    # The largest request body taken; a larger one is refused with 413 before it is read.
    max_body_bytes: Annotated[int, Meta(ge=1024, le=64 * 1024 * 1024)] = 256 * 1024
    # Failed logins in a row for one user name before each attempt waits (1 s, doubling);
    # one client address may fail four times as often.
    login_free_failures: Annotated[int, Meta(ge=1, le=100)] = 5
    login_max_delay_s: Annotated[float, Meta(ge=1, le=86400)] = 900.0
    # A font file with Chinese glyphs (TTF, OTF or a TTC collection) for the PDF reports;
    # by default the first found of fonts-noto-cjk, fonts-wqy-zenhei, fonts-arphic-uming.
    report_font: str | None = None


class CloudConfig(_Strict, frozen=True, kw_only=True):
    database: str = "sqlite:///floodgate.db"
    broker: Broker = field(default_factory=Broker)
    client_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "floodgate-collector"
    shared_group: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    # Messages in from a NATS JetStream cluster instead of an MQTT subscription.
    nats: NatsConfig | None = None
    batch_max: Annotated[int, Meta(ge=1, le=5000)] = 500
    # A node (or a sensor on a live node) silent this long raises comms_lost.
    comms_lost_after_s: Annotated[float, Meta(ge=10)] = 300.0
    # An alert transition waiting this long for the one before it in its episode (lost,
    # or dead-lettered) is applied to its ticket out of order, and noted so (docs/tickets.md).
    release_held_after_s: Annotated[float, Meta(ge=1, le=604_800)] = 600.0
    # The site registry (routing, deadlines, auto-dispatch); a built-in one
    # that sends everything to the emergency office when not given.
    registry: str | None = None
    # The master key that node command keys are derived from (floodgate.wire.node_command_key).
    command_key_file: str | None = None
    # The REST API; null turns it off (a collector that only ingests).
    api: Api | None = field(default_factory=Api)
    # Base-map tiles for the dashboard, e.g. "https://tiles.example/{z}/{x}/{y}.png";
    # without it (or offline) the map is the district outline alone.
    map_tiles: Annotated[str, Meta(pattern=r"^https?://.*\{z\}.*\{x\}.*\{y\}")] | None = None
    # Where e-mail notifications go out; without it, e-mail deliveries fail (and are kept).
    smtp: SmtpConfig | None = None
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    flood_season: FloodSeason = field(default_factory=FloodSeason)
    # The district's time zone (IANA): months and seasons are counted in it, and the dashboard,
    # the CAP feed and Open311 show every time in it, whatever the browser's.
    timezone: str = "Asia/Shanghai"
    # Optional export of readings to InfluxDB (line protocol to /write).
    influx: InfluxConfig | None = None
    # Rainfall forecasts from a watched folder (they are also taken by POST /api/v1/rainfall-forecasts).
    forecast: ForecastConfig | None = None

    def __post_init__(self) -> None:
        _known_zone(self.timezone)


def _cross_field(cfg: CloudConfig, src: Source) -> None:
    history = (cfg.forecast or ForecastConfig()).history_days
    if cfg.retention.forecast_days < history:
        src.issue(
            ["retention", "forecast_days"],
            f"must be at least forecast.history_days ({history:g}): the fits read the rainfall"
            f" forecasts that far back (got {cfg.retention.forecast_days:g})",
        )
    b = cfg.broker
    if b.urls is not None:
        for i, problem in urls_problems(b.urls):
            src.issue(["broker", "urls"] + ([] if i is None else [i]), problem)
    if cfg.nats is not None:
        if cfg.shared_group is not None:
            src.issue(["shared_group"], "is for an MQTT intake: with nats the collectors share nats.durable")
        if b.protocol != "3.1.1":
            src.issue(["broker", "protocol"], "must be 3.1.1 with nats (its MQTT gateway has no MQTT 5)")
        if len(set(cfg.nats.urls)) < len(cfg.nats.urls):
            src.issue(["nats", "urls"], "names a server twice")


def load_cloud_config(path: Path) -> tuple[CloudConfig, BrokerSettings]:
    """Load and validate; relative paths (SQLite file, TLS, password file) follow the config."""
    src = load_yaml(path)
    cfg = validate(CloudConfig, src)
    if cfg is not None:
        _cross_field(cfg, src)
    src.raise_if_issues()
    assert cfg is not None

    def rel(p: str | None) -> str | None:
        if p is None:
            return None
        q = Path(p)
        return str(q if q.is_absolute() else path.parent / q)

    b = cfg.broker
    password = b.password
    if b.password_file:
        password = Path(rel(b.password_file) or "").read_text().strip()
    settings = BrokerSettings(
        url=b.url,
        username=b.username,
        password=password,
        ca_file=rel(b.tls.ca_file) if b.tls else None,
        cert_file=rel(b.tls.cert_file) if b.tls else None,
        key_file=rel(b.tls.key_file) if b.tls else None,
        tls_insecure=bool(b.tls and b.tls.insecure),
        keepalive_s=b.keepalive_s,
        protocol=b.protocol,
        reconnect_max_s=b.reconnect_max_s,
        urls=tuple(b.urls or ()),
    )
    db = cfg.database
    if db.startswith("sqlite:///") and not db.startswith("sqlite:////"):
        db = "sqlite:///" + str(path.parent / db.removeprefix("sqlite:///"))
    # Only the paths change: every other key is carried over as loaded.
    return msgspec.structs.replace(
        cfg,
        database=db,
        influx=cfg.influx
        if cfg.influx is None or cfg.influx.password_file is None
        else msgspec.structs.replace(cfg.influx, password_file=rel(cfg.influx.password_file)),
        registry=rel(cfg.registry),
        forecast=cfg.forecast
        if cfg.forecast is None
        else msgspec.structs.replace(cfg.forecast, watch_dir=rel(cfg.forecast.watch_dir)),
        command_key_file=rel(cfg.command_key_file),
        nats=cfg.nats
        if cfg.nats is None or cfg.nats.password_file is None
        else msgspec.structs.replace(cfg.nats, password_file=rel(cfg.nats.password_file)),
        smtp=cfg.smtp
        if cfg.smtp is None or cfg.smtp.password_file is None
        else msgspec.structs.replace(cfg.smtp, password_file=rel(cfg.smtp.password_file)),
    ), settings
