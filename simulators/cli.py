"""``floodgate sim``: run simulated Modbus devices.

    floodgate sim device --profile generic-rs485-level:1 --profile led-board-vms:10 --rtu
    floodgate sim device --profile radar-level-lx80:1 --tcp 1502 --scenario flash-flood
    floodgate sim site firmware-config/sites/example-kexiang-tunnel.yaml --out /tmp/site.yaml
    floodgate sim site firmware-config/sites/example-kexiang-tunnel.yaml --out /tmp/site.yaml \
        --swmm tunnel-a:chicago-p10-60min --speed 10
    floodgate sim fleet --broker mqtt://127.0.0.1:1883 --nodes 10000 --registry-out registry.yaml

``device`` and ``site`` print where to connect (a pty path or host:port) and
run until Ctrl-C. ``fleet`` runs thousands of virtual nodes that speak the
wire contract to the brokers directly (``simulators.vfleet``), printing its
counts every ``--stats-every`` seconds, until Ctrl-C or ``--duration``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Literal

from edge.config.profile import load_profile
from edge.config.search import shipped_profiles
from edge.config.site import load_site
from floodgate.errors import ConfigError
from simulators.city import registry_yaml
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
from simulators.vfleet import Fleet, FleetArgumentError, FleetOptions


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
    _fleet_parser(sub)
    for sp in (dev, site):
        sp.add_argument("--scenario", default="storm", choices=sorted(SCENARIOS))
        sp.add_argument(
            "--swmm",
            metavar="CATCHMENT:STORM",
            help="play a design storm through EPA SWMM (extra `swmm`) instead of --scenario, "
            "e.g. tunnel-a:chicago-p10-60min (10 dry minutes before it, 2 h after)",
        )
        sp.add_argument("--speed", type=float, default=1.0, help="scenario seconds per real second")
        sp.add_argument("--noise-mm", type=float, default=2.0, help="sensor noise (standard deviation)")
        sp.add_argument("--spike-chance", type=float, default=0.0, help="chance of a spike per read (0-1)")
        sp.add_argument("--profiles-dir", type=Path, default=shipped_profiles())
    return p


def _span(text: str) -> tuple[float, float]:
    """``A-B`` seconds (or ``A``): a uniform range."""
    lo, _, hi = text.partition("-")
    try:
        span = (float(lo), float(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not seconds or a range of seconds like 20-60"
        ) from None
    if not 0 < span[0] <= span[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: a range of seconds more than 0, low to high")
    return span


def _fleet_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = sub.add_parser("fleet", help="thousands of virtual nodes speaking the wire contract over MQTT")
    f.add_argument(
        "--broker",
        action="append",
        required=True,
        metavar="URL",
        help="mqtt://host:port (repeat: failover, and the nodes spread over them)",
    )
    f.add_argument("--nodes", type=int, default=100, help="how many virtual sites (default 100)")
    f.add_argument("--seed", type=int, default=0, help="the city, its storms and who flaps come from it")
    f.add_argument("--speed", type=float, default=1.0, help="storm seconds per real second")
    f.add_argument("--telemetry-s", type=float, default=5.0, help="telemetry period of each node")
    f.add_argument("--heartbeat-s", type=float, default=60.0, help="heartbeat period of each node")
    f.add_argument("--storms", type=int, default=3, help="storm cells crossing the city")
    f.add_argument("--storm-every-s", type=float, default=1800.0, help="storm seconds between two cells")
    f.add_argument("--flapping", type=float, default=0.0, help="fraction of nodes that drop and come back")
    f.add_argument("--flap-up-s", type=_span, default=(20.0, 60.0), help="connected this long (range)")
    f.add_argument("--flap-down-s", type=_span, default=(5.0, 20.0), help="away this long (range)")
    f.add_argument("--silent", type=float, default=0.0, help="fraction of nodes that fall silent after birth")
    f.add_argument(
        "--per-connection",
        type=int,
        default=1,
        help="steady nodes per MQTT connection (>1: one Will per connection, the first node's)",
    )
    f.add_argument(
        "--sub-qos",
        type=int,
        default=1,
        help="QoS of the nodes' subscriptions (ack, host state); 0 spares a NATS cluster a consumer each",
    )
    f.add_argument("--boot", type=int, help="every node's boot (default: seconds since the epoch)")
    f.add_argument("--connect-rate", type=float, default=500.0, help="new connections per second at start")
    f.add_argument(
        "--handshakes",
        type=int,
        default=100,
        help="connections between CONNECT and SUBACK at once (a slow broker sets the pace, not timeouts)",
    )
    f.add_argument("--confirm-timeout-s", type=float, default=60.0, help="resend unconfirmed after this")
    f.add_argument("--prefix", default="gz", help="node id prefix (gz-00001, ...)")
    f.add_argument("--username")
    f.add_argument("--password-file", type=Path, help="the brokers' password, in a file")
    f.add_argument("--registry-out", type=Path, help="write the collector's site registry here")
    f.add_argument("--ledger-out", type=Path, help="at the end, write what was acknowledged (JSON) here")
    f.add_argument("--duration", type=float, help="stop after this many seconds")
    f.add_argument("--stats-every", type=float, default=10.0, help="print counts every this many seconds")


async def _run_fleet(args: argparse.Namespace) -> int:
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise FleetArgumentError(f"--password-file {args.password_file}: {exc.strerror}") from None
    opts = FleetOptions(
        urls=tuple(args.broker),
        nodes=args.nodes,
        seed=args.seed,
        speed=args.speed,
        telemetry_s=args.telemetry_s,
        heartbeat_s=args.heartbeat_s,
        storms=args.storms,
        storm_every_s=args.storm_every_s,
        flapping=args.flapping,
        silent=args.silent,
        flap_up_s=args.flap_up_s,
        flap_down_s=args.flap_down_s,
        per_connection=args.per_connection,
        sub_qos=args.sub_qos,
        boot=args.boot,
        connect_rate=args.connect_rate,
        handshakes=args.handshakes,
        confirm_timeout_s=args.confirm_timeout_s,
        prefix=args.prefix,
        username=args.username,
        password=password,
    )
    if args.stats_every <= 0 or (args.duration is not None and args.duration <= 0):
        raise FleetArgumentError("--stats-every and --duration must be more than 0")
    fleet = Fleet(opts)
    if args.registry_out is not None:
        args.registry_out.write_text(registry_yaml(fleet.sites), encoding="utf-8")
        print(f"site registry for {len(fleet.sites)} sites written to {args.registry_out}", flush=True)
    print(
        f"{len(fleet.nodes)} nodes on {len(fleet.links)} connections to {', '.join(opts.urls)};"
        f" {len(fleet.cells)} storm cells; boot {fleet.nodes[0].boot}",
        flush=True,
    )
    await fleet.start()
    loop = asyncio.get_running_loop()
    end = None if args.duration is None else loop.time() + args.duration
    stopper = asyncio.ensure_future(_forever())
    try:
        while not stopper.done() and (end is None or loop.time() < end):
            wait = args.stats_every if end is None else min(args.stats_every, end - loop.time())
            await asyncio.wait({stopper}, timeout=max(0.0, wait))
            s = fleet.stats()
            print(
                f"sent {s.sent} pubacked {s.pubacked} confirmed {s.confirmed} resent {s.resent}"
                f" awaiting {s.awaiting} unsent {s.pending} alerts {s.alerts}"
                f" connected {s.connected}/{s.links} flaps {s.flaps}",
                flush=True,
            )
    finally:
        stopper.cancel()
        await fleet.stop()
        if args.ledger_out is not None:
            args.ledger_out.write_text(json.dumps(fleet.ledger()), encoding="utf-8")
            print(f"ledger written to {args.ledger_out}", flush=True)
    return 0


def _scenario(args: argparse.Namespace) -> Scenario:
    if args.swmm:
        return swmm_scenario(args.swmm, noise_mm=args.noise_mm)
    return Scenario.named(args.scenario, noise_mm=args.noise_mm, spike_chance=args.spike_chance)


def swmm_scenario(spec: str, noise_mm: float = 2.0) -> Scenario:
    """``CATCHMENT:STORM`` run through SWMM (in a child process) as a site scenario; a ValueError
    naming the known ones for an unknown name."""
    from simulators.storms import storm_library  # noqa: PLC0415 (SWMM only when asked for)
    from simulators.swmm import CATCHMENTS, scenario_from, simulate_isolated  # noqa: PLC0415

    name, _, storm_name = spec.partition(":")
    storms = {s.name: s for s in storm_library()}
    if name not in CATCHMENTS:
        raise ValueError(f"--swmm: unknown catchment {name!r}; known: {', '.join(CATCHMENTS)}")
    if storm_name not in storms:
        raise ValueError(f"--swmm: unknown storm {storm_name!r}; known: {', '.join(storms)}")
    rain = [0.0] * 10 + storms[storm_name].mm_h() + [0.0] * 120
    return scenario_from(simulate_isolated(CATCHMENTS[name], rain), noise_mm=noise_mm)


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
    source = DepthSource(args.played, speed=args.speed)
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
    sim = await SimSite(site, args.played, speed=args.speed).start()
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
    if args.cmd in ("device", "site"):
        try:
            args.played = _scenario(args)  # before the loop: a SWMM run blocks
        except ValueError as exc:
            print(f"floodgate sim {args.cmd}: {exc}", file=sys.stderr)
            return 2
    try:
        runs = {"device": _run_device, "site": _run_site, "fleet": _run_fleet}
        coro = runs[args.cmd](args)
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(coro)
    except FleetArgumentError as exc:
        print(f"floodgate sim fleet: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 3
    return 0
