"""Typed dependencies: the context and its parts, the caller, and the roles a route needs.

A route names what it uses in its signature (``ctx: Ctx``, ``who: Reader``,
``who: Annotated[Principal, role("admin")]``); FastAPI resolves it per request and
documents the bearer scheme in the OpenAPI document.
"""

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud.api.context import ApiContext
from cloud.auth import AuthError, Principal
from cloud.db.store import Store
from floodgate.clock import Clock

bearer = HTTPBearer(auto_error=False, description="a token from POST /api/v1/auth/login or an admin")


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(context)]


def _store(ctx: Ctx) -> Store:
    return ctx.store


def _clock(ctx: Ctx) -> Clock:
    return ctx.clock


StoreDep = Annotated[Store, Depends(_store)]
ClockDep = Annotated[Clock, Depends(_clock)]


def unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


async def principal(
    request: Request, ctx: Ctx, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The caller behind the bearer token, or 401."""
    if cred is None or cred.scheme.lower() != "bearer":
        raise unauthorized("a bearer token is needed")
    try:
        who = await ctx.auth.authenticate(cred.credentials)
    except AuthError as exc:
        raise unauthorized(exc.message) from None
    request.state.actor = who.actor
    return who


Reader = Annotated[Principal, Depends(principal)]


def role(*roles: str) -> Any:
    """``who: Annotated[Principal, role("dispatcher", "admin")]``: 403 naming the roles that would do."""

    async def check(who: Reader) -> Principal:
        if who.role not in roles:
            raise HTTPException(403, f"role {who.role!r} may not do this (needs {' or '.join(roles)})")
        return who

    return Depends(check)


Admin = Annotated[Principal, role("admin")]
