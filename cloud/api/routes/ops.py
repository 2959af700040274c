"""Health, probes, Prometheus metrics and dead letters.

- ``/healthz`` (liveness): the process answers; nothing else is asked, so a
  database away does not get a collector restarted in a loop.
- ``/readyz`` (readiness): the database answers, at the schema version this
  collector expects, and the intake (broker or stream) is connected; 503 with
  which is not.
- ``/health``: the older combined check (database and broker), kept as it was.
- ``/metrics``: the Prometheus text format, no token (counts only: serve it on
  a network only the monitoring reaches).
"""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from cloud.api.deps import Ctx, Reader
from cloud.api.errors import responses
from cloud.api.models import DeadLetter, Health, Limit, Live, Offset, Page, Ready
from cloud.db import reads
from cloud.db.migrations import MIGRATIONS
from floodgate.vocab import ACTIVE

router = APIRouter(tags=["ops"])


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database or the broker is not there"}},
)
async def health(ctx: Ctx) -> JSONResponse:
    """Whether the database answers and the collector is subscribed (no token needed)."""
    db_ok = await reads.database_answers(ctx.store)
    broker_ok = ctx.broker_connected()
    ok = db_ok and broker_ok
    body = Health(status="ok" if ok else "degraded", database=db_ok, broker=broker_ok)
    return JSONResponse(body.model_dump(), 200 if ok else 503)


@router.get("/healthz", response_model=Live)
async def healthz() -> Live:
    """Liveness: the process is up and its event loop answers (no token needed)."""
    return Live(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "Not ready: the database, its schema or the intake"}},
)
async def readyz(ctx: Ctx) -> JSONResponse:
    """Readiness: the database answers at this collector's schema version and the intake is
    connected (no token needed)."""
    db_ok = await reads.database_answers(ctx.store)
    version = await reads.schema_version(ctx.store) if db_ok else 0
    intake = ctx.broker_connected()
    ok = db_ok and version == len(MIGRATIONS) and intake
    body = Ready(
        status="ready" if ok else "not ready",
        database=db_ok,
        intake=intake,
        schema_version=version,
        schema_expected=len(MIGRATIONS),
        live=ctx.live_listening(),
    )
    return JSONResponse(body.model_dump(), 200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(ctx: Ctx) -> str:
    """Counters and gauges in the Prometheus text format (no token needed)."""
    c = ctx.ingestor.counters
    now = ctx.clock.now_ms()
    open_states = list(ACTIVE)
    total_open, _ = await ctx.tickets.list(state=open_states, limit=1)
    overdue, _ = await ctx.tickets.list(state=open_states, overdue=True, limit=1)
    gaps = sum(g["missing"] for g in await ctx.store.seq_gaps())
    counts = await reads.watch_counts(ctx.store)
    lines = [
        "# HELP floodgate_messages_received_total MQTT messages received by this collector.",
        "# TYPE floodgate_messages_received_total counter",
        f"floodgate_messages_received_total {c.received}",
        "# HELP floodgate_messages_stored_total Messages stored (new to the ledger).",
        "# TYPE floodgate_messages_stored_total counter",
        f"floodgate_messages_stored_total {c.stored}",
        "# HELP floodgate_messages_duplicate_total Replays and redeliveries ignored.",
        "# TYPE floodgate_messages_duplicate_total counter",
        f"floodgate_messages_duplicate_total {c.duplicates}",
        "# HELP floodgate_dead_letters_total Rejected messages kept as dead letters, by reason.",
        "# TYPE floodgate_dead_letters_total counter",
        *(f'floodgate_dead_letters_total{{reason="{r}"}} {n}' for r, n in sorted(c.by_reason.items())),
        "# HELP floodgate_seq_gaps Sequence numbers missing across all nodes and boots.",
        "# TYPE floodgate_seq_gaps gauge",
        f"floodgate_seq_gaps {gaps}",
        "# HELP floodgate_tickets_open Tickets not closed.",
        "# TYPE floodgate_tickets_open gauge",
        f"floodgate_tickets_open {total_open}",
        "# HELP floodgate_tickets_overdue Open tickets past a deadline.",
        "# TYPE floodgate_tickets_overdue gauge",
        f"floodgate_tickets_overdue {overdue}",
        "# HELP floodgate_broker_connected 1 when the collector is subscribed.",
        "# TYPE floodgate_broker_connected gauge",
        f"floodgate_broker_connected {int(ctx.broker_connected())}",
        "# HELP floodgate_alerts_active Alert episodes not clear (every collector's).",
        "# TYPE floodgate_alerts_active gauge",
        f"floodgate_alerts_active {counts['alerts_active']}",
        "# HELP floodgate_notifications_pending Notification deliveries waiting to be sent (the outbox).",
        "# TYPE floodgate_notifications_pending gauge",
        f"floodgate_notifications_pending {counts['notifications_pending']}",
        "# HELP floodgate_notifications_failed Notification deliveries given up after every attempt.",
        "# TYPE floodgate_notifications_failed gauge",
        f"floodgate_notifications_failed {counts['notifications_failed']}",
        "# HELP floodgate_live_listening 1 when the live feed hears every collector (PostgreSQL).",
        "# TYPE floodgate_live_listening gauge",
        f"floodgate_live_listening {int(ctx.live_listening())}",
        f"# generated at {now}",
    ]
    return "\n".join(lines) + "\n" + ctx.metrics.render()


@router.get("/api/v1/dead-letters", responses=responses(401, 422))
async def list_dead_letters(ctx: Ctx, who: Reader, limit: Limit = 50, offset: Offset = 0) -> Page[DeadLetter]:
    """Messages the collector refused, newest first, with the contract's reason."""
    total, items = await reads.dead_letter_page(ctx.store, limit, offset)
    return Page[DeadLetter].model_validate({"total": total, "items": items})
