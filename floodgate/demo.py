"""floodgate demo: the whole system on one machine, in a storm that keeps coming.

Starts an embedded MQTT broker (amqtt) unless --broker is given, the
collector on SQLite with its API and dashboard, and --sites simulated tunnels
and underpasses of Huangpu district, each with its own edge agent, sensors,
board and gate. Storms loop and are staggered across the sites: at any time
after the first minute some sites are in danger with their gates closed,
others only warn, the rest stay dry. Tickets open, are dispatched to the
street's drainage station, and escalate when nobody accepts them in time. You
play the dispatcher and the drainage station of the first sites (the unit
login); the other stations are simulated crews, some quick, some often late,
so the measures rank them. It prints the dashboard's address, the logins
(admin, dispatcher, viewer and a member of a drainage station), and what
happens. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

log = logging.getLogger("floodgate.demo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def embedded_broker(port: int | None = None, slow: SlowSubscriber | None = None) -> AsyncIterator[str]:
    """amqtt in this process on a loopback port (a free one by default); yields its URL.

    amqtt keeps its sessions in memory only: a restart is a broker without
    sessions, which the end-to-end acknowledgement makes good (wire contract).
    """
    from amqtt.broker import Broker  # noqa: PLC0415 - only the demo needs it

    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet = slow or SlowSubscriber()
    logging.getLogger("amqtt.broker").addFilter(quiet)
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    loop.set_exception_handler(partial(_quiet_puback_timeouts, quiet, before))
    port = port or free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        await broker.shutdown()
        loop.set_exception_handler(before)
        logging.getLogger("amqtt.broker").removeFilter(quiet)
        if quiet.count:
            log.info(
                "embedded broker: %d deliveries timed out waiting for a PUBACK"
                " (the edges sent again what the collector had not confirmed)",
                quiet.count,
            )


def is_puback_timeout(exc: BaseException | None) -> bool:
    """amqtt's error when a subscriber does not acknowledge a QoS 1 delivery within 5 s."""
    return isinstance(exc, TimeoutError) and "waiting for PUBACK" in str(exc)


class SlowSubscriber(logging.Filter):
    """Counts amqtt's PUBACK timeouts instead of printing a traceback for each.

    On a loaded machine a subscriber (the collector) may take over 5 s to acknowledge a
    delivery; amqtt then gives that delivery up and logs the failure with its traceback
    ("Task failed and will be skipped"), or leaves it to the loop's handler ("Task exception
    was never retrieved"). Nothing is lost for it: the edge keeps each message until the
    collector confirms it and sends it again (wire contract, "Resends").
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and is_puback_timeout(record.exc_info[1]):
            self.count += 1
            return False
        return True


def _quiet_puback_timeouts(
    quiet: SlowSubscriber,
    before: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
    loop: asyncio.AbstractEventLoop,
    context: dict[str, Any],
) -> None:
    if is_puback_timeout(context.get("exception")):
        quiet.count += 1
    elif before is not None:
        before(loop, context)
    else:
        loop.default_exception_handler(context)


async def _until(cond: Callable[[], bool], limit_s: float) -> None:
    """Wait until ``cond`` holds, at most ``limit_s`` (then go on regardless)."""
    deadline = time.monotonic() + limit_s
    while not cond() and time.monotonic() < deadline:  # noqa: ASYNC110 (the uplink is made inside the run)
        await asyncio.sleep(0.02)


def _subscribed(agent: Any) -> bool:
    return agent.uplink is not None and bool(agent.uplink.subscribed)


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def stamp(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"[{s // 60:02d}:{s % 60:02d}]"


class PortTaken(Exception):
    """The dashboard's port is in use: said in one line, before anything starts."""


def check_port(host: str, port: int) -> None:
    """Bind the API's address as its server will (address reuse on), and let go at once."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PortTaken(
                f"cannot serve the dashboard on {host}:{port} ({exc.strerror or exc}); "
                "stop what uses it or pick another port with --port"
            ) from None


# The demo's unit member: one of the drainage station of the first site (hp-01's street).
UNIT_USER = "unit"


async def _demo(args: argparse.Namespace) -> int:
    from cloud.collector import Collector  # noqa: PLC0415 - the demo loads everything, only when run
    from cloud.config import Api, CloudConfig, FloodSeason, ForecastConfig  # noqa: PLC0415
    from cloud.db import rainfall as rainfall_db  # noqa: PLC0415
    from cloud.events import TicketsChanged  # noqa: PLC0415
    from cloud.tickets.service import late_by  # noqa: PLC0415
    from edge.agent import Agent  # noqa: PLC0415
    from edge.config.site import load_site  # noqa: PLC0415
    from floodgate.broker import BrokerSettings  # noqa: PLC0415
    from floodgate.wire import node_command_key  # noqa: PLC0415
    from simulators import demo_weather  # noqa: PLC0415
    from simulators.crews import Crews  # noqa: PLC0415
    from simulators.fleet import fleet, registry_yaml, site_yaml  # noqa: PLC0415
    from simulators.site import SimSite  # noqa: PLC0415

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="floodgate-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    sites = fleet(args.sites)
    master = secrets.token_hex(16).encode()
    (workdir / "master.key").write_bytes(master)
    (workdir / "registry.yaml").write_text(
        registry_yaml(sites, accept_min=args.deadline_min), encoding="utf-8"
    )
    names = {s.node: s.name for s in sites}
    # The sites the fast storms keep dry are under a storm on the real clock, with a simulated
    # past to fit their forecast models on and a rainfall forecast of it (simulators.demo_weather).
    weather = {w.node: w for w in demo_weather.weather_for(sites)}
    tasks: list[asyncio.Task[Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        url = args.broker or await stack.enter_async_context(embedded_broker())
        config = CloudConfig(
            database=f"sqlite:///{workdir / 'floodgate.db'}",
            client_id=f"floodgate-demo-{secrets.token_hex(3)}",
            registry=str(workdir / "registry.yaml"),
            command_key_file=str(workdir / "master.key"),
            api=Api(host=args.host, port=args.port),
            # The storm is today, whatever the month: the measures count all year.
            flood_season=FloodSeason(start="01-01", end="12-31"),
            # The forecast band and the sites at risk move every minute, not every five. Its sites
            # have no rain gauge to confirm the storm and its nowcast rains at once: forecast
            # alerts on the forecast alone, as it comes in, at the demo's own probability (0.5:
            # the site its storm spares stays without one; docs/rainfall-forecast.md).
            forecast=ForecastConfig(every_s=60, probability=0.5, confirm_rain_mm=None),
        )
        collector = Collector(config, BrokerSettings(url=url, reconnect_max_s=2))

        # What happens while the sites start is told after the logins, in order.
        held: list[str] = []
        live = False

        def english(unit: str) -> str:
            u = collector.registry.units.get(unit)
            return (u.name_en or u.name) if u is not None else unit

        def escalated(e: Any) -> str:
            """An escalation in English: how late (under a minute, not "0 min"), and to whom by
            the registry's English names (a leader, named in Chinese only, as "the leader of")."""
            d = e.detail
            if not d:
                return str(e.note)
            late = late_by(e.ts - d["due_ms"])
            to = english(d["to"]) if d["to"] == d["to_unit"] else f"the leader of {english(d['to_unit'])}"
            return f"{d['deadline']} deadline missed by {late}, to {to}"

        async def tell(changed: TicketsChanged) -> None:
            for e in changed.events:
                what = {
                    "open": f"opened ({e.priority}) → {e.unit}",
                    "dispatch": f"dispatched to {e.unit} by {e.actor}",
                    "escalate": f"ESCALATED to level {e.escalation}: {escalated(e)}",
                    "priority": f"priority raised: {e.note}",
                    "close": f"closed by {e.actor}" + (f" ({e.note})" if e.note else ""),
                    "reopen": f"reopened: {e.note}",
                    "verify": f"verified by {e.actor}",
                    "accept": f"accepted by {e.actor}",
                    "report": f"handled, reported by {e.actor}",
                }.get(e.action)
                if what:
                    line = f"{clock.stamp()} TICKET {e.node} {names.get(e.node, '')}: {what}"
                    if live:
                        print(line, flush=True)
                    else:
                        held.append(line)

        collector.bus.subscribe(TicketsChanged, tell)
        tasks.append(asyncio.create_task(collector.run(), name="collector"))
        await asyncio.wait_for(collector.ready.wait(), 30)
        unit = f"drainage-{sites[0].street}"
        passwords = {u: secrets.token_urlsafe(9) for u in ("admin", "dispatcher", "viewer", UNIT_USER)}
        for user, role in (("admin", "admin"), ("dispatcher", "dispatcher"), ("viewer", "viewer")):
            await collector.auth.add_user(user, role, passwords[user])
        await collector.auth.add_user(UNIT_USER, "unit", passwords[UNIT_USER], unit)
        unit_sites = ", ".join(s.node for s in sites if f"drainage-{s.street}" == unit)
        # Every other unit is a simulated crew (the office evaluates their work).
        others = sorted(u for u in collector.registry.units if u != unit)
        crews = Crews.for_units(collector.tickets, collector.clock, others)
        await asyncio.wait_for(collector.consumer.subscribed.wait(), 30)

        sims: list[Any] = []
        agents: list[Any] = []
        for s in sites:
            src = workdir / f"{s.node}-source.yaml"
            key = node_command_key(master, s.node).decode()
            src.write_text(site_yaml(s, url, key, gate_min_warning_s=args.gate_warning_s), encoding="utf-8")
            w = weather.get(s.node)
            scenario = s.scenario_loop() if w is None else demo_weather.scenario(w, args.speed)
            sim = await SimSite(load_site(src), scenario, speed=args.speed).start(workdir)
            stack.push_async_callback(sim.stop)
            sims.append(sim)
            cfg = sim.write_config(
                workdir / f"{s.node}.yaml", {"outbox.path": str(workdir / f"outbox-{s.node}.db")}
            )
            agent = Agent(load_site(cfg))
            agents.append(agent)
            tasks.append(asyncio.create_task(agent.run(), name=f"agent-{s.node}"))
            # One site at a time: amqtt 0.12 can drop a client that connects while
            # another subscribes (it walks its subscription table across awaits).
            await _until(partial(_subscribed, agent), 10)

        if weather:
            # Their past (simulated) first, then the forecast of the storm: the forecaster fits
            # the sites and runs them at once. Each cycle brings the storm and its forecast again.
            async def known() -> bool:
                async with collector.store.read() as conn:
                    return set(weather) <= set(await rainfall_db.site_places(conn))

            deadline = time.monotonic() + 10
            while not await known() and time.monotonic() < deadline:  # noqa: ASYNC110 (another task's writes)
                await asyncio.sleep(0.1)
            await demo_weather.seed(collector.store, list(weather.values()), collector.clock.now_ms())

            async def feed() -> None:
                while True:
                    doc = demo_weather.forecast_doc(sorted(weather), collector.clock.now_ms())
                    rounds = collector.forecaster.rounds
                    try:
                        await collector.forecasts.accept(doc, "demo feed")
                        # The round it wakes: then say who is at risk, and when.
                        await _until(lambda: collector.forecaster.rounds > rounds, 30)  # noqa: B023
                        risk = await collector.forecaster.at_risk(demo_weather.HORIZON_MIN / 60)
                        said = ", ".join(
                            f"{i['site_id']} {i['level']} in {round(i['eta_s'] / 60)} min"
                            f" ({i['probability']:.0%})"
                            for i in risk
                        )
                        line = f"{clock.stamp()} FORECAST rainfall forecast taken; at risk: {said or 'none'}"
                    except Exception as exc:  # the demo goes on without this cycle's forecast
                        line = f"{clock.stamp()} the rainfall forecast was not taken: {exc}"
                    if live:
                        print(line, flush=True)
                    else:
                        held.append(line)
                    await asyncio.sleep(demo_weather.CYCLE_MIN * 60)

            tasks.append(asyncio.create_task(feed(), name="rain-feed"))

        api = f"http://{args.host}:{args.port}"
        print(
            f"Floodgate demo: {len(sites)} sites in a storm that keeps coming (x{args.speed:g}); broker {url}"
        )
        print(f"Dashboard {api}/   (API {api}/docs, CAP {api}/cap/v1.2/feed.atom)")
        for user in ("admin", "dispatcher", "viewer"):
            print(f"  login {user:<10} password {passwords[user]}")
        print(f"  login {UNIT_USER:<10} password {passwords[UNIT_USER]}   (member of {unit}: {unit_sites})")
        print(
            f"the other stations are simulated crews; deadlines: accept a danger ticket in"
            f" {args.deadline_min:g} min, a warning in {2 * args.deadline_min:g}"
        )
        if weather:
            under = ", ".join(sorted(weather))
            print(
                f"a storm (simulated) reaches {under} now, in real time, and every"
                f" {demo_weather.CYCLE_MIN} min: their forecast models learnt from"
                f" {demo_weather.PAST_STORMS} simulated past storms; see 'sites at risk'"
            )
        print(f"work files in {workdir}; Ctrl-C to stop\n", flush=True)
        for line in held:
            print(line, flush=True)
        live = True

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def summary() -> None:
            while True:
                await asyncio.sleep(args.summary_s)
                gates = sum(1 for sim in sims if sim.devices["gate-1"].status().get("gate") == "closed")
                levels = [str(a.drivers["lvl-1"].level) for a in agents]
                total, _ = await collector.tickets.list(
                    state=["open", "dispatched", "accepted", "handled"], limit=1
                )
                overdue, _ = await collector.tickets.list(overdue=True, limit=1)
                _, every = await collector.tickets.list(limit=500)
                accepted = [k["accepted_on_time"] for k in every if k["accepted_on_time"] is not None]
                counts = (
                    f"danger {levels.count('danger')}/{len(sims)}, warning {levels.count('warning')},"
                    f" gates closed {gates}/{len(sims)}, tickets open {total}, overdue {overdue},"
                    f" accepted on time {sum(accepted)}/{len(accepted)}"
                )
                print(f"{clock.stamp()} SUMMARY {counts}", flush=True)

        tasks.append(asyncio.create_task(summary(), name="summary"))
        tasks.append(asyncio.create_task(crews.run(), name="crews"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        closed = sum(1 for sim in sims if sim.devices["gate-1"].status().get("gate") == "closed")
    print(f"\nstopped; {closed} of {len(sites)} gates were closed. Work files: {workdir}", flush=True)
    return 0


def _count(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


def main(argv: list[str]) -> int:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="floodgate demo",
        description=doc.split("\n\n", 1)[1].strip() if "\n\n" in doc else None,
    )
    p.add_argument(
        "--sites",
        type=_count,
        default=16,
        metavar="N",
        help="how many simulated tunnels and underpasses (16; past 16 the places repeat, numbered)",
    )
    p.add_argument(
        "--speed", type=float, default=10.0, metavar="X", help="scenario seconds per real second (10)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address the dashboard and API listen on (127.0.0.1; 0.0.0.0 for other machines too)",
    )
    p.add_argument("--port", type=int, default=8080, help="the dashboard and API port (8080)")
    p.add_argument(
        "--broker", metavar="URL", help="use this MQTT broker (mqtt://host:port) instead of the embedded one"
    )
    p.add_argument(
        "--deadline-min",
        type=float,
        default=5.0,
        metavar="MIN",
        help="minutes to accept a danger ticket (5; a warning: twice that, handling: 8 and 30 times)",
    )
    p.add_argument(
        "--gate-warning-s",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds the board warns before a gate closes (10)",
    )
    p.add_argument(
        "--summary-s", type=float, default=15.0, metavar="S", help="seconds between summary lines (15)"
    )
    p.add_argument(
        "--duration", type=float, metavar="S", help="stop after this many seconds (default: at Ctrl-C)"
    )
    p.add_argument(
        "--workdir", metavar="DIR", help="keep the work files here (default: a new temporary folder)"
    )
    args = p.parse_args(argv)
    try:
        check_port(args.host, args.port)
    except PortTaken as exc:
        print(f"floodgate demo: {exc}", file=sys.stderr)
        return 1
    from floodgate import logs  # noqa: PLC0415

    logs.setup("error")  # the demo prints what matters itself
    try:
        return asyncio.run(_demo(args))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(
            f"floodgate demo: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
            file=sys.stderr,
        )
        return 1
