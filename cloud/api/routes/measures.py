"""Measures: on-time handling per unit and month, alerts and depth per site and season."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from cloud.api.deps import Ctx, Reader
from cloud.api.errors import responses
from cloud.api.models import SiteMeasure, UnitMeasure

MONTH = r"^[12][0-9]{3}-(0[1-9]|1[0-2])$"
router = APIRouter(prefix="/api/v1/measures", tags=["measures"], responses=responses(401, 422))


@router.get("/units")
async def unit_measures(
    ctx: Ctx, who: Reader, month: Annotated[str, Query(pattern=MONTH, examples=["2026-07"])]
) -> list[UnitMeasure]:
    try:
        rows = await ctx.measures.units(month)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return [UnitMeasure.model_validate(r) for r in rows]


@router.get("/sites")
async def site_measures(
    ctx: Ctx, who: Reader, season: Annotated[int, Query(ge=2000, le=2100)]
) -> list[SiteMeasure]:
    return [SiteMeasure.model_validate(r) for r in await ctx.measures.sites(season)]
