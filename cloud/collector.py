"""The collector: broker -> ingest (and tickets) -> store, plus the escalation scheduler."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgspec

from cloud.auth import Auth, AuthError
from cloud.commands import Commands, Keys
from cloud.config import CloudConfig, ForecastConfig, load_cloud_config
from cloud.consumer import Consumer
from cloud.db.store import Store
from cloud.events import Bus, CommandSent, ForecastRound, TicketsChanged
from cloud.forecast.service import Forecaster
from cloud.influx import InfluxExport, InfluxSettings
from cloud.ingest import Applied, Ingestor
from cloud.interop import Interop
from cloud.jetstream import JetStreamIntake, NatsSettings
from cloud.live import Event, Feed, Hub
from cloud.measures import Measures
from cloud.metrics import IntakeMetrics, Metrics
from cloud.notify import Notifier, Smtp
from cloud.rainfall import Forecasts, ForecastWatch, iso
from cloud.registry import DEFAULT_REGISTRY, Registry, load_registry
from cloud.retention import Retention
from cloud.scheduler import Scheduler
from cloud.server import ApiServer
from cloud.silence import Silence
from cloud.tickets import TicketEvent, Tickets
from floodgate.broker import BrokerSettings
from floodgate.clock import Clock, SystemClock
from floodgate.runner import run_together, run_until_signal, tune_for_service

log = logging.getLogger("floodgate.cloud")
TICKET_LOG_LINES = 10  # a batch with more ticket events than this is logged as one summary


class Collector:
    def __init__(
        self,
        config: CloudConfig,
        broker: BrokerSettings,
        *,
        clock: Clock | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        if registry is None:
            registry = load_registry(Path(config.registry)) if config.registry else DEFAULT_REGISTRY
        self.registry = registry
        self.store = Store(config.database)
        # What happens with or after a commit, to whoever cares (cloud.events).
        self.bus = Bus()
        self.tickets = Tickets(
            self.store, registry, self.clock, self.bus, int(config.release_held_after_s * 1000)
        )
        # What GET /metrics shows of this collector beyond the API's own lines (cloud.metrics).
        self.metrics = Metrics(collector=config.client_id)
        self.intake_metrics = IntakeMetrics(self.metrics)
        self.ingestor = Ingestor(self.store, self.tickets, self.intake_metrics)
        # PostgreSQL takes several batches at once: while one waits for the
        # server (a round trip, the WAL flush), the next is copied and a
        # third is checked. SQLite has one writer at a time.
        commits_in_flight = 3 if self.store.dialect == "postgresql" else 1
        # With nats, messages come in from JetStream and the nodes' ack reports go out on its
        # connection; the MQTT connection only publishes commands and keeps the collector's
        # retained state and Will.
        self.jetstream: JetStreamIntake | None = None
        self.alert_lane: JetStreamIntake | None = None
        if config.nats is not None:
            n = config.nats
            nats_settings = NatsSettings(
                urls=tuple(n.urls),
                durable=n.durable,
                ack_wait_s=n.ack_wait_s,
                max_ack_pending=n.max_ack_pending,
                fetch_wait_s=n.fetch_wait_s,
                user=n.username,
                password=Path(n.password_file).read_text().strip() if n.password_file else None,
                reconnect_max_s=broker.reconnect_max_s,
            )
            self.jetstream = JetStreamIntake(
                nats_settings,
                self.ingestor,
                on_applied=self._applied,
                batch_max=config.batch_max,
                commits_in_flight=commits_in_flight,
                metrics=self.intake_metrics,
            )
            if n.alert_lane:
                # Alerts ahead of a telemetry backlog; reported to the nodes by the shared consumer.
                self.alert_lane = JetStreamIntake(
                    nats_settings.alert_lane(),
                    self.ingestor,
                    on_applied=self._applied,
                    batch_max=config.batch_max,
                    confirm=False,
                    metrics=self.intake_metrics,
                    lane="alerts",
                )
        self.consumer = Consumer(
            broker,
            self.ingestor,
            client_id=config.client_id,
            shared_group=config.shared_group,
            batch_max=config.batch_max,
            on_applied=self._applied,
            commits_in_flight=commits_in_flight,
            subscribe=config.nats is None,
            metrics=self.intake_metrics,
            confirmer=self.jetstream.confirmer if self.jetstream is not None else None,
        )
        # What each node's messages became, told to it (cloud.confirm), on the intake's connection.
        self.confirmer = self.consumer.confirmer
        master = Path(config.command_key_file).read_bytes().strip() if config.command_key_file else None
        self.commands = Commands(self.store, Keys(master), self.clock, self.consumer.publish, self.bus)
        # Nodes judged against how far the intake has taken in what the broker holds.
        intake = self.jetstream if self.jetstream is not None else self.consumer
        self.silence = Silence(
            self.store,
            self.ingestor,
            self.tickets,
            self.clock,
            int(config.comms_lost_after_s * 1000),
            behind=intake.caught_up.behind_ms,
        )
        r = config.retention
        self.retention = Retention(
            self.store, self.clock, r.raw_days, int(r.rollup_interval_s * 1000), r.forecast_days
        )
        self.scheduler = Scheduler(self.tickets, self.commands, self.silence, self.retention, self.bus)
        api = config.api
        self.auth = Auth(
            self.store,
            self.clock,
            login_free_failures=api.login_free_failures if api else 5,
            login_max_delay_s=api.login_max_delay_s if api else 900.0,
        )
        self.hub = Hub()
        self.feed = Feed(self.hub, self.store)
        f = config.forecast or ForecastConfig()
        # Each site's depth forecast and its forecast alerts (its ticket changes go on the bus);
        # a new rainfall forecast has the sites run at once.
        self.forecaster = Forecaster(
            self.store, self.clock, self.retention, self.ingestor, self.tickets, f, self.bus
        )
        self.forecasts = Forecasts(
            self.store, self.clock, self.forecaster.wake.set, int(f.issued_ahead_min * 60_000)
        )
        self.forecast_watch: ForecastWatch | None = None
        if f.watch_dir is not None:
            self.forecast_watch = ForecastWatch(
                self.forecasts, Path(f.watch_dir), int(f.poll_s * 1000), f.netcdf_variable
            )
        self.influx: InfluxExport | None = None
        if config.influx is not None:
            i = config.influx
            pw = Path(i.password_file).read_text().strip() if i.password_file else None
            settings = InfluxSettings(
                i.url, i.database, i.username, pw, i.batch_max, int(i.interval_s * 1000)
            )
            self.influx = InfluxExport(self.store, self.clock, settings)
        self.notifier = Notifier(self.store, registry, self.clock, _smtp(config), metrics=self.metrics)
        # Deliveries are stored with the ticket change; after the commit the sender is woken,
        # the scheduler looks again (a dispatch sets deadlines, a command an expiry), live views hear.
        self.notifier.attach(self.bus)
        self.bus.subscribe(TicketsChanged, self._tickets_changed)
        self.bus.subscribe(ForecastRound, self._forecast_round)
        self.bus.subscribe(CommandSent, lambda _: self.scheduler.poke())
        self.api: ApiServer | None = None
        if config.api is not None:
            from cloud.api import ApiContext, create_app  # noqa: PLC0415 - FastAPI only when serving

            app = create_app(
                ApiContext(
                    store=self.store,
                    tickets=self.tickets,
                    commands=self.commands,
                    auth=self.auth,
                    clock=self.clock,
                    ingestor=self.ingestor,
                    broker_connected=self.intake_ready,
                    measures=Measures(
                        self.store,
                        self.clock,
                        season=(config.flood_season.start, config.flood_season.end),
                        timezone=config.timezone,
                    ),
                    retention=self.retention,
                    hub=self.hub,
                    metrics=self.metrics,
                    live_listening=lambda: self.feed.listening,
                    map_tiles=config.map_tiles,
                    registry=registry,
                    interop=Interop(
                        self.store,
                        self.clock,
                        sender=f"{config.client_id}@floodgate",
                        timezone=config.timezone,
                        registry=registry,
                    ),
                    bus=self.bus,
                    max_body_bytes=config.api.max_body_bytes,
                    report_font=config.api.report_font,
                    forecaster=self.forecaster,
                )
            )
            self.api = ApiServer(app, config.api.host, config.api.port)
        self.ready = asyncio.Event()

    def intake_ready(self) -> bool:
        """Connected to the broker and, with nats, bound to the JetStream consumer and heard
        from the server lately (``JetStreamIntake.consuming``)."""
        js = self.jetstream
        return self.consumer.subscribed.is_set() and (js is None or js.consuming())

    async def _applied(self, applied: Applied) -> None:
        # On SQLite only this process has a dashboard: nobody watching, no work on the ingest
        # path. On PostgreSQL every collector's dashboard hears (``Feed``).
        if self.feed.shared or self.hub.listeners:
            live: list[Event] = [
                ("alert", {"node": node, **msgspec.to_builtins(a)}) for node, a in applied.alerts
            ]
            live += [("state", {"node": node, "online": st.online}) for node, st in applied.states]
            live += [
                ("event", {"node": node, **msgspec.to_builtins(ev)})
                for node, ev in applied.events
                if ev.type != "heartbeat"
            ]
            await self.feed.publish(live)
        if applied.tickets:
            await self.bus.publish(TicketsChanged(applied.tickets))
        elif applied.alerts:  # transitions held, maybe: their release is the scheduler's
            self.scheduler.poke()

    async def _forecast_round(self, r: ForecastRound) -> None:
        # The dashboard's views of the forecast (the site page, the at-risk list, a ticket's
        # prediction) all show the last round's: a new one stored, they are drawn again.
        if self.feed.shared or self.hub.listeners:
            await self.feed.publish([("forecast", {"issued_at": iso(r.issued_ms)})])

    async def _tickets_changed(self, changed: TicketsChanged) -> None:
        self.scheduler.poke()  # a dispatch may have set an earlier deadline
        await self.ticket_events(changed.events)

    async def ticket_events(self, events: list[TicketEvent]) -> None:
        if self.feed.shared or self.hub.listeners:
            # The live event as before: an escalation's detail is the timeline's (GET the ticket).
            live = [{k: v for k, v in dataclasses.asdict(e).items() if k != "detail"} for e in events]
            await self.feed.publish([("ticket", x) for x in live])
        # Their notifications were stored with them (Bus.with_commit): wake the sender.
        self.notifier.poke()
        # One line per ticket event, but a storm's batch is summed up in one line
        # (each event at DEBUG), or the log would be the storm.
        many = len(events) > TICKET_LOG_LINES
        if many:
            counts = collections.Counter(e.action for e in events).most_common()
            log.info("%d ticket events: %s", len(events), ", ".join(f"{a} {n}" for a, n in counts))
        for e in events:
            log.log(
                logging.DEBUG if many else logging.INFO,
                "ticket %s %s by %s",
                e.ticket_id,
                e.action,
                e.actor,
                extra={"unit": e.unit, "state": e.state},
            )

    async def run(self) -> None:
        try:
            version = await self.store.migrate()
            log.info("database ready", extra={"dialect": self.store.dialect, "schema": version})
            self.ready.set()
            jobs: dict[str, Coroutine[Any, Any, object]] = {
                "consumer": self.consumer.run(),
                "scheduler": self.scheduler.run(),
                "notifier": self.notifier.run(),
                "live": self.feed.run(),
            }
            if self.jetstream is not None:
                jobs["jetstream"] = self.jetstream.run()
            if self.alert_lane is not None:
                jobs["alert_lane"] = self.alert_lane.run()
            if self.influx is not None:
                jobs["influx"] = self.influx.run()
            if self.forecast_watch is not None:
                jobs["forecast_watch"] = self.forecast_watch.run()
            jobs["forecaster"] = self.forecaster.run()
            if self.api is not None:
                jobs["api"] = self.api.run_until_cancelled()
            await run_together(jobs)
        finally:
            await self.store.close()


def _smtp(config: CloudConfig) -> Smtp | None:
    s = config.smtp
    if s is None:
        return None
    password = Path(s.password_file).read_text().strip() if s.password_file else None
    return Smtp(s.host, s.port, s.sender, s.username, password, s.starttls)


def run_collector(path: Path, log_level: str = "info", log_format: str = "text") -> int:
    from floodgate import logs  # noqa: PLC0415

    logs.setup(log_level, log_format)
    config, broker = load_cloud_config(path)

    tune_for_service()
    run_until_signal(lambda: Collector(config, broker).run())
    return 0


async def migrate(path: Path) -> int:
    config, _ = load_cloud_config(path)
    store = Store(config.database)
    try:
        return await store.migrate()
    finally:
        await store.close()


async def add_user(path: Path, username: str, role: str, password: str | None, unit: str | None) -> None:
    config, _ = load_cloud_config(path)
    store = Store(config.database)
    try:
        await store.migrate()
        await Auth(store, SystemClock()).add_user(username, role, password, unit)
    finally:
        await store.close()


async def issue_token(path: Path, username: str, label: str | None, ttl_s: float | None) -> str:
    config, _ = load_cloud_config(path)
    store = Store(config.database)
    try:
        await store.migrate()
        auth = Auth(store, SystemClock())
        if not await auth.exists(username):
            raise AuthError("invalid", f"no user {username!r}")
        return await auth.issue_token(username, label, ttl_s)
    finally:
        await store.close()
