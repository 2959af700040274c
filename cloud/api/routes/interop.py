"""Open311 GeoReport v2 and the CAP 1.2 feed: public and read-only, no token."""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response

from cloud.api.deps import Ctx
from cloud.api.errors import responses
from cloud.api.models import Service, ServiceRequest, TicketId
from cloud.api.models import TicketKind as Kind
from cloud.interop import SERVICES, cap_bytes

router = APIRouter()
ATOM = "application/atom+xml"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# RFC 3339 date-time (the offset is required), e.g. 2026-07-01T08:00:00+08:00 or ...Z
RFC3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
CAP = "application/cap+xml"
CAP_PAGE = 100
Page = Annotated[int, Query(ge=1, le=10_000, description="from 1")]


def _xml(media_type: str, what: str) -> dict[int | str, dict[str, object]]:
    return {200: {"description": what, "content": {media_type: {"schema": {"type": "string"}}}}}


def _ms(name: str, text: str) -> int:
    """Milliseconds since 1970 for an RFC 3339 date-time (year 1 to 9999), or 422."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise HTTPException(422, f"{name}: not a date and time: {exc}") from None
    return (t - EPOCH) // timedelta(milliseconds=1)


@router.get("/open311/v2/services.json", tags=["open311"])
async def open311_services() -> list[Service]:
    return [Service.model_validate(s) for s in SERVICES]


@router.get("/open311/v2/requests.json", tags=["open311"], responses=responses(422))
async def open311_requests(
    ctx: Ctx,
    service_code: Kind | None = None,
    status: Literal["open", "closed"] | None = None,
    start_date: Annotated[
        str | None, Query(pattern=RFC3339, json_schema_extra={"format": "date-time"})
    ] = None,
    end_date: Annotated[str | None, Query(pattern=RFC3339, json_schema_extra={"format": "date-time"})] = None,
    service_request_id: Annotated[str | None, Query(pattern=r"^[0-9A-Z,]{26,2700}$")] = None,
    page: Page = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[ServiceRequest]:
    """Service requests, newest first, ``page_size`` a page."""
    found = await ctx.interop.requests(
        service_code=service_code,
        status=status,
        start_ms=_ms("start_date", start_date) if start_date else None,
        end_ms=_ms("end_date", end_date) if end_date else None,
        ids=service_request_id.split(",") if service_request_id else None,
        limit=page_size,
        offset=(page - 1) * page_size,
    )
    return [ServiceRequest.model_validate(r) for r in found]


@router.get("/open311/v2/requests/{request_id}.json", tags=["open311"], responses=responses(404, 422))
async def open311_request(request_id: TicketId, ctx: Ctx) -> list[ServiceRequest]:
    found = await ctx.interop.requests(ids=[request_id])
    if not found:
        raise HTTPException(404, f"no service request {request_id}")
    return [ServiceRequest.model_validate(r) for r in found]


@router.get(
    "/cap/v1.2/feed.atom",
    tags=["cap"],
    response_class=Response,
    responses={
        **_xml(ATOM, "An Atom feed with the latest CAP message of each current public warning"),
        **responses(422),
    },
)
async def cap_feed(ctx: Ctx, page: Page = 1) -> Response:
    """CAP_PAGE episodes a page, the most recently changed first; a full page links the next."""
    messages = await ctx.interop.cap_messages(limit=CAP_PAGE, offset=(page - 1) * CAP_PAGE)
    body = ctx.interop.atom_feed(messages, next_page=page + 1 if len(messages) == CAP_PAGE else None)
    return Response(body, media_type=ATOM)


@router.get(
    "/cap/v1.2/alerts/{identifier}.xml",
    tags=["cap"],
    response_class=Response,
    responses={**_xml(CAP, "One CAP 1.2 message"), **responses(404, 422)},
)
async def cap_alert(ctx: Ctx, identifier: Annotated[str, Path(pattern=r"^[0-9A-Z]{26}$")]) -> Response:
    m = await ctx.interop.cap_message_by_id(identifier)
    if m is None:
        raise HTTPException(404, f"no public warning message {identifier}")
    return Response(cap_bytes(m), media_type=CAP)
