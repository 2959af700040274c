"""Login, the caller, users and tokens."""

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Path, Request, Response

from cloud.api.deps import Admin, Ctx, Reader
from cloud.api.errors import responses
from cloud.api.models import Login, Me, Session, Token, TokenCreate, User, UserCreate
from cloud.auth import DAY_S, TOKEN_ID, USER_TOKEN_MAX_S

router = APIRouter(prefix="/api/v1", tags=["auth"])
LOGIN_TTL_S = 12 * 3600


@router.post("/auth/login", responses=responses(400, 401, 413, 422, 429))
async def login(body: Login, request: Request, ctx: Ctx) -> Session:
    """A session token (12 h) for a user name and password.

    After 5 failed logins in a row for a user name, or 20 from one client
    address, each further attempt waits 1 s, then 2, 4, … up to 15 min after
    the last failure (429 with Retry-After), before any password is checked."""
    request.state.actor = f"user:{body.username}"
    client = request.client.host if request.client else None
    who = await ctx.auth.login(body.username, body.password, client)
    token = await ctx.auth.issue_token(who.username, label="login", ttl_s=LOGIN_TTL_S)
    return Session.model_validate(
        {"token": token, "username": who.username, "role": who.role, "unit": who.unit}
    )


@router.get("/me", responses=responses(401))
async def me(who: Reader) -> Me:
    return Me.model_validate(
        {"username": who.username, "role": who.role, "unit": who.unit, "actor": who.actor}
    )


@router.post("/users", status_code=201, responses=responses(400, 401, 403, 409, 413, 422))
async def add_user(body: Annotated[UserCreate, Body()], ctx: Ctx, who: Admin) -> User:
    p = await ctx.auth.add_user(body.username, body.role, body.password, body.unit, body.display_name)
    return User.model_validate({"username": p.username, "role": p.role, "unit": p.unit})


@router.post("/tokens", status_code=201, responses=responses(400, 401, 403, 404, 413, 422))
async def add_token(body: TokenCreate, ctx: Ctx, who: Reader) -> Token:
    """A token for the caller (12 h unless ``ttl_s`` says otherwise, at most 7 days); an admin may
    make one for anyone, up to 366 days (a service token)."""
    username = body.username or who.username
    if username != who.username and who.role != "admin":
        raise HTTPException(403, "only an admin may issue tokens for someone else")
    ttl_s = body.ttl_s or LOGIN_TTL_S
    if ttl_s > USER_TOKEN_MAX_S and who.role != "admin":
        raise HTTPException(
            403, f"only an admin may issue tokens for longer than {USER_TOKEN_MAX_S // DAY_S} days"
        )
    if not await ctx.auth.exists(username):
        raise HTTPException(404, f"no user {username!r}")
    token, expires_ms = await ctx.auth.issue(username, body.label, ttl_s)
    return Token(token=token, id=token.split("_")[1], username=username, expires_ms=expires_ms)


@router.delete("/tokens/{token_id}", status_code=204, responses=responses(401, 403, 404, 422))
async def revoke_token(
    token_id: Annotated[str, Path(pattern=f"^{TOKEN_ID.pattern}$", examples=["3f9c2a7d10b4e865"])],
    ctx: Ctx,
    who: Reader,
) -> Response:
    """Revoke a token by its id (``fgt_<id>_…``): the caller any of its own (the one it calls with
    too: a logout), an admin anyone's. It is refused from the next request on, and a live stream
    opened with it ends. Revoking a revoked token again is no error."""
    owner = await ctx.auth.token_owner(token_id)
    if owner is None:
        raise HTTPException(404, f"no token {token_id}")
    if owner != who.username and who.role != "admin":
        raise HTTPException(403, "only an admin may revoke someone else's token")
    await ctx.auth.revoke(token_id)
    return Response(status_code=204)
