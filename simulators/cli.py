"""``floodgate sim``: run simulated Modbus devices.

    floodgate sim device --profile generic-rs485-level:1 --profile led-board-vms:10 --rtu
    floodgate sim device --profile radar-level-lx80:1 --tcp 1502 --scenario flash-flood
    floodgate sim site firmware-config/sites/example-kexiang-tunnel.yaml --out /tmp/site.yaml

Each prints where to connect (a pty path or host:port) and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Literal

from edge.config.profile import load_profile
from edge.config.search import shipped_profiles
from edge.config.site import load_site
from floodgate.errors import ConfigError
from simulators.devices import (
    FAULTS,
    DepthSource,
    SimDevice,
    World,
    make_sim,
)
from simulators.pty import PtyPair
from simulators.scenarios import SCENARIOS, Scenario
from simulators.site import SimSite
from simulators.slave import SimBus, serve_rtu_fd, serve_tcp


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="floodgate sim", description="Simulated field devices.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="command")
    dev = sub.add_parser("device", help="one bus of simulated devices from profiles")
    dev.add_argument(
        "--profile",
        action="append",
        required=True,
        metavar="NAME:UNIT",
        help="a device: profile name and unit id (repeat for several on one bus)",
    )
    where = dev.add_mutually_exclusive_group(required=True)
    where.add_argument("--rtu", action="store_true", help="RTU over a new socat pty pair")
    where.add_argument("--tcp", type=int, metavar="PORT", help="Modbus TCP on 127.0.0.1:PORT (0: any)")
    where.add_argument(
        "--rtu-over-tcp",
        type=int,
        metavar="PORT",
        help="RTU frames over TCP (pyserial socket:// URL), e.g. to test 8E1 buses",
    )
    dev.add_argument("--baud", type=int, default=9600, help="emulated wire speed (0: no wire delay)")
    dev.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="UNIT:FAULT",
        help=f"start with a fault: {', '.join(FAULTS)}, or a status reason of the profile (e.g. no_echo)",
    )
    site = sub.add_parser("site", help="every device of a site config")
    site.add_argument("config", type=Path)
    site.add_argument("--out", type=Path, required=True, help="write the config the agent should use here")
    for sp in (dev, site):
        sp.add_argument("--scenario", default="storm", choices=sorted(SCENARIOS))
        sp.add_argument("--speed", type=float, default=1.0, help="scenario seconds per real second")
        sp.add_argument("--noise-mm", type=float, default=2.0, help="sensor noise (standard deviation)")
        sp.add_argument("--spike-chance", type=float, default=0.0, help="chance of a spike per read (0-1)")
        sp.add_argument("--profiles-dir", type=Path, default=shipped_profiles())
    return p


def _scenario(args: argparse.Namespace) -> Scenario:
    return Scenario.named(args.scenario, noise_mm=args.noise_mm, spike_chance=args.spike_chance)


def _device(spec: str, profiles: Path, source: DepthSource) -> SimDevice:
    name, _, unit = spec.partition(":")
    prof = load_profile(profiles / f"{name}.yaml")
    u = int(unit or "1")
    return make_sim(prof, u, World(source))


async def _forever() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _run_device(args: argparse.Namespace) -> int:
    source = DepthSource(_scenario(args), speed=args.speed)
    devices = [_device(s, args.profiles_dir, source) for s in args.profile]
    for f in args.fault:
        unit, _, fault = f.partition(":")
        next(d for d in devices if d.unit == int(unit)).inject(fault)
    char = 0.0 if args.baud <= 0 else 10 / args.baud
    bus = SimBus([d.slave for d in devices], char_time_s=char)
    tasks: list[asyncio.Task[None]] = []
    pair: PtyPair | None = None
    server: asyncio.Server | None = None
    if args.rtu:
        pair = await PtyPair().start()  # in a folder of its own, removed again on exit
        tasks.append(asyncio.create_task(serve_rtu_fd(bus, pair.slave_path)))
        print(f"RTU slaves on {pair.master_path}", flush=True)
    else:
        framing: Literal["tcp", "rtu"] = "tcp" if args.tcp is not None else "rtu"
        server = await serve_tcp(
            bus,
            "127.0.0.1",
            args.tcp if args.tcp is not None else args.rtu_over_tcp,
            framing=framing,
        )
        port = server.sockets[0].getsockname()[1]
        url = f"127.0.0.1:{port}" if framing == "tcp" else f"socket://127.0.0.1:{port}"
        print(f"{'Modbus TCP' if framing == 'tcp' else 'RTU over TCP'} slaves on {url}", flush=True)
    for d in devices:
        print(f"  unit {d.unit}: {d.profile.model} ({d.profile.kind})", flush=True)
    try:
        await _forever()
    finally:
        for t in tasks:
            t.cancel()
        if server is not None:
            server.close()
        if pair is not None:
            await pair.stop()
    return 0


async def _run_site(args: argparse.Namespace) -> int:
    site = load_site(args.config, check_files=False)  # the simulators need no secrets
    sim = await SimSite(site, _scenario(args), speed=args.speed).start()
    out = sim.write_config(args.out)
    for bus_id, ep in sim.endpoints.items():
        print(f"bus {bus_id}: {ep}", flush=True)
    print(f"agent config written to {out}", flush=True)
    try:
        await _forever()
    finally:
        await sim.stop()
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        coro = _run_device(args) if args.cmd == "device" else _run_site(args)
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(coro)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 3
    return 0
