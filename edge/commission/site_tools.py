"""Installer commands on a configured site: calibrate, test-sign, test-gate.

They open the site's own bus for the device named in the config, so stop the
agent first (one owner per bus). The gate commands keep the agent's safety
rules: the board warns before the gate closes, the gate does not open while
a sensor of its response reads water or cannot be read, and the manual
override key always wins. ``--force`` (after a prompt) skips the first two.
"""

from __future__ import annotations

import asyncio
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
from edge.config.site import LoadedSite, load_site
from edge.devices.codec import engineering
from edge.devices.drivers import GateDevice, LevelSensor, SignDevice, read_points
from floodgate.errors import BusError, LinkDown, NoResponse


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
    site = load_site(config, profile_dirs)
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
    if not write_config(config, yaml, data, "calibrated", profile_dirs):
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
    site = load_site(config, profile_dirs)
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


async def _gate_state(site: LoadedSite, dev_id: str) -> tuple[GateDevice, Any]:
    dev = _device(site, dev_id, "gate")
    gate = GateDevice(dev, site.profiles[dev.profile], _Quiet())
    link, io = await _io(site, dev_id)
    try:
        await gate.poll(io)
    finally:
        await link.close()
    return gate, gate.state


async def _water(site: LoadedSite, sensors: list[str]) -> list[str]:
    """What speaks against opening: sensors that read water, or cannot be read."""
    problems = []
    for sid in sensors:
        dev = next(d for d in site.config.devices if d.id == sid)
        prof = site.profiles[dev.profile]
        try:
            link, io = await _io(site, sid)
        except LinkDown as exc:
            problems.append(f"{sid} cannot be read ({exc})")
            continue
        try:
            if prof.kind == "level" and dev.thresholds is not None:
                sensor = LevelSensor(dev, prof, _Quiet())
                mm, ok = sensor._to_mm(await read_points(io, prof, sensor.names))
                if not ok:
                    problems.append(f"{sid} reads an impossible {mm:g} mm (faulty?)")
                elif mm >= dev.thresholds.warning.on:
                    problems.append(
                        f"{sid} reads {mm:g} mm of water (warning at {dev.thresholds.warning.on:g})"
                    )
            elif prof.kind == "immersion":
                raws = await read_points(io, prof, ["wet"])
                if raws["wet"]:
                    problems.append(f"{sid} is wet")
        except BusError as exc:
            problems.append(f"{sid} does not answer ({exc})")
        finally:
            await link.close()
    return problems


async def _move_gate(
    site: LoadedSite, dev_id: str, close: bool, sign: tuple[str, str] | None, wait_s: float, as_json: bool
) -> Any:
    if sign is not None:
        if not await _show(site, *sign):
            raise BusError(f"{sign[0]} did not keep its warning; the gate stays as it is")
        say(as_json, f"{sign[0]} shows “{sign[1]}”; closing in {wait_s:g} s (the agent's gate_min_warning_s)")
        await asyncio.sleep(wait_s)
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
) -> int:
    site = load_site(config, profile_dirs)
    close = action == "close"
    resp = next((r for r in site.config.responses if r.gate == dev_id), None)
    try:
        _, state = asyncio.run(_gate_state(site, dev_id))
        if state is not None and state.override:
            return fail(
                f"{dev_id}'s manual override key is on: the gate is in manual, turn the key back first"
            )
        sign: tuple[str, str] | None = None
        wait_s = 0.0
        reasons: list[str] = []
        if close and resp is not None and resp.sign and not force:
            sign = (resp.sign, resp.messages.get("danger") or resp.messages.get("warning") or "前方封闭")
            wait_s = resp.gate_min_warning_s
        if not close and resp is not None:
            reasons = asyncio.run(_water(site, resp.sensors))
        if reasons:
            print("the agent would not open the gate now:", file=sys.stderr)
            for r in reasons:
                print(f"  {r}", file=sys.stderr)
            if not force:
                return fail("not opened; add --force (you will be asked) if you are sure the road is clear")
            ok = _ask("open the gate anyway?", yes)
            if not ok:
                return fail("not opened", EXIT_USAGE if ok is None else EXIT_FAIL)
        if close and force:
            ok = _ask(f"close {dev_id} without the board warning first?", yes)
            if not ok:
                return fail("not closed", EXIT_USAGE if ok is None else EXIT_FAIL)
        state = asyncio.run(_move_gate(site, dev_id, close, sign, wait_s, as_json))
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
