"""The collector's REST API (FastAPI; OpenAPI at /openapi.json, docs at /docs).

Everything under ``/api/v1`` needs a bearer token (``POST /api/v1/auth/login``
issues one); ``/health`` and ``/metrics`` do not. Every write is recorded in
the audit table with who did it and the response status. Bad bodies and
parameters get a 4xx that names the problem; a ticket action in the wrong
state is a 409.
"""

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, func, select, text

from cloud.auth import Auth, AuthError, Principal
from cloud.commands import COMMAND_TYPES, Commands
from cloud.dashboard import STATIC
from cloud.ingest import Ingestor
from cloud.interop import SERVICES, Interop, cap_bytes
from cloud.live import Hub
from cloud.measures import Measures
from cloud.overview import site_overview
from cloud.retention import Retention
from cloud.store import Store, alerts, audit, dead_letters, devices, named_readings, nodes
from cloud.tickets import STATES, TicketEvent, Tickets
from floodgate.clock import Clock
from floodgate.errors import RequestError

log = logging.getLogger("floodgate.cloud.api")

NodeId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
DevId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]
TicketId = Annotated[str, Path(pattern=r"^[0-9A-HJKMNP-TV-Z]{26}$")]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0)]
STATUS = {
    "not_found": 404,
    "conflict": 409,
    "invalid": 422,
    "no_key": 422,
    "unavailable": 503,
    "unauthorized": 401,
}


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
    on_ticket_events: Callable[[list[TicketEvent]], Awaitable[None]] | None = None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Login(_Body):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class TicketCreate(_Body):
    node: NodeId
    kind: Literal["flood", "sensor_fault", "comms_lost"]
    priority: Literal["danger", "warning", "fault"]
    note: str = Field(min_length=1, max_length=4000)


class TicketAction(_Body):
    unit: str | None = Field(default=None, max_length=64)
    note: str | None = Field(default=None, max_length=4000)
    score: int | None = Field(default=None, ge=1, le=5)
    photo_url: str | None = Field(default=None, max_length=1000, pattern=r"^https?://")
    of: str | None = Field(default=None, pattern=r"^[0-9A-HJKMNP-TV-Z]{26}$")


class CommandCreate(_Body):
    node: NodeId
    type: Literal["sign.show", "sign.clear", "gate.close", "gate.open", "rebirth", "thresholds.set"]
    dev: DevId | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    reason: str = Field(min_length=1, max_length=1000)
    ttl_s: float = Field(default=60.0, ge=1, le=3600)


class UserCreate(_Body):
    username: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{1,63}$")
    role: Literal["viewer", "operator", "dispatcher", "unit", "admin"]
    password: str | None = Field(default=None, min_length=10, max_length=256)
    unit: str | None = Field(default=None, max_length=64)
    display_name: str | None = Field(default=None, max_length=200)


class TokenCreate(_Body):
    username: str | None = Field(default=None, max_length=64)
    label: str | None = Field(default=None, max_length=200)
    ttl_s: float | None = Field(default=None, gt=0, le=366 * 86400)


# Who may do which ticket action.
ACTION_ROLES: dict[str, tuple[str, ...]] = {
    "dispatch": ("dispatcher", "admin"),
    "verify": ("dispatcher", "admin"),
    "evaluate": ("dispatcher", "admin"),
    "reopen": ("dispatcher", "admin"),
    "merge": ("dispatcher", "admin"),
    "accept": ("unit", "dispatcher", "admin"),
    "reject": ("unit", "admin"),
    "report": ("unit", "admin"),
    "comment": ("operator", "dispatcher", "unit", "admin"),
}


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Floodgate collector API",
        version="1",
        description="Nodes, readings, alerts, tickets through the closed loop, commands, measures.",
    )
    bearer = HTTPBearer(auto_error=False)

    async def principal(
        request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        if cred is None or cred.scheme.lower() != "bearer":
            raise HTTPException(401, "a bearer token is needed", headers={"WWW-Authenticate": "Bearer"})
        try:
            who = await ctx.auth.authenticate(cred.credentials)
        except AuthError as exc:
            raise HTTPException(401, exc.message, headers={"WWW-Authenticate": "Bearer"}) from None
        request.state.actor = who.actor
        return who

    def require(*roles: str) -> Callable[..., Awaitable[Principal]]:
        async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
            if who.role not in roles:
                raise HTTPException(403, f"role {who.role!r} may not do this (needs {' or '.join(roles)})")
            return who

        return check

    Reader = Annotated[Principal, Depends(principal)]
    Admin = Annotated[Principal, Depends(require("admin"))]

    @app.middleware("http")
    async def audit_writes(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and request.url.path.startswith("/api/"):
            actor = getattr(request.state, "actor", "anonymous")
            try:
                async with ctx.store.engine.begin() as conn:
                    await conn.execute(
                        audit.insert().values(
                            ts=ctx.clock.now_ms(),
                            actor=actor,
                            method=request.method,
                            path=request.url.path,
                            status=response.status_code,
                        )
                    )
            except Exception:
                log.exception("could not write the audit record")
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
            for e in exc.errors()
        ]
        return JSONResponse(
            {"detail": "; ".join(f"{p['where']}: {p['problem']}" for p in problems), "problems": problems},
            422,
        )

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "code": exc.code}, STATUS.get(exc.code, 400))

    async def tell(events: list[TicketEvent]) -> None:
        if events and ctx.on_ticket_events is not None:
            await ctx.on_ticket_events(events)

    # ------------------------------------------------------------ open routes

    @app.get("/health", tags=["ops"])
    async def health() -> JSONResponse:
        db_ok = True
        try:
            async with ctx.store.read() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            db_ok = False
        broker_ok = ctx.broker_connected()
        ok = db_ok and broker_ok
        body = {"status": "ok" if ok else "degraded", "database": db_ok, "broker": broker_ok}
        return JSONResponse(body, 200 if ok else 503)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics() -> str:
        c = ctx.ingestor.counters
        now = ctx.clock.now_ms()
        open_states = [s for s in STATES if s not in ("closed", "duplicate")]
        total_open, _ = await ctx.tickets.list(state=open_states, limit=1)
        overdue, _ = await ctx.tickets.list(state=open_states, overdue=True, limit=1)
        gaps = sum(g["missing"] for g in await ctx.store.seq_gaps())
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
            f"# generated at {now}",
        ]
        return "\n".join(lines) + "\n"

    @app.post("/api/v1/auth/login", tags=["auth"])
    async def login(body: Login, request: Request) -> dict[str, Any]:
        request.state.actor = f"user:{body.username}"
        who = await ctx.auth.login(body.username, body.password)
        token = await ctx.auth.issue_token(who.username, label="login", ttl_s=12 * 3600)
        return {"token": token, "username": who.username, "role": who.role, "unit": who.unit}

    @app.get("/api/v1/me", tags=["auth"])
    async def me(who: Reader) -> dict[str, Any]:
        return {"username": who.username, "role": who.role, "unit": who.unit, "actor": who.actor}

    # ------------------------------------------------------------------ admin

    @app.post("/api/v1/users", tags=["auth"], status_code=201)
    async def add_user(body: UserCreate, who: Admin) -> dict[str, Any]:
        p = await ctx.auth.add_user(body.username, body.role, body.password, body.unit, body.display_name)
        return {"username": p.username, "role": p.role, "unit": p.unit}

    @app.post("/api/v1/tokens", tags=["auth"], status_code=201)
    async def add_token(body: TokenCreate, who: Reader) -> dict[str, Any]:
        username = body.username or who.username
        if username != who.username and who.role != "admin":
            raise HTTPException(403, "only an admin may issue tokens for someone else")
        return {"token": await ctx.auth.issue_token(username, body.label, body.ttl_s), "username": username}

    # ------------------------------------------------------------- site data

    @app.get("/api/v1/ui-config", tags=["sites"])
    async def ui_config(who: Reader) -> dict[str, Any]:
        """What the dashboard needs to know about this installation."""
        start, end = ctx.measures.season
        return {"map_tiles": ctx.map_tiles, "flood_season": {"start": start, "end": end}}

    @app.get("/api/v1/sites", tags=["sites"])
    async def sites(who: Reader) -> list[dict[str, Any]]:
        """One row per site for the map: level, faults, board, gate, open tickets."""
        return await site_overview(ctx.store)

    @app.get("/api/v1/stream", tags=["sites"], response_class=StreamingResponse)
    async def stream(token: Annotated[str, Query(min_length=8, max_length=200)]) -> StreamingResponse:
        """Server-sent events (alert, state, event, ticket, resync); the token is a query parameter
        because EventSource cannot send headers."""
        try:
            await ctx.auth.authenticate(token)
        except AuthError as exc:
            raise HTTPException(401, exc.message) from None
        return StreamingResponse(
            ctx.hub.stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.get("/api/v1/nodes", tags=["sites"])
    async def list_nodes(who: Reader) -> list[dict[str, Any]]:
        async with ctx.store.read() as conn:
            rows = (await conn.execute(select(nodes).order_by(nodes.c.node))).mappings().all()
        return [_node(r) for r in rows]

    @app.get("/api/v1/nodes/{node}", tags=["sites"])
    async def get_node(node: str, who: Reader) -> dict[str, Any]:
        async with ctx.store.read() as conn:
            row = (await conn.execute(select(nodes).where(nodes.c.node == node))).mappings().first()
            devs = (
                (await conn.execute(select(devices).where(devices.c.node == node).order_by(devices.c.dev)))
                .mappings()
                .all()
            )
        if row is None:
            raise HTTPException(404, f"no node {node}")
        out = _node(row)
        out["devices"] = [{**dict(d), "thresholds": _json(d["thresholds"])} for d in devs]
        return out

    @app.get("/api/v1/readings/latest", tags=["sites"])
    async def latest(who: Reader, node: str | None = None) -> list[dict[str, Any]]:
        nr = named_readings
        last = select(nr.c.node, nr.c.dev, nr.c.metric, func.max(nr.c.ts).label("ts")).group_by(
            nr.c.node, nr.c.dev, nr.c.metric
        )
        if node:
            last = last.where(nr.c.node == node)
        sub = last.subquery()
        q = select(nr).join(
            sub,
            and_(
                nr.c.node == sub.c.node,
                nr.c.dev == sub.c.dev,
                nr.c.metric == sub.c.metric,
                nr.c.ts == sub.c.ts,
            ),
        )
        async with ctx.store.read() as conn:
            rows = (await conn.execute(q)).mappings().all()
        seen: dict[tuple[str, str, str], dict[str, Any]] = {}
        for r in rows:
            seen[(r["node"], r["dev"], r["metric"])] = {
                k: r[k] for k in ("node", "dev", "metric", "ts", "value", "quality")
            }
        return [seen[k] for k in sorted(seen)]

    @app.get("/api/v1/readings", tags=["sites"])
    async def history(
        who: Reader,
        node: str,
        dev: str,
        metric: str = "depth_mm",
        start: Annotated[int | None, Query(alias="from", ge=0)] = None,
        end: Annotated[int | None, Query(alias="to", ge=0)] = None,
        resolution: Annotated[int, Query(ge=0, le=86400, description="seconds; 0 = raw")] = 0,
        limit: Annotated[int, Query(ge=1, le=10000)] = 2000,
    ) -> dict[str, Any]:
        if start is not None and end is not None and end < start:
            raise HTTPException(422, "'to' is before 'from'")
        points = await ctx.retention.history(node, dev, metric, start, end, resolution, limit)
        return {"node": node, "dev": dev, "metric": metric, "resolution_s": resolution, "points": points}

    @app.get("/api/v1/alerts", tags=["alerts"])
    async def list_alerts(
        who: Reader,
        node: str | None = None,
        active: bool | None = None,
        level: Literal["clear", "warning", "danger"] | None = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        cond: list[Any] = []
        if node:
            cond.append(alerts.c.node == node)
        if active is True:
            cond.append(alerts.c.level != "clear")
        if active is False:
            cond.append(alerts.c.level == "clear")
        if level:
            cond.append(alerts.c.level == level)
        q = select(alerts).where(*cond).order_by(alerts.c.last_ts.desc()).limit(limit).offset(offset)
        n = select(func.count()).select_from(alerts).where(*cond)
        async with ctx.store.read() as conn:
            total = (await conn.execute(n)).scalar() or 0
            rows = (await conn.execute(q)).mappings().all()
        return {"total": total, "items": [dict(r) for r in rows]}

    @app.get("/api/v1/dead-letters", tags=["ops"])
    async def list_dead_letters(who: Reader, limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
        q = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit).offset(offset)
        async with ctx.store.read() as conn:
            total = (await conn.execute(select(func.count()).select_from(dead_letters))).scalar() or 0
            rows = (await conn.execute(q)).mappings().all()
        items = [
            {
                **{k: r[k] for k in ("id", "topic", "code", "detail", "received_ms")},
                "payload": r["payload"].decode("utf-8", "replace"),
            }
            for r in rows
        ]
        return {"total": total, "items": items}

    # ---------------------------------------------------------------- tickets

    @app.get("/api/v1/tickets", tags=["tickets"])
    async def list_tickets(
        who: Reader,
        state: Annotated[list[str] | None, Query()] = None,
        unit: str | None = None,
        node: str | None = None,
        kind: Literal["flood", "sensor_fault", "comms_lost"] | None = None,
        overdue: bool | None = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        bad = [s for s in state or [] if s not in STATES]
        if bad:
            raise HTTPException(422, f"unknown state {bad[0]!r}; one of {', '.join(STATES)}")
        total, items = await ctx.tickets.list(
            state=state or (), unit=unit, node=node, kind=kind, overdue=overdue, limit=limit, offset=offset
        )
        return {"total": total, "items": items}

    @app.get("/api/v1/tickets/{ticket_id}", tags=["tickets"])
    async def get_ticket(ticket_id: TicketId, who: Reader) -> dict[str, Any]:
        return await ctx.tickets.get(ticket_id)

    @app.post("/api/v1/tickets", tags=["tickets"], status_code=201)
    async def open_ticket(
        body: TicketCreate, who: Annotated[Principal, Depends(require("dispatcher", "admin"))]
    ) -> dict[str, Any]:
        ticket, events = await ctx.tickets.open_manual(
            who.actor, body.node, body.kind, body.priority, body.note
        )
        await tell(events)
        return ticket

    def action_route(action: str) -> None:
        allowed = ACTION_ROLES[action]

        async def act(
            ticket_id: TicketId, body: TicketAction, who: Annotated[Principal, Depends(require(*allowed))]
        ) -> dict[str, Any]:
            if who.role == "unit":
                current = await ctx.tickets.get(ticket_id)
                if current["unit"] != who.unit:
                    raise HTTPException(403, f"ticket {ticket_id} is for {current['unit']}, not {who.unit}")
            ticket, events = await ctx.tickets.act(
                ticket_id,
                action,
                who.actor,
                unit=body.unit,
                note=body.note,
                score=body.score,
                photo_url=body.photo_url,
                of=body.of,
            )
            await tell(events)
            return ticket

        app.post(
            f"/api/v1/tickets/{{ticket_id}}/{action}",
            tags=["tickets"],
            name=f"ticket_{action}",
            summary=f"{action.capitalize()} a ticket ({', '.join(allowed)})",
        )(act)

    for action in ACTION_ROLES:
        action_route(action)

    # ------------------------------------------- Open311 and CAP (public, read-only)

    @app.get("/open311/v2/services.json", tags=["open311"])
    async def open311_services() -> list[dict[str, Any]]:
        return SERVICES

    @app.get("/open311/v2/requests.json", tags=["open311"])
    async def open311_requests(
        service_code: Literal["flood", "sensor_fault", "comms_lost"] | None = None,
        status: Literal["open", "closed"] | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        service_request_id: Annotated[str | None, Query(pattern=r"^[0-9A-Z,]{26,2700}$")] = None,
    ) -> list[dict[str, Any]]:
        return await ctx.interop.requests(
            service_code=service_code,
            status=status,
            start_ms=int(start_date.timestamp() * 1000) if start_date else None,
            end_ms=int(end_date.timestamp() * 1000) if end_date else None,
            ids=service_request_id.split(",") if service_request_id else None,
        )

    @app.get("/open311/v2/requests/{request_id}.json", tags=["open311"])
    async def open311_request(request_id: TicketId) -> list[dict[str, Any]]:
        found = await ctx.interop.requests(ids=[request_id])
        if not found:
            raise HTTPException(404, f"no service request {request_id}")
        return found

    @app.get("/cap/v1.2/feed.atom", tags=["cap"])
    async def cap_feed() -> Response:
        body = ctx.interop.atom_feed(await ctx.interop.cap_messages())
        return Response(body, media_type="application/atom+xml")

    @app.get("/cap/v1.2/alerts/{identifier}.xml", tags=["cap"])
    async def cap_alert(identifier: Annotated[str, Path(pattern=r"^[0-9A-Z]{26}$")]) -> Response:
        m = await ctx.interop.cap_message_by_id(identifier)
        if m is None:
            raise HTTPException(404, f"no public warning message {identifier}")
        return Response(cap_bytes(m), media_type="application/cap+xml")

    # --------------------------------------------------------------- measures

    @app.get("/api/v1/measures/units", tags=["measures"])
    async def unit_measures(
        who: Reader, month: Annotated[str, Query(pattern=r"^\d{4}-\d{2}$")]
    ) -> list[dict[str, Any]]:
        try:
            return await ctx.measures.units(month)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/api/v1/measures/sites", tags=["measures"])
    async def site_measures(
        who: Reader, season: Annotated[int, Query(ge=2000, le=2100)]
    ) -> list[dict[str, Any]]:
        return await ctx.measures.sites(season)

    # --------------------------------------------------------------- commands

    @app.get("/api/v1/commands", tags=["commands"])
    async def list_commands(
        who: Reader, node: str | None = None, limit: Limit = 50, offset: Offset = 0
    ) -> dict[str, Any]:
        total, items = await ctx.commands.list(node, limit, offset)
        return {"total": total, "items": items}

    @app.get("/api/v1/commands/{cmd_id}", tags=["commands"])
    async def get_command(cmd_id: str, who: Reader) -> dict[str, Any]:
        return await ctx.commands.get(cmd_id)

    @app.post("/api/v1/commands", tags=["commands"], status_code=202)
    async def send_command(
        body: CommandCreate, who: Annotated[Principal, Depends(require("operator", "dispatcher", "admin"))]
    ) -> dict[str, Any]:
        assert body.type in COMMAND_TYPES
        return await ctx.commands.send(
            body.node,
            body.type,
            issued_by=who.actor,
            reason=body.reason,
            dev=body.dev,
            args=body.args,
            ttl_s=body.ttl_s,
        )

    # The dashboard: static files, no CDN.
    app.mount("/dashboard", StaticFiles(directory=STATIC), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


def _json(v: str | None) -> Any:
    return json.loads(v) if v else None


def _node(r: Any) -> dict[str, Any]:
    out = dict(r)
    out["health"] = _json(out.get("health"))
    return out
