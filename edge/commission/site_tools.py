"""Installer commands on a configured site: calibrate, test-sign, test-gate.

They open the site's own bus for the device named in the config, so stop the
agent first (one owner per bus). ``test-gate`` asks the agent's own gate
policy (:mod:`edge.rules.gate`): the board warns for ``gate_min_warning_s``
before the gate closes (always), the gate does not open while a sensor of its
response reads water, is faulted or cannot be read, and the manual override
key always wins. ``--force --reason TEXT`` (after a prompt) opens anyway and
records who and why as an event in the outbox.
"""

from __future__ import annotations

import asyncio
import getpass
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from ruamel.yaml import YAML

from edge.bus.link import PymodbusLink
from edge.bus.owner import Counters, DeviceIO
from edge.commission.modbus import check_port, explain_open_error
from edge.commission.ops import EXIT_CONFIG, EXIT_FAIL, EXIT_OK, EXIT_USAGE, done, fail, say, write_config
from edge.config.site import LoadedSite, Response, load_site
from edge.devices.codec import engineering
from edge.devices.drivers import (
    GateDevice,
    LevelSensor,
    Sensor,
    SignDevice,
    failure_reason,
    make_driver,
    read_points,
)
from edge.outbox import PRIORITY_URGENT, Outbox
from edge.rules.gate import Force, SensorState, Situation, judge, warning_texts
from floodgate import wire
from floodgate.errors import BusError, LinkDown, NoResponse
from floodgate.ids import now_ms
from floodgate.wire import Kind, Sequencer, Topic


class _Quiet:
    """A sink that drops what drivers report: these commands print their own results."""

    def reading(self, *args: Any) -> None: ...
    def transition(self, *args: Any, **kw: Any) -> None: ...
    def fault(self, *args: Any) -> None: ...


async def _io(site: LoadedSite, dev_id: str) -> tuple[PymodbusLink, DeviceIO]:
    dev = next(d for d in site.config.devices if d.id == dev_id)
    bus = next(b for b in site.config.buses if b.id == dev.bus)
    check_port(bus)
    link = PymodbusLink(bus)
    await link.connect()
    return link, DeviceIO(link, dev.unit, Counters())


def _device(site: LoadedSite, dev_id: str, kind: str) -> Any:
    dev = next((d for d in site.config.devices if d.id == dev_id), None)
    if dev is None:
        known = [d.id for d in site.config.devices if site.profiles[d.profile].kind == kind]
        raise ValueError(f"no device {dev_id!r} in the config; {kind} devices: {', '.join(known) or 'none'}")
    if site.profiles[dev.profile].kind != kind:
        raise ValueError(f"{dev_id} is a {site.profiles[dev.profile].kind}, not a {kind}")
    return dev


def _ask(question: str, yes: bool) -> bool | None:
    if yes:
        return True
    if not sys.stdin.isatty():
        return None
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


# --------------------------------------------------------------- calibrate


async def _sample(site: LoadedSite, dev_id: str, n: int, interval_s: float) -> list[float]:
    dev = msgspec.structs.replace(_device(site, dev_id, "level"), zero_offset_mm=0.0)
    sensor = LevelSensor(dev, site.profiles[dev.profile], _Quiet())
    link, io = await _io(site, dev_id)
    try:
        values = []
        for i in range(n):
            raws = await read_points(io, sensor.profile, sensor.names)
            status = sensor.status_fault(raws)
            if status is not None:
                reason, where = status
                raise ValueError(
                    f"reading {i + 1}: {dev_id} reports {reason} ({where['point']} = {where['code']}); "
                    "calibrate once it reads normally"
                )
            mm, ok = sensor._to_mm(raws)
            if not ok:
                # Say it in the unit of the range: the profile's, not mm.
                p, unit = sensor.point, sensor.point.unit or ""
                value = float(engineering(sensor.profile, "level", raws))
                lo, hi = p.range or (math.nan, math.nan)
                raise ValueError(
                    f"reading {i + 1} is {value:g} {unit}, outside the profile's plausible range "
                    f"{lo:g} to {hi:g} {unit}"
                )
            values.append(mm)
            await asyncio.sleep(interval_s)
        return values
    finally:
        await link.close()


def calibrate(
    config: Path,
    dev_id: str,
    samples: int,
    interval_s: float,
    max_spread_mm: float,
    yes: bool,
    as_json: bool = False,
    profile_dirs: Sequence[Path] = (),
) -> int:
    site = load_site(config, profile_dirs, check_files=False)  # no secrets needed here
    try:
        values = asyncio.run(_sample(site, dev_id, samples, interval_s))
    except ValueError as exc:
        return fail(str(exc), EXIT_USAGE)
    except LinkDown as exc:
        return fail(explain_open_error(str(exc).split(":")[0], exc))
    except BusError as exc:
        return fail(f"{dev_id} did not answer ({exc}): check it with 'floodgate edge read'")
    offset = round(statistics.median(values), 1)
    spread = max(values) - min(values)
    say(as_json, f"{dev_id}: {len(values)} readings, median {offset:g} mm, spread {spread:g} mm")
    if spread > max_spread_mm:
        return fail(
            f"the readings vary by {spread:g} mm (more than {max_spread_mm:g}): is the road dry and still?"
        )
    ok = _ask(f"write zero_offset_mm: {offset:g} for {dev_id} into {config}?", yes)
    if ok is None:
        return fail("writing the config needs confirmation: add --yes when not at a terminal", EXIT_USAGE)
    if not ok:
        print("config unchanged")
        return EXIT_OK
    yaml = YAML()
    yaml.preserve_quotes = True
    data = yaml.load(config.read_text())
    for d in data["devices"]:
        if d["id"] == dev_id:
            d["zero_offset_mm"] = offset
    if not write_config(config, yaml, data, "calibrated", profile_dirs, check_files=False):
        return EXIT_CONFIG
    return done(
        as_json, f"wrote zero_offset_mm: {offset:g} for {dev_id} into {config}", zero_offset_mm=offset
    )


# ---------------------------------------------------------------- actuators


async def _show(site: LoadedSite, dev_id: str, text: str) -> bool:
    dev = _device(site, dev_id, "sign")
    sign = SignDevice(dev, site.profiles[dev.profile], _Quiet())
    link, io = await _io(site, dev_id)
    try:
        return await sign.show(io, text)
    finally:
        await link.close()


def try_sign(
    config: Path, dev_id: str, message: str, as_json: bool = False, profile_dirs: Sequence[Path] = ()
) -> int:
    site = load_site(config, profile_dirs, check_files=False)  # no secrets needed here
    try:
        ok = asyncio.run(_show(site, dev_id, message))
    except ValueError as exc:
        return fail(str(exc), EXIT_USAGE)
    except LinkDown as exc:
        return fail(explain_open_error(str(exc).split(":")[0], exc))
    except BusError as exc:
        return fail(f"{dev_id} did not take the message ({exc})")
    if not ok:
        return fail(f"{dev_id} reads back something else: the board did not keep “{message}”")
    return done(as_json, f"{dev_id} shows “{message}” (read back)", device=dev_id, shown=message)


async def _polled(site: LoadedSite, dev_id: str, kind: str) -> Any:
    """A board's or gate's driver after one poll of it."""
    dev = _device(site, dev_id, kind)
    driver = make_driver(dev, site.profiles[dev.profile], _Quiet())
    link, io = await _io(site, dev_id)
    try:
        await driver.poll(io)
    finally:
        await link.close()
    return driver


async def _read_sensor(site: LoadedSite, sid: str, resp: Response) -> tuple[SensorState, str]:
    """One sensor of a response as the policy sees it, read once, and what it read in words."""
    dev = site.device(sid)
    prof = site.profiles[dev.profile]
    try:
        link, io = await _io(site, sid)
    except LinkDown as exc:
        return SensorState(fault="link_down", known=True), f"{sid} cannot be read ({exc})"
    try:
        sensor = make_driver(dev, prof, _Quiet())
        assert isinstance(sensor, Sensor), f"{sid} is a {prof.kind}, not a sensor"
        return await sensor.snapshot(io, resp.gate_reopen_below_mm)
    except BusError as exc:
        return SensorState(fault=failure_reason(exc), known=True), f"{sid} does not answer ({exc})"
    finally:
        await link.close()


async def _situation(site: LoadedSite, resp: Response, gate_closed: bool) -> tuple[Situation, list[str]]:
    states: dict[str, SensorState] = {}
    said: list[str] = []
    for sid in resp.sensors:
        states[sid], words = await _read_sensor(site, sid, resp)
        said.append(words)
    return Situation(sensors=states, now_ms=now_ms(), gate_closed=gate_closed), said


async def _record(site: LoadedSite, dev_id: str, detail: dict[str, Any]) -> None:
    """Put an event in the site's outbox: the agent sends it to the office when it runs again."""
    node = site.config.node
    box = Outbox(site.resolve(site.config.outbox.path), site.config.outbox.max_bytes)
    await box.open()
    try:
        seq = Sequencer(node, await box.next_boot())  # this command is a session of its own
        ts = now_ms()
        event = {"type": "actuator.state", "dev": dev_id, "detail": detail}
        message = wire.build(wire.EventMessage, {**seq.envelope(ts), "event": event})
        topic = str(Topic(node, Kind.EVENT))
        await box.put(Kind.EVENT.value, topic, wire.encode(message), PRIORITY_URGENT, ts)
    finally:
        await box.close()


async def _warn_then_close(site: LoadedSite, dev_id: str, resp: Response | None, as_json: bool) -> Any:
    """Show the response's warning, keep it for ``gate_min_warning_s``, read it back, then close."""
    if resp is not None and resp.sign is not None:
        text = resp.messages.get(resp.close_gate_at) or resp.messages["warning"]
        if not await _show(site, resp.sign, text):
            raise BusError(f"{resp.sign} did not keep its warning; the gate stays as it is")
        since = now_ms()
        wait_s = resp.gate_min_warning_s
        say(as_json, f"{resp.sign} shows “{text}”; closing in {wait_s:g} s (the agent's gate_min_warning_s)")
        await asyncio.sleep(wait_s)
        shown = await _shown(site, resp.sign)
        sit = Situation(
            sensors={},
            now_ms=now_ms(),
            warning_since_ms=since if shown in warning_texts(resp) else None,
        )
        verdict = judge("gate.close", sit, resp)
        if not verdict.ok:  # it slept the whole time: the board lost its warning meanwhile
            raise BusError(
                f"{resp.sign} lost its warning while the gate waited (it shows “{shown}” now; a power cut?):"
                f" the gate stays open; run test-gate close again to warn for {wait_s:g} s and close"
            )
    return await _set_gate(site, dev_id, True)


async def _shown(site: LoadedSite, dev_id: str) -> str:
    return str((await _polled(site, dev_id, "sign")).state.text)


async def _set_gate(site: LoadedSite, dev_id: str, close: bool) -> Any:
    dev = _device(site, dev_id, "gate")
    gate = GateDevice(dev, site.profiles[dev.profile], _Quiet())
    link, io = await _io(site, dev_id)
    try:
        if not await gate.set_closed(io, close):
            raise BusError("the relay did not confirm")
        await gate.poll(io)
        return gate.state
    finally:
        await link.close()


def try_gate(
    config: Path,
    dev_id: str,
    action: str,
    force: bool,
    yes: bool,
    as_json: bool = False,
    profile_dirs: Sequence[Path] = (),
    reason: str | None = None,
) -> int:
    """Close or open a gate with the agent's policy (:mod:`edge.rules.gate`).

    ``close`` always warns on the board first. ``open`` is refused while the
    policy is against it, unless ``force`` with a ``reason`` (asked first);
    a forced open is recorded as an ``actuator.state`` event in the outbox.
    """
    site = load_site(config, profile_dirs, check_files=False)  # no secrets needed here
    close = action == "close"
    resp = next((r for r in site.config.responses if r.gate == dev_id), None)
    if force and not close and not (reason or "").strip():
        return fail("--force needs --reason TEXT: why the road is safe to open", EXIT_USAGE)
    try:
        state = asyncio.run(_polled(site, dev_id, "gate")).state
        if state is not None and state.override:
            return fail(
                f"{dev_id}'s manual override key is on: the gate is in manual, turn the key back first"
            )
        if close:
            state = asyncio.run(_warn_then_close(site, dev_id, resp, as_json))
        else:
            forced: dict[str, Any] | None = None
            if resp is not None:
                sit, said = asyncio.run(_situation(site, resp, bool(state and state.relay)))
                who = f"test-gate by {getpass.getuser()}"
                by = Force(by=who, role="installer", reason=reason or "") if force else None
                verdict = judge("gate.open", sit, resp, by)
                if verdict.forced or not verdict.ok:
                    print("the agent would not open the gate now:", file=sys.stderr)
                    for line in said:
                        print(f"  {line}", file=sys.stderr)
                if not verdict.ok:
                    hint = "" if force else ": --force --reason TEXT, after a question"
                    return fail(f"not opened: {verdict.reason}{hint}")
                if verdict.forced:
                    ok = _ask("open the gate anyway?", yes)
                    if not ok:
                        return fail("not opened", EXIT_USAGE if ok is None else EXIT_FAIL)
                    forced = {"cause": who, "forced": True, "reason": reason, "role": "installer"}
                    forced["against"] = verdict.reason
            state = asyncio.run(_set_gate(site, dev_id, False))
            if forced is not None:
                asyncio.run(_record(site, dev_id, {"do": "open", **forced, "confirmed": True}))
    except ValueError as exc:
        return fail(str(exc), EXIT_USAGE)
    except LinkDown as exc:
        return fail(explain_open_error(str(exc).split(":")[0], exc))
    except NoResponse:
        return fail(f"{dev_id} did not answer: check it with 'floodgate edge read'")
    except BusError as exc:
        return fail(f"{dev_id}: {exc}")
    relay = "closed" if close else "released"
    text = f"{dev_id}: relay {relay} (read back); position now {state.position}"
    return done(as_json, text, device=dev_id, relay=relay, position=state.position)
