"""Site data: the dashboard's config, the map's sites, live events, nodes and readings."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from cloud.api.deps import Ctx, Reader
from cloud.api.errors import responses
from cloud.api.models import (
    NO_NUL,
    DevQ,
    History,
    MetricQ,
    Ms,
    NodeDetail,
    NodePath,
    NodeQ,
    Reading,
    Site,
    UiConfig,
)
from cloud.api.models import Node as NodeOut
from cloud.auth import AuthError
from cloud.db import reads
from cloud.overview import site_overview

# Each event as a client's EventSource parses it: its name and its data (JSON text).
SSE = {
    "schema": {
        "type": "object",
        "properties": {
            "event": {
                "type": "string",
                "enum": ["hello", "alert", "state", "event", "ticket", "forecast", "resync", "end"],
            },
            "data": {"type": "string", "description": "JSON"},
        },
        "required": ["data"],
    }
}
router = APIRouter(prefix="/api/v1", tags=["sites"], responses=responses(401, 422))


@router.get("/ui-config")
async def ui_config(ctx: Ctx, who: Reader) -> UiConfig:
    """What the dashboard needs to know about this installation."""
    start, end = ctx.measures.season
    return UiConfig.model_validate(
        {
            "map_tiles": ctx.map_tiles,
            "flood_season": {"start": start, "end": end},
            "timezone": ctx.measures.tz.key,
            "names": ctx.registry.names(),
        }
    )


@router.get("/sites")
async def sites(ctx: Ctx, who: Reader) -> list[Site]:
    """One row per site for the map: level, faults, board, gate, open tickets."""
    return [Site.model_validate(s) for s in await site_overview(ctx.store)]


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {"description": "Server-sent events, one per change", "content": {"text/event-stream": SSE}},
        **responses(401, 422),
    },
)
async def stream(
    ctx: Ctx, token: Annotated[str, Query(min_length=8, max_length=200, pattern=NO_NUL)]
) -> StreamingResponse:
    """Server-sent events (alert, state, event, ticket, forecast, resync); the token is a query
    parameter because EventSource cannot send headers. ``forecast`` (``{"issued_at"}``): a
    forecast round stored every site's forecast (GET them again). The stream ends with an ``end`` event
    (``{"reason": "expired"}`` or ``"revoked"``) when its token expires, is revoked or its user is
    disabled: at once through this collector, within 5 s through another."""
    try:
        who = await ctx.auth.authenticate(token)
    except AuthError as exc:
        raise HTTPException(401, exc.message) from None
    return StreamingResponse(
        ctx.hub.stream(until=lambda: ctx.auth.held(who)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


@router.get("/nodes")
async def list_nodes(ctx: Ctx, who: Reader) -> list[NodeOut]:
    return [NodeOut.model_validate(n) for n in await reads.all_nodes(ctx.store)]


@router.get("/nodes/{node}", responses=responses(404))
async def get_node(node: NodePath, ctx: Ctx, who: Reader) -> NodeDetail:
    found = await reads.node_with_devices(ctx.store, node)
    if found is None:
        raise HTTPException(404, f"no node {node}")
    return NodeDetail.model_validate(found)


@router.get("/readings/latest")
async def latest(ctx: Ctx, who: Reader, node: NodeQ | None = None) -> list[Reading]:
    """The newest reading of every device and metric (of one node, or all)."""
    return [Reading.model_validate(r) for r in await reads.latest_readings(ctx.store, node)]


@router.get("/readings")
async def history(
    ctx: Ctx,
    who: Reader,
    node: NodeQ,
    dev: DevQ,
    metric: MetricQ = "depth_mm",
    start: Annotated[Ms | None, Query(alias="from")] = None,
    end: Annotated[Ms | None, Query(alias="to")] = None,
    resolution: Annotated[int, Query(ge=0, le=86400, description="seconds; 0 = raw")] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 2000,
) -> History:
    """One metric's history: raw points, or buckets of ``resolution`` seconds."""
    if start is not None and end is not None and end < start:
        raise HTTPException(422, "'to' is before 'from'")
    points = await ctx.retention.history(node, dev, metric, start, end, resolution, limit)
    return History.model_validate(
        {"node": node, "dev": dev, "metric": metric, "resolution_s": resolution, "points": points}
    )
