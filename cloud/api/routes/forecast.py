"""Each site's depth forecast from rainfall (docs/rainfall-forecast.md): the band, the sites at
risk, and a refit on demand."""

from typing import Annotated

from fastapi import APIRouter, Query

from cloud.api.context import ApiContext
from cloud.api.deps import Ctx, Reader, role
from cloud.api.errors import responses
from cloud.api.models import AtRisk, AtRiskItem, FitOut, NodePath, SiteForecastOut
from cloud.auth import Principal
from cloud.db import reads
from cloud.forecast.service import Forecaster, NoHistory
from cloud.rainfall import iso

router = APIRouter(prefix="/api/v1", tags=["forecast"], responses=responses(401, 422))


def forecaster(ctx: ApiContext) -> Forecaster:
    """The collector's (it remembers which sites had too little history), else one for the call."""
    if ctx.forecaster is not None:
        return ctx.forecaster
    return Forecaster(ctx.store, ctx.clock, ctx.retention, ctx.ingestor, ctx.tickets)


@router.get("/sites/{site_id}/forecast", responses=responses(404))
async def site_forecast(site_id: NodePath, ctx: Ctx, who: Reader) -> SiteForecastOut:
    """The site's depth forecast of the last forecast round (``issued_at``: when it was issued):
    its latest fit run forward on its latest rainfall forecast. The same forecast the at-risk
    list and a ticket's prediction show; a new one every ``forecast.every_s`` and when a new
    rainfall forecast comes in (the live stream's ``forecast`` event says a round was stored).

    ``status`` says whether there is one: ``ok``; ``no_model`` (no fit yet, or no level sensor
    with thresholds); ``pending`` (fitted, no round has run the site since); ``no_rain`` (no
    rainfall forecast for the site); ``stale`` (the rainfall forecast or the depth is out of
    date); ``detail`` says why in words.
    """
    if not await reads.node_exists(ctx.store, site_id):
        raise NoHistory("not_found", f"no site {site_id!r}")
    return SiteForecastOut.model_validate(await forecaster(ctx).stored(site_id))


@router.get("/forecast/at-risk")
async def at_risk(
    ctx: Ctx,
    who: Reader,
    hours: Annotated[float, Query(gt=0, le=48, description="within how many hours from now")] = 3.0,
) -> AtRisk:
    """Sites likely (the collector's ``forecast.probability``) to cross warning or danger within
    ``hours``, soonest first, from each site's latest forecast run (every ``forecast.every_s``).
    ``name``: the registry's, else the one the site sent in its birth. ``status``
    ``no_forecasts`` when no site has a current forecast (an empty list then says nothing about
    the water); ``forecasting``, ``no_model``, ``no_rain``, ``stale`` count the sites by why;
    ``issued_at`` is when the last round ran (each item's, its site's forecast's)."""
    fc = forecaster(ctx)
    items = await fc.at_risk(hours)
    cover, last = await fc.coverage()
    for i in items:  # the registry's name for the site, where it has one (the dashboard's too)
        if ctx.registry.site_name(i["site_id"]) != i["site_id"]:
            i["name"] = ctx.registry.site_name(i["site_id"])
    return AtRisk(
        items=[AtRiskItem.model_validate(i) for i in items],
        status="forecasting" if cover["forecasting"] else "no_forecasts",
        forecasting=cover["forecasting"],
        no_model=cover["no_model"],
        no_rain=cover["no_rain"],
        stale=cover["stale"],
        issued_at=None if last is None else iso(last),
    )


@router.post("/sites/{site_id}/forecast/refit", responses=responses(403, 404))
async def refit(
    site_id: NodePath, ctx: Ctx, who: Annotated[Principal, role("forecaster", "admin")]
) -> FitOut:
    """Fit the site's model from its stored history now and keep the fit. 422 says why not (no
    level sensor with thresholds, too little history: how much there is, how much is needed).
    The collector's next forecast round runs at once, so the site's forecast uses the new fit."""
    fit = await forecaster(ctx).refit(site_id)
    if ctx.forecaster is not None:
        ctx.forecaster.wake.set()
    return FitOut.model_validate(fit)
