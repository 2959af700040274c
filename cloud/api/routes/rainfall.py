"""Rainfall forecasts and nowcasts from the weather service (docs/rainfall-forecast.md)."""

from typing import Annotated, Any

from fastapi import APIRouter, Body

from cloud.api.deps import Ctx, Reader, role
from cloud.api.errors import responses
from cloud.api.models import NodeQ, RainfallAccepted, RainfallForecast
from cloud.auth import Principal
from cloud.rainfall import Forecasts, iso

router = APIRouter(prefix="/api/v1", tags=["rainfall"], responses=responses(401, 422))

DOC = (
    "A forecast document in the `floodgate.rainfall/1` format (docs/rainfall-forecast.md): "
    "`format`, `issued`, `source`, `steps` and `sites` (or `grid` and `cells`)."
)


@router.post("/rainfall-forecasts", status_code=201, responses=responses(403, 413))
async def post_rainfall_forecast(
    doc: Annotated[dict[str, Any], Body(description=DOC)],
    ctx: Ctx,
    who: Annotated[Principal, role("forecaster", "admin")],
) -> RainfallAccepted:
    """Store a rainfall forecast or nowcast, one series per site it covers.

    422 names the path to the first bad field (``sites.0.mm_h.3: must be a finite
    number``; ``issued`` further than ``forecast.issued_ahead_min``, 10 min, past the
    collector's clock) and nothing of the document is stored. The same forecast of a site taken
    again (same issue time, source, steps and series) is not stored again: ``unchanged``
    names those sites.
    """
    fc = await forecasts(ctx).accept(doc, f"api {who.actor}")
    return RainfallAccepted(
        issued=iso(fc.issued_ms),
        source=fc.source,
        steps=len(fc.steps_ms) - 1,
        sites=sorted(fc.by_site),
        unchanged=list(fc.unchanged),
    )


@router.get("/rainfall-forecasts")
async def latest_rainfall_forecasts(
    ctx: Ctx, who: Reader, node: NodeQ | None = None
) -> list[RainfallForecast]:
    """The latest forecast of every site (or of ``node``): the latest issue time, then the last received."""
    return [RainfallForecast.model_validate(r) for r in await forecasts(ctx).latest(node)]


def forecasts(ctx: Ctx) -> Forecasts:
    """The collector's settings: its forecaster is woken by a new forecast (the sites run on it)."""
    if ctx.forecaster is None:
        return Forecasts(ctx.store, ctx.clock)
    ahead = int(ctx.forecaster.s.issued_ahead_min * 60_000)
    return Forecasts(ctx.store, ctx.clock, ctx.forecaster.wake.set, ahead)
