"""The application: middleware, error handlers, the routers and the dashboard's files."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.api import errors
from cloud.api.context import ApiContext
from cloud.api.routes import (
    alerts,
    auth,
    commands,
    forecast,
    interop,
    measures,
    ops,
    rainfall,
    reports,
    sites,
    tickets,
    vocab,
)
from cloud.dashboard import STATIC
from cloud.db import auth as db_auth

log = logging.getLogger("floodgate.cloud.api")
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Floodgate collector API",
        version="1",
        description="Nodes, readings, alerts, tickets through the closed loop, commands, measures.",
        docs_url=None,  # served below from files the collector ships, not from a CDN
        redoc_url=None,
    )
    app.state.ctx = ctx
    errors.install(app)
    for r in (
        ops,
        auth,
        sites,
        alerts,
        tickets,
        commands,
        measures,
        reports,
        interop,
        rainfall,
        forecast,
        vocab,
    ):
        app.include_router(r.router)

    app.add_middleware(BodyLimit, max_bytes=ctx.max_body_bytes)  # inside the audit: 413s are audited
    app.add_middleware(ServerTime, now_ms=ctx.clock.now_ms)

    @app.middleware("http")
    async def audit_writes(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Every write under /api/ is recorded with who did it and the response status."""
        response = await call_next(request)
        if request.method in WRITES and request.url.path.startswith("/api/"):
            actor = getattr(request.state, "actor", "anonymous")
            try:
                await db_auth.audited(
                    ctx.store,
                    ctx.clock.now_ms(),
                    actor,
                    request.method,
                    request.url.path,
                    response.status_code,
                )
            except Exception:
                log.exception("could not write the audit record")
        return response

    # The dashboard: static files, no CDN.
    app.mount("/dashboard", StaticFiles(directory=STATIC), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        """What a browser asks for by itself (the pages name the SVG): the same icon."""
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    # The API's own documentation in Swagger UI, from the assets of the pinned fastapi-offline
    # package: nothing is loaded from another origin. (No ReDoc: it fetches its logo from a CDN.)
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    return app


class _TooLarge(Exception):
    pass


SERVER_TIME = b"x-server-time-ms"


class ServerTime:
    """Every answer says the collector's time (``X-Server-Time-Ms``, ms since the epoch) as it
    starts: the dashboard counts deadlines and countdowns to it, not to the browser's clock,
    which on an office PC may be minutes off."""

    def __init__(self, app: ASGIApp, now_ms: Callable[[], int]) -> None:
        self.app = app
        self.now_ms = now_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                stamp = (SERVER_TIME, str(self.now_ms()).encode())
                message = {**message, "headers": [*message.get("headers", []), stamp]}
            await send(message)

        await self.app(scope, receive, stamped)


class BodyLimit:
    """Refuse a request body over ``max_bytes`` with 413: by its Content-Length before reading it,
    or as soon as a body without one (chunked) passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        r = errors.error(413, f"the request body is larger than {self.max_bytes} bytes", code="too_large")
        r.headers["Connection"] = "close"
        await send({"type": "http.response.start", "status": 413, "headers": r.raw_headers})
        await send({"type": "http.response.body", "body": r.body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        refused = False

        async def limited() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    await self._refuse(send)
                    raise _TooLarge
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited, unless_refused)
        except Exception:
            if not refused:
                raise
