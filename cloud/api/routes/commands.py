"""Commands to sites: signed, published, answered by the box."""

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException

from cloud.api.deps import Ctx, Reader, role
from cloud.api.errors import responses
from cloud.api.models import Command, CommandCreate, CommandId, Limit, NodeQ, Offset, Page
from cloud.auth import Principal
from floodgate.errors import ContractError

router = APIRouter(prefix="/api/v1", tags=["commands"], responses=responses(401, 422))


@router.get("/commands")
async def list_commands(
    ctx: Ctx, who: Reader, node: NodeQ | None = None, limit: Limit = 50, offset: Offset = 0
) -> Page[Command]:
    """Commands, newest first, with the box's answer once it came."""
    total, items = await ctx.commands.list(node, limit, offset)
    return Page[Command].model_validate({"total": total, "items": items})


@router.get("/commands/{cmd_id}", responses=responses(404))
async def get_command(cmd_id: CommandId, ctx: Ctx, who: Reader) -> Command:
    return Command.model_validate(await ctx.commands.get(cmd_id))


@router.post("/commands", status_code=202, responses=responses(400, 403, 413, 503))
async def send_command(
    body: Annotated[CommandCreate, Body()],
    ctx: Ctx,
    who: Annotated[Principal, role("operator", "dispatcher", "admin")],
) -> Command:
    """Sign and publish a command; 202: the box answers later (read it again by its id).

    ``args.force`` (opening a gate against the site's policy) is for admins and
    dispatchers only (403 otherwise); the caller's role goes into the signed
    command as ``args.role``.
    """
    try:
        sent = await ctx.commands.send(
            body.node,
            body.type,
            issued_by=who.actor,
            reason=body.reason,
            dev=body.dev,
            args=body.args,
            ttl_s=body.ttl_s,
            role=who.role,
        )
    except ContractError as exc:  # args the wire contract refuses for this command type
        raise HTTPException(422, f"the command does not fit the wire contract: {exc.detail}") from None
    return Command.model_validate(sent)
