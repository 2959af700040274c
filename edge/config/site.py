"""Site configs (firmware-config/sites/*.yaml): one edge agent's whole world.

Validation runs in three steps and reports every problem with file, line and
key; the agent refuses to start on any of them:

1. shape: keys, types and ranges (msgspec structs, unknown keys refused);
2. cross-field: within one object (``clear`` below ``on``, warning below danger);
3. across devices: ids unique, buses exist, one unit id per bus, one port per
   bus, profiles exist and fit the device's role, bindings name real devices;
4. files: every file the config names (broker password, TLS files, command
   key) exists and can be read by the user running the check.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import pwd
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from msgspec import Meta, Struct, field

from edge.config.profile import Profile, load_profile
from edge.config.search import ProfilePath
from floodgate.broker import Tls, url_problem, urls_problems
from floodgate.errors import ConfigError
from floodgate.vocab import DEVICE_KINDS, DeviceKind
from floodgate.wire import ID_PATTERN
from floodgate.yamlconfig import Source, load_yaml, validate

Id = Annotated[str, Meta(pattern=ID_PATTERN)]
Seconds = Annotated[float, Meta(ge=0)]
NonEmpty = Annotated[str, Meta(min_length=1)]


class _Strict(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Config objects refuse unknown keys, so a typo is an error and not a silent default."""


class SiteInfo(_Strict, frozen=True, kw_only=True):
    name: NonEmpty
    address: str = ""
    lat: Annotated[float, Meta(ge=-90, le=90)]
    lon: Annotated[float, Meta(ge=-180, le=180)]
    exercise: bool = False  # a drill or a simulation; birth carries it, the CAP feed says Exercise


class RtuBus(_Strict, frozen=True, kw_only=True, tag_field="type", tag="rtu"):
    id: Id
    port: NonEmpty
    baud: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: Annotated[float, Meta(gt=0, le=5)] = 0.3
    retries: Annotated[int, Meta(ge=0, le=1)] = 1
    gap_ms: Annotated[float, Meta(ge=0, le=1000)] | None = None
    backoff_max_s: Annotated[float, Meta(gt=0, le=3600)] = 30.0

    def char_time_s(self) -> float:
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baud

    def frame_gap_s(self) -> float:
        """Silence between frames: 3.5 characters, never under 1.75 ms (the spec's floor)."""
        if self.gap_ms is not None:
            return self.gap_ms / 1000
        return max(3.5 * self.char_time_s(), 0.00175)


class TcpBus(_Strict, frozen=True, kw_only=True, tag_field="type", tag="tcp"):
    id: Id
    host: NonEmpty
    port: Annotated[int, Meta(ge=1, le=65535)] = 502
    timeout_s: Annotated[float, Meta(gt=0, le=10)] = 1.0
    retries: Annotated[int, Meta(ge=0, le=1)] = 1
    gap_ms: Annotated[float, Meta(ge=0, le=1000)] | None = None
    backoff_max_s: Annotated[float, Meta(gt=0, le=3600)] = 30.0

    def frame_gap_s(self) -> float:
        return (self.gap_ms or 0.0) / 1000


Bus = RtuBus | TcpBus


class Threshold(_Strict, frozen=True, kw_only=True):
    on: float
    clear: float
    dwell_s: Seconds = 0.0


class Thresholds(_Strict, frozen=True, kw_only=True):
    warning: Threshold
    danger: Threshold


class FilterCfg(_Strict, frozen=True, kw_only=True):
    samples: Annotated[int, Meta(ge=1, le=7)] = 1
    noise_floor: Annotated[float, Meta(ge=0)] = 10.0
    max_jump: Annotated[float, Meta(gt=0)] = 100.0
    max_rate_per_min: Annotated[float, Meta(gt=0)] = 250.0
    # Faster than this (mm/s, beyond max_jump) is not water: rejected however many readings agree.
    max_rise_mm_s: Annotated[float, Meta(gt=0)] = 50.0
    confirm: Annotated[int, Meta(ge=1, le=10)] = 2
    stuck_after_s: Seconds = 0.0


DEFAULT_FAST_POLL_S = 0.2


class FastPoll(_Strict, frozen=True, kw_only=True):
    """Adaptive polling: when a sensor is polled at its fast rate instead of ``poll_s``."""

    interval_s: Annotated[float, Meta(ge=0.05, le=3600)] | None = None
    near_mm: Annotated[float, Meta(ge=0)] = 50.0
    rise_mm_per_min: Annotated[float, Meta(gt=0)] = 60.0


class ForecastCfg(_Strict, frozen=True, kw_only=True):
    """The rise-rate forecast of a level sensor (``edge.rules.forecast``); off unless ``horizon_s`` is set."""

    horizon_s: Annotated[float, Meta(gt=0, le=3600)] | None = None
    window_s: Annotated[float, Meta(ge=10, le=600)] = 60.0
    min_rise_mm_min: Annotated[float, Meta(gt=0)] = 5.0


class Device(_Strict, frozen=True, kw_only=True):
    id: Id
    profile: NonEmpty
    bus: Id
    unit: Annotated[int, Meta(ge=1, le=247)]
    poll_s: Annotated[float, Meta(ge=0.05, le=3600)] = 1.0
    thresholds: Thresholds | None = None
    wet_level: Literal["warning", "danger"] = "danger"
    dry_hold_s: Annotated[float, Meta(ge=0, le=3600)] = 0.0  # immersion: dry this long before clear
    mount_height_mm: Annotated[float, Meta(gt=0)] | None = None
    zero_offset_mm: float = 0.0
    filter: FilterCfg = field(default_factory=FilterCfg)
    fast_poll: FastPoll = field(default_factory=FastPoll)
    forecast: ForecastCfg = field(default_factory=ForecastCfg)

    @property
    def poll_fast_s(self) -> float:
        """The interval while the sensor is urgent: ``fast_poll.interval_s``, else 0.2 s or ``poll_s``."""
        if self.fast_poll.interval_s is not None:
            return self.fast_poll.interval_s
        return min(DEFAULT_FAST_POLL_S, self.poll_s)


class OverrideInput(_Strict, frozen=True, kw_only=True):
    device: Id
    point: str = "override"


MessageKey = Literal["clear", "warning", "danger", "fault", "forecast"]  # "forecast": optional pre-warning


class Response(_Strict, frozen=True, kw_only=True):
    """Which board and gate answer which sensors, with what, and when."""

    id: Id
    sensors: Annotated[list[Id], Meta(min_length=1)]
    sign: Id | None = None
    gate: Id | None = None
    messages: dict[MessageKey, str] = field(default_factory=dict)
    close_gate_at: Literal["warning", "danger"] = "danger"
    gate_min_warning_s: Seconds = 30.0
    gate_travel_s: Annotated[float, Meta(gt=0)] = 20.0
    gate_reopen_hold_s: Seconds = 60.0
    gate_reopen_below_mm: float | None = None
    override: OverrideInput | None = None


class Broker(_Strict, frozen=True, kw_only=True):
    url: str = "mqtt://127.0.0.1:1883"
    # Several brokers (of one cluster, or standbys): the agent connects to the first and, when
    # the link fails, to the next in turn. Given, it replaces ``url``.
    urls: list[str] | None = None
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    tls: Tls | None = None
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    reconnect_max_s: Annotated[float, Meta(ge=0)] = 5.0

    def __post_init__(self) -> None:
        problem = url_problem(self.url)
        if problem:
            raise ValueError(problem)

    @property
    def all_urls(self) -> list[str]:
        """The brokers to connect to, in order."""
        return list(self.urls) if self.urls else [self.url]

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        u = urlsplit(self.url)
        return u.port or (8883 if u.scheme == "mqtts" else 1883)


class OutboxCfg(_Strict, frozen=True, kw_only=True):
    path: str = "outbox.db"
    max_bytes: Annotated[int, Meta(ge=64 * 1024)] = 64 * 1024 * 1024
    batch: Annotated[int, Meta(ge=1, le=1000)] = 100
    # A message the broker has but the collector has not confirmed is sent again
    # after this long, doubling with each resend up to the max.
    confirm_timeout_s: Annotated[float, Meta(ge=1, le=86400)] = 60.0
    confirm_timeout_max_s: Annotated[float, Meta(ge=1, le=86400)] = 900.0


class SiteConfig(_Strict, frozen=True, kw_only=True):
    node: Id
    site: SiteInfo
    profiles_dir: str | None = None
    buses: Annotated[list[Bus], Meta(min_length=1)]
    devices: Annotated[list[Device], Meta(min_length=1)]
    responses: list[Response] = field(default_factory=list)
    presets: dict[str, str] = field(default_factory=dict)
    broker: Broker = field(default_factory=Broker)
    command_key: str | None = None
    command_key_file: str | None = None
    outbox: OutboxCfg = field(default_factory=OutboxCfg)
    telemetry_interval_s: Annotated[float, Meta(gt=0, le=3600)] = 5.0
    heartbeat_s: Annotated[float, Meta(gt=0, le=86400)] = 60.0
    status_port: Annotated[int, Meta(ge=0, le=65535)] = 0


@dataclass(frozen=True)
class LoadedSite:
    """A site config that passed all three steps, with its profiles and origin."""

    config: SiteConfig
    profiles: dict[str, Profile]
    path: Path
    config_hash: str

    def resolve(self, p: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        q = Path(p)
        return q if q.is_absolute() else (self.path.parent / q)

    def device(self, dev_id: str) -> Device:
        for d in self.config.devices:
            if d.id == dev_id:
                return d
        raise KeyError(dev_id)

    def command_key(self) -> bytes | None:
        c = self.config
        if c.command_key_file:
            return self.resolve(c.command_key_file).read_bytes().strip()
        return c.command_key.encode() if c.command_key else None

    def broker_password(self) -> str | None:
        b = self.config.broker
        if b.password_file:
            return self.resolve(b.password_file).read_text().strip()
        return b.password


def _cross_field(cfg: SiteConfig, src: Source) -> None:
    if cfg.broker.urls is not None:
        for i, problem in urls_problems(cfg.broker.urls):
            src.issue(["broker", "urls"] + ([] if i is None else [i]), problem)
    for i, d in enumerate(cfg.devices):
        fast = d.fast_poll.interval_s
        if fast is not None and fast > d.poll_s:
            src.issue(
                ["devices", i, "fast_poll", "interval_s"],
                f"the fast interval ({fast:g} s) must not be slower than poll_s ({d.poll_s:g} s)",
            )
        if d.thresholds is None:
            continue
        t = d.thresholds
        for name in ("warning", "danger"):
            th = getattr(t, name)
            if th.clear >= th.on:
                src.issue(
                    ["devices", i, "thresholds", name, "clear"],
                    f"clear ({th.clear}) must be below on ({th.on}) for hysteresis",
                )
        if t.warning.on >= t.danger.on:
            src.issue(
                ["devices", i, "thresholds", "danger", "on"],
                f"danger.on ({t.danger.on}) must be above warning.on ({t.warning.on})",
            )
    for i, r in enumerate(cfg.responses):
        if r.sign is None and r.gate is None:
            src.issue(["responses", i], "names neither a sign nor a gate")
        if r.sign is not None:
            for level in ("warning", "danger"):
                if level not in r.messages:
                    src.issue(["responses", i, "messages"], f"needs a {level!r} message")
        if r.gate is not None and r.sign is None:
            src.issue(
                ["responses", i, "gate"],
                "a gate needs a sign in the same response: it closes only after a warning",
            )


def _across_devices(cfg: SiteConfig, src: Source, search: ProfilePath) -> dict[str, Profile]:
    seen_bus: dict[str, int] = {}
    ports: dict[str, int] = {}
    for i, b in enumerate(cfg.buses):
        if b.id in seen_bus:
            src.issue(["buses", i, "id"], f"bus id {b.id!r} already used by buses[{seen_bus[b.id]}]")
        seen_bus.setdefault(b.id, i)
        port = b.port if isinstance(b, RtuBus) else f"{b.host}:{b.port}"
        if port in ports:
            src.issue(
                ["buses", i, "port"],
                f"{port} is already claimed by buses[{ports[port]}]: one owner per bus",
            )
        ports.setdefault(port, i)

    profiles: dict[str, Profile] = {}
    kinds: dict[str, DeviceKind] = {}
    seen_dev: dict[str, int] = {}
    units: dict[tuple[str, int], int] = {}
    for i, d in enumerate(cfg.devices):
        if d.id in seen_dev:
            src.issue(
                ["devices", i, "id"],
                f"device id {d.id!r} already used by devices[{seen_dev[d.id]}]",
            )
        seen_dev.setdefault(d.id, i)
        if d.bus not in seen_bus:
            src.issue(["devices", i, "bus"], f"no bus with id {d.bus!r}")
        key = (d.bus, d.unit)
        if key in units:
            src.issue(
                ["devices", i, "unit"],
                f"unit {d.unit} on bus {d.bus!r} is already devices[{units[key]}]",
            )
        units.setdefault(key, i)
        if d.profile not in profiles:
            path = search.find(d.profile)
            if path is None:
                src.issue(
                    ["devices", i, "profile"],
                    f"no profile {d.profile!r} in {search.describe()}{_did_you_mean(d.profile, search)}",
                )
                continue
            try:
                profiles[d.profile] = load_profile(path)
            except ConfigError as exc:
                src.issues.extend(exc.issues)
                continue
        prof = profiles[d.profile]
        kinds[d.id] = prof.kind
        if prof.kind == "level" and d.thresholds is None:
            src.issue(["devices", i], "a level sensor needs thresholds")
        if prof.kind != "level" and d.forecast.horizon_s is not None:
            src.issue(["devices", i, "forecast"], f"only a level sensor forecasts; {d.id} is a {prof.kind}")
        if prof.kind == "level" and prof.level_mode == "distance" and d.mount_height_mm is None:
            src.issue(["devices", i], f"profile {d.profile} measures distance: set mount_height_mm")

    for i, r in enumerate(cfg.responses):
        for j, s in enumerate(r.sensors):
            if s not in kinds and s not in seen_dev:
                src.issue(["responses", i, "sensors", j], f"no device {s!r}")
            elif s in kinds and not DEVICE_KINDS[kinds[s]].water:
                src.issue(
                    ["responses", i, "sensors", j],
                    f"{s!r} is a {kinds[s]}, not a water sensor (level or immersion)",
                )
        for role in ("sign", "gate"):
            dev = getattr(r, role)
            if dev is None:
                continue
            if dev not in seen_dev:
                src.issue(["responses", i, role], f"no device {dev!r}")
            elif kinds.get(dev) not in (role, None):
                src.issue(["responses", i, role], f"{dev!r} is a {kinds[dev]}, not a {role}")
        if r.override is not None:
            o = r.override
            if o.device not in seen_dev:
                src.issue(["responses", i, "override", "device"], f"no device {o.device!r}")
            else:
                prof_name = cfg.devices[seen_dev[o.device]].profile
                gate_prof = profiles.get(prof_name)
                if gate_prof is not None and o.point not in gate_prof.points:
                    src.issue(
                        ["responses", i, "override", "point"],
                        f"profile {prof_name} has no point {o.point!r}",
                    )
    claimed: dict[str, int] = {}
    for i, r in enumerate(cfg.responses):
        for role in ("sign", "gate"):
            dev = getattr(r, role)
            if dev is not None and dev in claimed and claimed[dev] != i:
                src.issue(
                    ["responses", i, role],
                    f"{dev!r} is already driven by responses[{claimed[dev]}]",
                )
            if dev is not None:
                claimed.setdefault(dev, i)
    if cfg.command_key is not None and len(cfg.command_key) < 16:
        src.issue(["command_key"], "must be at least 16 characters")
    return profiles


def _did_you_mean(name: str, search: ProfilePath) -> str:
    close = difflib.get_close_matches(name, list(search.files()), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def profile_path(cfg: SiteConfig, config: Path, src: Source, extra: Iterable[Path] = ()) -> ProfilePath:
    """The site's search path: shipped profiles, then its ``profiles_dir``, then ``extra`` folders."""
    search = ProfilePath.of()
    if cfg.profiles_dir:
        pd = Path(cfg.profiles_dir)
        pd = pd if pd.is_absolute() else config.parent / pd
        if not pd.is_dir():
            src.issue(["profiles_dir"], f"no folder {pd}")
        search = search.then([pd])
    return search.then(extra)


# What ``floodgate edge provision`` writes, and where the config names it.
PROVISIONED = {
    ("broker", "password_file"): "secrets/broker-password",
    ("command_key_file",): "secrets/command.key",
}


def named_files(cfg: SiteConfig) -> list[tuple[tuple[str, ...], str, bool]]:
    """Every file the config names: (its key, the path as written, whether it is a secret)."""
    b = cfg.broker
    out: list[tuple[tuple[str, ...], str, bool]] = []
    if b.password_file:
        out.append((("broker", "password_file"), b.password_file, True))
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(b.tls, name) if b.tls else None
        if value:
            out.append((("broker", "tls", name), value, name == "key_file"))
    if cfg.command_key_file:
        out.append((("command_key_file",), cfg.command_key_file, True))
    return out


def _files(cfg: SiteConfig, config: Path, src: Source, will_write: Collection[Path]) -> None:
    """Step 4: every file the config names is there and readable (the agent reads them as it starts)."""
    for loc, name, _ in named_files(cfg):
        p = Path(name)
        path = p if p.is_absolute() else config.parent / p
        hint = "; 'floodgate edge provision' writes it" if loc in PROVISIONED else ""
        if path.absolute() in will_write:
            continue
        try:
            if not path.is_file():
                src.issue(list(loc), f"{path} is not a file" if path.exists() else f"no file {path}{hint}")
            elif loc == ("command_key_file",) and len(path.read_bytes().strip()) < 16:
                src.issue(list(loc), f"{path} must hold at least 16 characters")
            else:
                path.open("rb").close()
        except PermissionError:
            user = pwd.getpwuid(os.geteuid()).pw_name
            src.issue(list(loc), f"{path} cannot be read by this user ({user})")


def load_site(
    path: Path | str,
    profile_dirs: Iterable[Path] = (),
    *,
    check_files: bool = True,
    will_write: Collection[Path] = (),
) -> LoadedSite:
    """Load a site config and every profile it uses; raise ConfigError on any problem.

    ``profile_dirs`` are folders searched after the shipped ones and the site's
    ``profiles_dir`` (``FLOODGATE_PROFILES`` and ``--profiles``, see
    :mod:`edge.config.search`). With ``check_files``, every file the config
    names must exist and be readable, except those in ``will_write``
    (absolute paths ``provision`` is about to write).
    """
    path = Path(path)
    src = load_yaml(path)
    cfg = validate(SiteConfig, src)
    src.raise_if_issues()
    assert cfg is not None
    _cross_field(cfg, src)
    profiles = _across_devices(cfg, src, profile_path(cfg, path, src, profile_dirs))
    if check_files:
        _files(cfg, path, src, will_write)
    src.raise_if_issues()
    digest = hashlib.sha256(src.text.encode()).hexdigest()[:16]
    return LoadedSite(cfg, profiles, path.resolve(), digest)
