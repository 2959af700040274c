"""Tickets through the closed loop: list, read, open, and one route per action."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query

from cloud.api.deps import Ctx, Reader, role
from cloud.api.errors import responses
from cloud.api.models import (
    ACTION_BODY,
    Limit,
    NodeQ,
    Offset,
    Page,
    Ticket,
    TicketAction,
    TicketCreate,
    TicketDetail,
    TicketId,
    UnitQ,
)
from cloud.api.models import TicketKind as Kind
from cloud.auth import Principal
from cloud.db import reads
from cloud.tickets import allowed_actions
from floodgate.vocab import ACTIONS, State

router = APIRouter(prefix="/api/v1", tags=["tickets"], responses=responses(401, 422))

# Who may do which ticket action: the vocabulary's. accept, reject and report are the unit's
# own: an admin may do them for the unit (recorded as such, not counted in its measures).
ACTION_ROLES: dict[str, tuple[str, ...]] = {k: a.roles for k, a in ACTIONS.items()}


def _detail(ticket: dict[str, Any], who: Principal) -> TicketDetail:
    """A ticket as the caller sees it: with the actions they may take on it now."""
    mine = allowed_actions(ticket["state"], ticket["unit"], who.role, who.unit)
    return TicketDetail.model_validate({**ticket, "allowed_actions": mine})


UNIT_ACTIONS = ("accept", "reject", "report")


@router.get("/tickets")
async def list_tickets(
    ctx: Ctx,
    who: Reader,
    state: Annotated[list[State] | None, Query(max_length=7)] = None,
    unit: UnitQ | None = None,
    node: NodeQ | None = None,
    kind: Kind | None = None,
    overdue: bool | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[Ticket]:
    """Tickets, newest first."""
    total, items = await ctx.tickets.list(
        state=state or (), unit=unit, node=node, kind=kind, overdue=overdue, limit=limit, offset=offset
    )
    return Page[Ticket].model_validate({"total": total, "items": items})


@router.get("/tickets/{ticket_id}", responses=responses(404))
async def get_ticket(ticket_id: TicketId, ctx: Ctx, who: Reader) -> TicketDetail:
    """A ticket with its timeline and the alert episodes it holds."""
    return _detail(await ctx.tickets.get(ticket_id), who)


@router.post("/tickets", status_code=201, responses=responses(400, 403, 404, 409, 413))
async def open_ticket(
    body: TicketCreate, ctx: Ctx, who: Annotated[Principal, role("dispatcher", "admin")]
) -> TicketDetail:
    """A ticket opened by a person (a call, a patrol) for a registered node; 409 if one is open
    for the node and kind."""
    if not await reads.node_exists(ctx.store, body.node):
        raise HTTPException(
            404, f"no node {body.node!r} is known (a node is known once it has sent a message)"
        )
    ticket, events = await ctx.tickets.open_manual(who.actor, body.node, body.kind, body.priority, body.note)
    await ctx.tell(events)
    return _detail(ticket, who)


def _action_route(action: str) -> None:
    allowed = ACTION_ROLES[action]

    async def act(
        ticket_id: TicketId,
        body: Annotated[TicketAction, Body()],
        ctx: Ctx,
        who: Annotated[Principal, role(*allowed)],
    ) -> TicketDetail:
        actor, counted = who.actor, True
        if body.unit is not None and body.unit not in ctx.tickets.registry.units:
            raise HTTPException(404, f"no unit {body.unit!r} in the site registry")
        if action == "merge" and body.of is not None:
            await ctx.tickets.get(body.of)  # 404 when there is no such ticket
        if who.role == "unit":
            current = await ctx.tickets.get(ticket_id)
            if current["unit"] != who.unit:
                raise HTTPException(403, f"ticket {ticket_id} is for {current['unit']}, not {who.unit}")
        elif action in UNIT_ACTIONS:  # an admin, for the unit
            current = await ctx.tickets.get(ticket_id)
            actor, counted = f"{who.actor} for unit:{current['unit']}", False
        ticket, events = await ctx.tickets.act(
            ticket_id,
            action,
            actor,
            unit=body.unit,
            note=body.note,
            score=body.score,
            photo_url=body.photo_url,
            of=body.of,
            counted=counted,
            confirm=body.confirm,
        )
        await ctx.tell(events)
        return _detail(ticket, who)

    # Each action's body model (a note, a score, the other ticket) as its parameter's type.
    act.__annotations__["body"] = Annotated[ACTION_BODY.get(action, TicketAction), Body()]
    router.post(
        f"/tickets/{{ticket_id}}/{action}",
        name=f"ticket_{action}",
        summary=f"{action.capitalize()} a ticket ({', '.join(allowed)})",
        responses=responses(400, 403, 404, 409, 413),
    )(act)


for _action in ACTION_ROLES:
    _action_route(_action)
