"""Errors: one body for every refusal (models.Error), the handlers that make it, and what each
route documents.

- a request that does not fit its schema: 422 with ``detail`` (one sentence),
  ``code`` ``invalid`` and ``problems`` (one per field);
- a RequestError from the domain (tickets, commands, auth): its ``code``
  decides the status (STATUS);
- an HTTPException: its status, ``detail`` as given, ``code`` from its status (CODE_OF_STATUS).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud.api.models import NO_NUL, Error
from cloud.auth import Throttled
from floodgate.errors import RequestError

STATUS = {
    "not_found": 404,
    "conflict": 409,
    "still_wet": 409,
    "invalid": 422,
    "no_key": 422,
    "unavailable": 503,
    "unauthorized": 401,
    "forbidden": 403,
    "too_many": 429,
}
# The code of a refusal raised with a bare status (an HTTPException): every error body has one,
# for a client (the dashboard) to say it in its own language.
CODE_OF_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "too_many",
    503: "unavailable",
}
WHY = {
    400: "The request cannot be read",
    401: "No bearer token, or one that is unknown, expired or revoked",
    403: "The caller's role (or unit) may not do this",
    404: "No such thing",
    409: "Conflicts with the current state (a ticket in another state, a user who exists)",
    413: "The request body is larger than the API takes",
    422: "A parameter or body field is invalid; `problems` names each",
    429: "Too many attempts; `Retry-After` says when to try again",
    503: "A part the request needs (the broker, the database) is not available",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route or router: each code with the Error body and why it happens."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": Error, "description": WHY[code]}
        if code == 429:
            out[code]["headers"] = {
                "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
            }
        if code == 401:
            out[code]["headers"] = {
                "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
            }
    return out


def _problem(e: Any) -> str:
    """Pydantic's message, in words where its own are a regular expression, with the value given
    when it is short (never a password)."""
    if e.get("type") == "string_pattern_mismatch" and (e.get("ctx") or {}).get("pattern") == NO_NUL:
        msg = "may not contain U+0000 (NUL)"
    else:
        msg = str(e.get("msg", ""))
    given = e.get("input")
    secret = any("password" in str(p) for p in e.get("loc", ()))
    if isinstance(given, str | int | float) and not isinstance(given, bool) and not secret:
        shown = repr(given)
        if len(shown) <= 80:
            msg += f" (got {shown})"
    return msg


def error(status: int, detail: str, **more: Any) -> JSONResponse:
    body = Error(detail=detail, **more).model_dump(exclude_none=True)
    return JSONResponse(body, status)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "where": ".".join(str(p) for p in e.get("loc", ())),
                "problem": _problem(e),
                "code": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(f"{p['where']}: {p['problem']}" for p in problems) or "invalid request"
        return JSONResponse({"detail": detail, "code": "invalid", "problems": problems}, 422)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        status = STATUS.get(exc.code, 400)
        r = error(status, exc.message, code=exc.code)
        if status == 401:
            r.headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, Throttled):
            r.headers["Retry-After"] = str(exc.retry_after_s)
        return r

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        r = error(exc.status_code, str(exc.detail), code=CODE_OF_STATUS.get(exc.status_code))
        if exc.headers:
            r.headers.update(exc.headers)
        if exc.status_code == 405:  # every method the path has, not only the first route's
            r.headers["Allow"] = ", ".join(_methods(app, request.url.path))
        return r


def _methods(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI document lists for ``path``."""
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "methods", None)
    if table is None:
        table = []
        for template, ops in app.openapi()["paths"].items():
            rx = re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(template))
            table.append((re.compile(rx), sorted(m.upper() for m in ops)))
        app.state.methods = table
    return next((methods for rx, methods in table if rx.fullmatch(path)), [])
