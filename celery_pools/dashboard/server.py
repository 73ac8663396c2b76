"""The dashboard's web server: its pages, their static files and the JSON API, on Starlette.

Routes:

* ``GET /``: the overview page; ``GET /pools/{name}``: a pool's page; ``GET /static/...``: their
  script and style sheet (``static/`` beside this module; nothing from elsewhere).
* ``GET /api/pools``: every pool (:func:`.api.overview`); ``GET /api/pools/{name}``: one pool
  (:func:`.api.pool`); ``GET /api/pools/{name}/advice``: its sizing advice (:func:`.api.advice`);
  ``GET /api/info``: what the server is (its Redis, read-only or not).

An unknown pool answers 404, an invalid name 400 and an unreachable Redis 503, each with
``{"error": message}`` naming what failed. Every answer carries a Content-Security-Policy that
allows scripts, styles and requests to this server only, and forbids framing. The pages build
everything they show from the JSON with text nodes, never HTML strings, so a name or a task field
is always shown as text.

This release's dashboard only reads: every route is a ``GET`` and nothing in it writes to Redis.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from celery_pools.errors import PoolBackendError, PoolConfigError, PoolNotFoundError
from celery_pools.manager import PoolManager

from . import api

__all__ = ["SECURITY_HEADERS", "create_app", "is_loopback", "serve"]

STATIC = Path(__file__).resolve().parent / "static"

#: Headers on every answer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


async def _secure(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = await call_next(request)
    response.headers.update(SECURITY_HEADERS)
    return response


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _answer(read: Callable[[], Any]) -> Response:
    """``read()`` as JSON, or the error that stopped it."""
    try:
        return JSONResponse(read())
    except PoolNotFoundError as exc:
        return _error(404, str(exc))
    except PoolConfigError as exc:
        return _error(400, str(exc))
    except PoolBackendError as exc:
        return _error(503, f"Redis unreachable: {exc}")


def create_app(
    manager: PoolManager, *, suspicious_after: float, read_only: bool = True
) -> Starlette:
    """The dashboard of ``manager``'s pools. Holders held past ``suspicious_after`` seconds are
    flagged. Handlers are synchronous (redis-py): Starlette runs them in its thread pool."""

    def overview(request: Request) -> Response:
        return _answer(lambda: api.overview(manager, suspicious_after))

    def pool(request: Request) -> Response:
        name = request.path_params["name"]
        return _answer(lambda: api.pool(manager, name, suspicious_after))

    def advice(request: Request) -> Response:
        name = request.path_params["name"]
        return _answer(lambda: api.advice(manager, name))

    def info(request: Request) -> Response:
        return JSONResponse({"redis": manager.store.url, "read_only": read_only})

    def page(file: str) -> Callable[[Request], Response]:
        def serve_page(request: Request) -> Response:
            return FileResponse(STATIC / file, media_type="text/html")

        return serve_page

    app = Starlette(
        routes=[
            Route("/", page("overview.html")),
            Route("/pools/{name}", page("pool.html")),
            Route("/api/info", info),
            Route("/api/pools", overview),
            Route("/api/pools/{name}", pool),
            Route("/api/pools/{name}/advice", advice),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=_secure)],
    )

    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    manager: PoolManager,
    *,
    host: str = "127.0.0.1",
    port: int = 8808,
    suspicious_after: float,
    public: bool = False,
) -> None:
    """Serve the dashboard until interrupted (SIGINT, SIGTERM).

    Raises :class:`PoolConfigError` for a ``host`` that is not a loopback address unless
    ``public`` says that it is meant to be reachable from elsewhere: the dashboard has no
    credentials of its own, so anyone who reaches it sees every pool.
    """
    if not public and not is_loopback(host):
        raise PoolConfigError.invalid(
            "dashboard address",
            host,
            "a loopback address (127.0.0.1, ::1, localhost); the dashboard has no credentials, "
            "so serving it elsewhere needs --public",
        )
    app = create_app(manager, suspicious_after=suspicious_after)
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning")
