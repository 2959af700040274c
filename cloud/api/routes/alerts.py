"""Alert episodes."""

from fastapi import APIRouter

from cloud.api.deps import Ctx, Reader
from cloud.api.errors import responses
from cloud.api.models import Alert, Level, Limit, NodeQ, Offset, Page
from cloud.db import reads

router = APIRouter(prefix="/api/v1", tags=["alerts"], responses=responses(401, 422))


@router.get("/alerts")
async def list_alerts(
    ctx: Ctx,
    who: Reader,
    node: NodeQ | None = None,
    active: bool | None = None,
    level: Level | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[Alert]:
    """Alert episodes, the most recently changed first."""
    total, items = await reads.alert_page(
        ctx.store, node=node, active=active, level=level, limit=limit, offset=offset
    )
    return Page[Alert].model_validate({"total": total, "items": items})
