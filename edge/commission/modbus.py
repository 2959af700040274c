"""Installer commands that talk Modbus: scan, read, watch, write.

They open their own link (``--port /dev/ttyUSB0`` for RS-485 RTU, or
``--port tcp://host:502``) with no retries and a short timeout, so an absent
device costs one timeout. The agent must not be polling the same bus at the
same time: stop it first (one owner per bus).
"""

from __future__ import annotations

import asyncio
import difflib
import errno
import fcntl
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.bus.link import PymodbusLink
from edge.bus.owner import Counters, DeviceIO
from edge.commission.ops import EXIT_FAIL, EXIT_OK, EXIT_USAGE, done, fail, print_table
from edge.config.profile import Point, Profile, load_profile
from edge.config.search import ProfilePath
from edge.config.site import Device, RtuBus, TcpBus
from edge.devices.codec import Value, engineering, plausible
from edge.devices.drivers import depth_mm, read_points
from floodgate.errors import BusError, LinkDown, ModbusException, NoResponse

BAUDS = (9600, 19200, 4800, 38400, 115200, 57600, 2400, 1200)


def bus_for(port: str, baud: int = 9600, parity: str = "N", timeout_s: float = 0.2) -> RtuBus | TcpBus:
    if port.startswith("tcp://"):
        u = urlsplit(port)
        return TcpBus(
            id="cli", host=u.hostname or "127.0.0.1", port=u.port or 502, timeout_s=timeout_s, retries=0
        )
    return RtuBus(id="cli", port=port, baud=baud, parity=parity, timeout_s=timeout_s, retries=0)  # type: ignore[arg-type]


def explain_open_error(port: str, exc: BaseException) -> str:
    text = str(exc)
    cause = exc.__cause__ or exc
    code = getattr(cause, "errno", None)
    if code == errno.EACCES or "Permission denied" in text:
        return (
            f"no permission on {port}: add yourself to the dialout group "
            "(sudo usermod -aG dialout $USER) and log in again"
        )
    if code == errno.EBUSY or "busy" in text.lower() or "lock" in text.lower():
        return f"{port} is busy: stop the agent (systemctl stop floodgate-edge-…) or whatever else uses it"
    if code == errno.ENOENT or "No such file" in text:
        return f"{port} does not exist: check the adapter is plugged in (ls /dev/ttyUSB* /dev/serial/by-id/)"
    return f"cannot open {port}: {text}"


def bus_failure(port: str, unit: int, exc: BusError, what: str, hint: str) -> int:
    """One line for a failed exchange with one device, saying what to try."""
    if isinstance(exc, LinkDown):
        return fail(explain_open_error(port, exc))
    if isinstance(exc, ModbusException):
        return fail(f"unit {unit} refused {what} (Modbus exception {exc.code}): {hint}")
    return fail(f"unit {unit} did not answer on {port}: check its address and baud (try 'scan')")


def check_port(bus: RtuBus | TcpBus) -> None:
    """Say why a serial port cannot be opened before pymodbus only says that it cannot."""
    if isinstance(bus, RtuBus) and "://" not in bus.port:
        path = Path(bus.port)
        if not path.exists():
            raise LinkDown(f"{bus.port}: No such file") from FileNotFoundError(errno.ENOENT, bus.port)
        if not os.access(path, os.R_OK | os.W_OK):
            raise LinkDown(f"{bus.port}: Permission denied") from PermissionError(errno.EACCES, bus.port)
        # pyserial opens ports with an exclusive flock; so does the agent's link.
        # Ask for it ourselves first, to say "busy" rather than "cannot open".
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LinkDown(f"{bus.port}: busy (locked by another program)") from None
        finally:
            os.close(fd)


async def open_link(bus: RtuBus | TcpBus) -> PymodbusLink:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # we say it in one line instead
    check_port(bus)
    link = PymodbusLink(bus)
    await link.connect()
    return link


def profiles(search: ProfilePath) -> dict[str, Profile]:
    """Every profile on the search path that loads; a broken one is reported on stderr and skipped."""
    good, broken = search.load_all()
    for issue in broken:
        print(f"warning: skipped a broken profile: {issue}", file=sys.stderr)
    return good


def pick_profile(name: str, search: ProfilePath) -> Profile | None:
    """``--profile``: a model on the search path, or the path of a profile file.

    None (after saying why) when there is no such profile; a broken one raises
    ConfigError with its file, line and key.
    """
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        path = Path(name)
        if not path.is_file():
            fail(f"no profile file {path}")
            return None
        return load_profile(path)
    found = search.find(name)
    if found is None:
        close = difflib.get_close_matches(name, list(search.files()), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fail(f"no profile {name!r} in {search.describe()}; {hint}known: {', '.join(search.files())}")
        return None
    return load_profile(found)


def parse_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if not (1 <= a <= b <= 247):
            raise ValueError(f"unit ids are 1 to 247, not {part!r}")
        ids.extend(range(a, b + 1))
    return ids


@dataclass
class Found:
    unit: int
    baud: int | None
    parity: str | None
    answer: str
    matches: list[str]


async def probe(io: DeviceIO) -> str | None:
    """'registers' when the unit answers a read, 'exception N' when it answers with an error, else None."""
    try:
        await io.read("holding", 0, 1)
        return "registers"
    except ModbusException as exc:
        return f"exception {exc.code}"
    except NoResponse:
        return None


async def match_profiles(io: DeviceIO, candidates: dict[str, Profile]) -> list[str]:
    """Profiles whose every point reads, with values inside their plausible ranges."""
    hits = []
    for model, prof in candidates.items():
        try:
            values = await read_points(io, prof, list(prof.points))
        except BusError:
            continue
        # Plausible as the agent judges it: the scaled value in the point's unit.
        ok = all(plausible(p, engineering(prof, name, values)) for name, p in prof.points.items())
        for key, limit in prof.identify.items():
            point = key.removesuffix("_max")
            v = values.get(point)
            if isinstance(v, int | float) and v > limit:
                ok = False
        if ok:
            hits.append(model)
    return hits


def progress(text: str, done: int, total: int) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r{text} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} ")
    sys.stderr.flush()


async def scan(
    port: str,
    bauds: list[int],
    parities: list[str],
    ids: list[int],
    timeout_s: float,
    match: bool,
    search: ProfilePath | None = None,
) -> list[Found]:
    found: dict[int, Found] = {}
    tcp = port.startswith("tcp://")
    settings = [(None, None)] if tcp else [(b, p) for b in bauds for p in parities]
    candidates = profiles(search or ProfilePath.of()) if match else {}
    opened = 0
    last_error: LinkDown | None = None
    for baud, parity in settings:
        bus = bus_for(port, baud or 9600, parity or "N", timeout_s)
        try:
            link = await open_link(bus)
        except LinkDown as exc:  # e.g. a USB adapter (or a pty) that cannot do this parity
            last_error = exc
            continue
        opened += 1
        try:
            todo = [u for u in ids if u not in found]  # an id that answered is not asked again
            label = "tcp" if tcp else f"{baud} 8{parity}1"
            for n, unit in enumerate(todo, 1):
                progress(f"scanning {label}", n, len(todo))
                io = DeviceIO(link, unit, Counters())
                answer = await probe(io)
                if answer is not None:
                    hits = await match_profiles(io, candidates) if match else []
                    found[unit] = Found(unit, baud, parity, answer, hits)
        finally:
            await link.close()
        if len(found) == len(ids):
            break
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    if opened == 0 and last_error is not None:
        raise last_error
    return [found[u] for u in sorted(found)]


def run_scan(
    port: str,
    baud: str,
    parity: str,
    ids: str,
    timeout_s: float,
    as_json: bool,
    profile_dirs: Sequence[Path] = (),
) -> int:
    try:
        unit_ids = parse_ids(ids)
        bauds = list(BAUDS) if baud == "auto" else [int(b) for b in baud.split(",")]
        parities = ["N", "E", "O"] if parity == "auto" else parity.split(",")
        if any(b not in BAUDS for b in bauds) or any(p not in ("N", "E", "O") for p in parities):
            raise ValueError(f"baud is auto or some of {', '.join(map(str, BAUDS))}; parity auto or N,E,O")
    except ValueError as exc:
        return fail(str(exc), EXIT_USAGE)
    try:
        search = ProfilePath.of(profile_dirs)
        found = asyncio.run(scan(port, bauds, parities, unit_ids, timeout_s, match=True, search=search))
    except LinkDown as exc:
        return fail(explain_open_error(port, exc))
    if as_json:
        print(json.dumps([vars(f) for f in found]))
    elif not found:
        tried = (
            "over TCP"
            if port.startswith("tcp://")
            else f"at {', '.join(map(str, bauds))} baud, parity {'/'.join(parities)}"
        )
        return fail(
            f"no device answered on {port} {tried}: check wiring (A/B swapped?), power and termination"
        )
    else:
        rows = [("unit", "baud", "parity", "answers with", "profiles that fit")]
        for f in found:
            rows.append(
                (str(f.unit), str(f.baud or "-"), f.parity or "-", f.answer, ", ".join(f.matches) or "?")
            )
        print_table(rows)
    return EXIT_OK if found else EXIT_FAIL


def tidy(point: Point, value: Value) -> Value:
    """A value as a person reads it: no float noise (a float32 has about 7 digits)."""
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    return float(f"{value:.{7 if point.type == 'float32' else 10}g}")


async def points_in_units(
    io: DeviceIO, prof: Profile, dev: Device | None = None, registers: bool = False
) -> dict[str, dict[str, Any]]:
    """Every point of a profile through it (scale, offset, decimals, unit), as the agent reads it.

    Status points say what their code means; a value outside its plausible range
    says so; with the site's device (``dev``) a level sensor's depth on the road
    follows (distance mode, mount height, zero offset). ``registers`` adds the words read.
    """
    raws = await read_points(io, prof, list(prof.points))
    status = prof.status_points()
    out: dict[str, dict[str, Any]] = {}
    for name, p in prof.points.items():
        value = engineering(prof, name, raws)
        entry: dict[str, Any] = {"value": tidy(p, value), "unit": p.unit}
        if name in status:
            entry["status"] = status[name].fault_reason(raws[name]) or "ok"
        if not plausible(p, value):
            entry["plausible"] = False
            if p.range is not None:
                entry["range"] = list(p.range)
        if registers:
            words = await io.read(p.table, prof.protocol_address(p), p.width)
            entry["registers"] = [int(w) for w in words]
        out[name] = entry
    if dev is not None and prof.kind == "level":
        level = engineering(prof, "level", raws)
        depth: dict[str, Any] = {"value": round(depth_mm(prof, dev, float(level)), 1), "unit": "mm"}
        how = "level"
        if prof.level_mode == "distance":
            how = f"mount_height_mm {dev.mount_height_mm or 0:g} - level"
        if dev.zero_offset_mm:
            how += f" - zero_offset_mm {dev.zero_offset_mm:g}"
        depth["from"] = how
        out["depth"] = depth
    return out


async def read_device(
    port: str,
    unit: int,
    prof: Profile | None,
    raw: tuple[str, int, int] | None,
    baud: int,
    parity: str,
    dev: Device | None = None,
    registers: bool = False,
) -> dict[str, Any]:
    link = await open_link(bus_for(port, baud, parity, timeout_s=0.5))
    try:
        io = DeviceIO(link, unit, Counters())
        if raw is not None:
            table, address, count = raw
            words = await io.read(table, address, count)  # type: ignore[arg-type]
            return {f"{table}[{address + i}]": w for i, w in enumerate(words)}
        assert prof is not None
        return await points_in_units(io, prof, dev, registers)
    finally:
        await link.close()


def _note(v: dict[str, Any]) -> str:
    if "status" in v:
        return str(v["status"])
    if v.get("plausible") is False:
        return (
            f"outside the plausible range {v['range'][0]:g} to {v['range'][1]:g}" if "range" in v else "bad"
        )
    return str(v.get("from", ""))


def show(values: dict[str, Any]) -> None:
    registers = any(isinstance(v, dict) and "registers" in v for v in values.values())
    head = ("point", "value", "unit", "note") + (("registers",) if registers else ())
    rows: list[tuple[str, ...]] = [head]
    for name, got in values.items():
        v = got if isinstance(got, dict) else {"value": got, "unit": None}  # a raw register read
        value = v["value"]
        text = f"{value:g}" if isinstance(value, float) else str(value)
        row: tuple[str, ...] = (name, text, v["unit"] or "", _note(v))
        if registers:
            row += (" ".join(f"{w:#06x}" for w in v.get("registers", [])),)
        rows.append(row)
    print_table(rows)


def _site_device(args: Any) -> tuple[Device, Profile, RtuBus | TcpBus] | str:
    """The device ``--device`` of the site ``--config``, with its profile and bus (or what is wrong)."""
    from edge.config.site import load_site  # noqa: PLC0415

    site = load_site(args.config, args.profile_dirs or (), check_files=False)  # reads need no secrets
    if args.device is None:
        return "with --config, name the device: --device ID"
    dev = next((d for d in site.config.devices if d.id == args.device), None)
    if dev is None:
        known = ", ".join(d.id for d in site.config.devices)
        return f"no device {args.device!r} in {args.config}; devices: {known}"
    bus = next(b for b in site.config.buses if b.id == dev.bus)
    return dev, site.profiles[dev.profile], bus


def run_read(args: Any, watch: bool) -> int:
    prof = None
    dev: Device | None = None
    port, unit, baud, parity = args.port, args.unit, args.baud or 9600, args.parity or "N"
    if args.config is not None:
        found_dev = _site_device(args)
        if isinstance(found_dev, str):
            return fail(found_dev, EXIT_USAGE)
        dev, prof, bus = found_dev
        unit = unit or dev.unit
        if isinstance(bus, RtuBus):
            port, baud, parity = port or bus.port, args.baud or bus.baud, args.parity or bus.parity
        else:
            port = port or f"tcp://{bus.host}:{bus.port}"
    if args.profile and prof is None:
        prof = pick_profile(args.profile, ProfilePath.of(args.profile_dirs))
        if prof is None:
            return EXIT_USAGE
    if port is None or unit is None:
        return fail("give --port and --unit, or --config SITE --device ID", EXIT_USAGE)
    raw = (args.table, args.address, args.count) if args.address is not None else None
    if prof is None and raw is None:
        return fail(
            "give --profile NAME (or --config SITE --device ID), or --address A [--count N] [--table …]",
            EXIT_USAGE,
        )

    async def once() -> dict[str, Any]:
        return await read_device(port, unit, prof, raw, baud, parity, dev, args.raw)

    async def loop() -> None:
        while True:
            try:
                values = await once()
            except BusError as exc:
                values = {"error": f"{exc}"}
            sys.stdout.write("\x1b[H\x1b[2J")  # clear the screen, cursor home
            print(f"unit {unit} on {port}, every {args.interval:g} s (Ctrl-C to stop)\n")
            show(values)
            sys.stdout.flush()
            await asyncio.sleep(args.interval)

    try:
        if watch:
            try:
                asyncio.run(loop())
            except KeyboardInterrupt:
                return EXIT_OK
            return EXIT_OK
        values = asyncio.run(once())
    except BusError as exc:
        return bus_failure(port, unit, exc, "the read", "check the register address")
    if args.json:
        print(json.dumps(values, ensure_ascii=False))
    else:
        show(values)
    return EXIT_OK


def run_write(args: Any) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            return fail("writing a register needs confirmation: add --yes when not at a terminal", EXIT_USAGE)
        where = f"holding register {args.address} of unit {args.unit} on {args.port}"
        answer = input(f"write {args.value} to {where}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing written")
            return EXIT_OK

    async def write() -> int:
        link = await open_link(bus_for(args.port, args.baud, args.parity, timeout_s=0.5))
        try:
            io = DeviceIO(link, args.unit, Counters())
            await io.write_register(args.address, args.value)
            [back] = await io.read("holding", args.address, 1)
            return back
        finally:
            await link.close()

    try:
        back = asyncio.run(write())
    except BusError as exc:
        return bus_failure(args.port, args.unit, exc, "the write", "the register may be read-only")
    if back != args.value:
        return fail(f"wrote {args.value} but read back {back}: the device did not keep it")
    return done(
        args.json,
        f"unit {args.unit} holding[{args.address}] = {back} (read back)",
        unit=args.unit,
        value=back,
    )


async def _set_config(
    port: str, unit: int, prof: Profile, which: str, value: int, baud: int, parity: str
) -> None:
    cr = prof.config_registers[which]  # type: ignore[index]
    link = await open_link(bus_for(port, baud, parity, timeout_s=0.5))
    try:
        io = DeviceIO(link, unit, Counters())
        await io.write_register(prof.protocol_address(cr), value)
        if cr.save is not None:
            await io.write_register(cr.save[0] - prof.link.address_base, cr.save[1])
    finally:
        await link.close()


async def _answers(port: str, unit: int, baud: int, parity: str) -> bool:
    link = await open_link(bus_for(port, baud, parity, timeout_s=0.3))
    try:
        return await probe(DeviceIO(link, unit, Counters())) is not None
    finally:
        await link.close()


def _confirm(question: str, yes: bool) -> bool | None:
    """True to go on, False when the person said no, None when nobody can be asked."""
    if yes:
        return True
    if not sys.stdin.isatty():
        return None
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def run_set(args: Any) -> int:
    prof = pick_profile(args.profile, ProfilePath.of(args.profile_dirs))
    if prof is None:
        return EXIT_USAGE
    which = "unit_id" if args.cmd == "set-id" else "baud"
    cr = prof.config_registers.get(which)  # type: ignore[call-overload]
    if cr is None:
        how = "its DIP switches" if which == "unit_id" else "its DIP switches or vendor tool"
        return fail(f"profile {prof.model} has no {which} register: set it with {how}", EXIT_USAGE)
    try:
        if which == "unit_id":
            new = int(args.new_id)
            if not 1 <= new <= 247:
                return fail("a Modbus address is 1 to 247", EXIT_USAGE)
            if asyncio.run(_answers(args.port, new, args.baud, args.parity)):
                return fail(f"another device already answers at {new}: pick a free address", EXIT_USAGE)
            value, check_baud, check_unit = new, args.baud, new
            what = f"move unit {args.unit} to address {new}"
        else:
            new = int(args.new_baud)
            codes = cr.codes or {}
            if new not in codes:
                return fail(f"{prof.model} knows bauds {', '.join(map(str, sorted(codes)))}", EXIT_USAGE)
            value, check_baud, check_unit = codes[new], new, args.unit
            what = f"switch unit {args.unit} to {new} baud"
        ok = _confirm(f"{what} on {args.port}?", args.yes)
        if ok is None:
            return fail(
                "changing a device's setting needs confirmation: add --yes when not at a terminal", EXIT_USAGE
            )
        if not ok:
            print("nothing changed")
            return EXIT_OK
        asyncio.run(_set_config(args.port, args.unit, prof, which, value, args.baud, args.parity))
        if not asyncio.run(_answers(args.port, check_unit, check_baud, args.parity)):
            return fail(f"wrote the new setting, but nothing answers at unit {check_unit}, {check_baud} baud")
        if which == "unit_id" and asyncio.run(_answers(args.port, args.unit, args.baud, args.parity)):
            return fail(f"unit {args.unit} still answers at its old address: the device did not take it")
    except BusError as exc:
        return bus_failure(args.port, args.unit, exc, "the change", "the profile may not fit this device")
    return done(
        args.json,
        f"done: {what}; it answers at unit {check_unit}, {check_baud} baud",
        unit=check_unit,
        baud=check_baud,
    )
