"""The office's monthly report: the unit ranking of a month and the season per site, as CSV and PDF."""

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response

from cloud import report
from cloud.api.deps import Ctx, Reader
from cloud.api.errors import responses
from cloud.api.routes.measures import MONTH

router = APIRouter(prefix="/api/v1/reports", tags=["measures"], responses=responses(401, 422))
Month = Annotated[str, Query(pattern=MONTH, examples=["2026-07"])]
Season = Annotated[int, Query(ge=2000, le=2100, examples=[2026])]
Lang = Annotated[report.Lang, Query(description="the report's language")]
CSV = "text/csv"
PDF = "application/pdf"


def _file(media_type: str, what: str, *errors: int) -> dict[int | str, dict[str, Any]]:
    schema = {"type": "string", "format": "binary"} if media_type == PDF else {"type": "string"}
    return {200: {"description": what, "content": {media_type: {"schema": schema}}}, **responses(*errors)}


def _attachment(body: bytes, media_type: str, name: str) -> Response:
    return Response(
        body, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


async def _ranking(ctx: Ctx, month: str) -> list[dict[str, Any]]:
    try:
        return report.ranked(await ctx.measures.units(month))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _unit_name(ctx: Ctx, lang: str) -> Callable[[str], str]:
    """Units by the registry's name in the report's language (``name_en`` in English, where given)."""
    registry = ctx.tickets.registry
    return lambda unit: registry.unit_name(unit, lang)


def _site_name(ctx: Ctx, lang: str) -> Callable[[str], str]:
    registry = ctx.tickets.registry
    return lambda node: registry.site_name(node, lang)


async def _pdf(ctx: Ctx, build: Callable[..., bytes], *args: Any) -> bytes:
    try:
        font = await asyncio.to_thread(report.find_font, ctx.report_font)
        async with ctx.report_slot:
            body: bytes = await asyncio.to_thread(build, *args, font, ctx.clock.now_ms(), ctx.measures.tz)
    except report.NoFont as exc:
        raise HTTPException(503, str(exc)) from None
    return body


@router.get("/units.csv", response_class=Response, responses=_file(CSV, "The ranking, one unit a row"))
async def units_csv(ctx: Ctx, who: Reader, month: Month, lang: Lang = "zh") -> Response:
    """The month's unit ranking (一月一排名) as CSV (UTF-8 with a BOM): rank, unit, then the numbers
    of ``/api/v1/measures/units`` unrounded."""
    rows = await _ranking(ctx, month)
    body = report.units_csv(rows, _unit_name(ctx, lang), lang)
    return _attachment(body.encode(), f"{CSV}; charset=utf-8", f"units-{month}.csv")


@router.get("/units.pdf", response_class=Response, responses=_file(PDF, "The ranking, printable", 503))
async def units_pdf(ctx: Ctx, who: Reader, month: Month, lang: Lang = "zh") -> Response:
    """The month's unit ranking as a printable PDF (A4): charts of on-time handling and acceptance,
    then the table. 503 when the collector has no font with Chinese glyphs."""
    rows = await _ranking(ctx, month)
    body = await _pdf(ctx, report.units_pdf, rows, _unit_name(ctx, lang), month, lang)
    return _attachment(body, PDF, f"units-{month}.pdf")


@router.get("/sites.csv", response_class=Response, responses=_file(CSV, "The season, one site a row"))
async def sites_csv(ctx: Ctx, who: Reader, season: Season, lang: Lang = "zh") -> Response:
    """The flood season per site as CSV (UTF-8 with a BOM), with the numbers of
    ``/api/v1/measures/sites``."""
    rows = await ctx.measures.sites(season)
    body = report.sites_csv(rows, _site_name(ctx, lang), lang)
    return _attachment(body.encode(), f"{CSV}; charset=utf-8", f"sites-{season}.csv")


@router.get("/sites.pdf", response_class=Response, responses=_file(PDF, "The season, printable", 503))
async def sites_pdf(ctx: Ctx, who: Reader, season: Season, lang: Lang = "zh") -> Response:
    """The flood season per site as a printable PDF (A4): charts of peak depth and of warnings and
    dangers, then the table. 503 when the collector has no font with Chinese glyphs."""
    rows = await ctx.measures.sites(season)
    span = ctx.measures.season
    body = await _pdf(ctx, report.sites_pdf, rows, _site_name(ctx, lang), season, span, lang)
    return _attachment(body, PDF, f"sites-{season}.pdf")
