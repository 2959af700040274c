"""What the API is built from: the collector's parts, passed in (nothing global)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from cloud.auth import Auth
from cloud.commands import Commands
from cloud.db.store import Store
from cloud.events import Bus, TicketsChanged
from cloud.forecast.service import Forecaster
from cloud.ingest import Ingestor
from cloud.interop import Interop
from cloud.live import Hub
from cloud.measures import Measures
from cloud.metrics import Metrics
from cloud.registry import DEFAULT_REGISTRY, Registry
from cloud.retention import Retention
from cloud.tickets import TicketEvent, Tickets
from floodgate.clock import Clock


@dataclass
class ApiContext:
    store: Store
    tickets: Tickets
    commands: Commands
    auth: Auth
    clock: Clock
    ingestor: Ingestor
    broker_connected: Callable[[], bool]
    measures: Measures
    interop: Interop
    retention: Retention
    hub: Hub = dataclasses.field(default_factory=Hub)
    map_tiles: str | None = None
    registry: Registry = DEFAULT_REGISTRY  # the dashboard shows its units' and sites' names
    bus: Bus = dataclasses.field(default_factory=Bus)  # ticket changes made here are published on it
    # The largest request body taken (bytes); a larger one is refused with 413.
    max_body_bytes: int = 256 * 1024
    # A font file with Chinese glyphs for the PDF reports (None: the usual Debian ones).
    report_font: str | None = None
    # The collector's own metrics (``cloud.metrics``), written by ``GET /metrics``.
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    # Whether the live feed is listening (PostgreSQL: it hears the other collectors).
    live_listening: Callable[[], bool] = lambda: True
    # A PDF report costs a second or two of CPU and its font in memory: one at a time.
    report_slot: asyncio.Semaphore = dataclasses.field(default_factory=lambda: asyncio.Semaphore(1))
    # Each site's depth forecast (the collector's; None: one is made per request).
    forecaster: Forecaster | None = None

    async def tell(self, events: list[TicketEvent]) -> None:
        """Hand ticket changes made through the API to whoever listens."""
        if events:
            await self.bus.publish(TicketsChanged(events))
