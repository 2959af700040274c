"""Login, the caller, users and tokens."""

from fastapi import APIRouter, HTTPException, Request

from cloud.api.deps import Admin, Ctx, Reader
from cloud.api.errors import responses
from cloud.api.models import Login, Me, Session, Token, TokenCreate, User, UserCreate

router = APIRouter(prefix="/api/v1", tags=["auth"])
LOGIN_TTL_S = 12 * 3600


@router.post("/auth/login", responses=responses(401, 413, 422))
async def login(body: Login, request: Request, ctx: Ctx) -> Session:
    """A session token (12 h) for a user name and password."""
    request.state.actor = f"user:{body.username}"
    who = await ctx.auth.login(body.username, body.password)
    token = await ctx.auth.issue_token(who.username, label="login", ttl_s=LOGIN_TTL_S)
    return Session.model_validate(
        {"token": token, "username": who.username, "role": who.role, "unit": who.unit}
    )


@router.get("/me", responses=responses(401))
async def me(who: Reader) -> Me:
    return Me.model_validate(
        {"username": who.username, "role": who.role, "unit": who.unit, "actor": who.actor}
    )


@router.post("/users", status_code=201, responses=responses(401, 403, 409, 413, 422))
async def add_user(body: UserCreate, ctx: Ctx, who: Admin) -> User:
    p = await ctx.auth.add_user(body.username, body.role, body.password, body.unit, body.display_name)
    return User.model_validate({"username": p.username, "role": p.role, "unit": p.unit})


@router.post("/tokens", status_code=201, responses=responses(401, 403, 413, 422))
async def add_token(body: TokenCreate, ctx: Ctx, who: Reader) -> Token:
    """A token for the caller (or, for an admin, for anyone)."""
    username = body.username or who.username
    if username != who.username and who.role != "admin":
        raise HTTPException(403, "only an admin may issue tokens for someone else")
    return Token(token=await ctx.auth.issue_token(username, body.label, body.ttl_s), username=username)
