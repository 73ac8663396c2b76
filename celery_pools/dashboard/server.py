"""The dashboard's web server: its pages, their static files and the JSON API, on Starlette.

Routes that read:

* ``GET /``: the overview page; ``GET /pools/{name}``: a pool's page; ``GET /static/...``: their
  scripts and style sheet (``static/`` beside this module; nothing from elsewhere).
* ``GET /api/pools``: every pool (:func:`.api.overview`); ``GET /api/pools/{name}``: one pool
  (:func:`.api.pool`); ``GET /api/pools/{name}/advice``: its sizing advice (:func:`.api.advice`);
  ``GET /api/info``: what the server is (its Redis, whether it takes changes and why not).

Routes that change pools (:mod:`.actions`), each with a JSON body, an operator credential and
from the dashboard's own origin (:mod:`.auth`): ``POST /api/pools`` (create), ``PATCH`` and
``DELETE /api/pools/{name}``, ``POST /api/pools/{name}/clear``, ``PUT`` and ``DELETE``
``/api/instances/{instance}`` (assign, unassign), ``/api/rates/{instance}`` (rate limit) and
``/api/pauses/{instance}`` (pause, resume); an instance name may hold ``/``, so each kind of
change has a prefix of its own. With no credential configured, or ``read_only``, they answer
403 and the pages offer no action.

Only requests whose ``Host`` is one of ``allowed_hosts`` are served (a DNS-rebinding page
reaches nothing).

Errors are ``{"error": message}``, with ``field``, ``value`` and ``allowed`` for an invalid
value: 400 invalid, 401 no valid credential, 403 refused (read-only, cross-site), 404 unknown
pool, 409 a pool of that name exists, 503 Redis unreachable. Every answer carries a
Content-Security-Policy that allows scripts, styles and requests to this server only, and
forbids framing. The pages build everything they show from the JSON with text nodes, never HTML
strings, so a name or a task field is always shown as text.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from celery_pools.errors import (
    PoolBackendError,
    PoolConfigError,
    PoolExistsError,
    PoolNotFoundError,
)
from celery_pools.manager import PoolManager

from . import actions, api
from .auth import Credentials, cross_site

__all__ = ["LOOPBACK_HOSTS", "SECURITY_HEADERS", "create_app", "is_loopback", "serve"]

STATIC = Path(__file__).resolve().parent / "static"
#: The ``Host`` names a dashboard on a loopback address answers to.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

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


def _error(status: int, message: str, **details: Any) -> JSONResponse:
    return JSONResponse({"error": message, **details}, status_code=status)


def _safe(value: object) -> object:
    """``value`` if JSON can carry it as it is, else its ``repr``."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return repr(value)


def _answer(read: Callable[[], Any]) -> Response:
    """``read()`` as JSON, or the error that stopped it."""
    try:
        return JSONResponse(read())
    except PoolNotFoundError as exc:
        return _error(404, str(exc))
    except PoolExistsError as exc:
        return _error(409, str(exc))
    except PoolConfigError as exc:
        return _error(400, str(exc), field=exc.field, value=_safe(exc.value), allowed=exc.allowed)
    except PoolBackendError as exc:
        return _error(503, f"Redis unreachable: {exc}")


def create_app(
    manager: PoolManager,
    *,
    suspicious_after: float,
    credentials: Credentials | None = None,
    read_only: bool = False,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
) -> Starlette:
    """The dashboard of ``manager``'s pools. Holders held past ``suspicious_after`` seconds are
    flagged. Changes need one of ``credentials``; with none, or ``read_only``, it only reads.
    Requests for another ``Host`` than ``allowed_hosts`` (names, without port) answer 400.
    Reads are synchronous (redis-py): Starlette runs them in its thread pool."""
    accepted = credentials or Credentials()
    if read_only:
        refusal = "this dashboard was started with --read-only"
    elif not accepted.configured:
        refusal = (
            "no operator credential is configured (pools_dashboard_token or "
            "pools_dashboard_users), so this dashboard only reads"
        )
    else:
        refusal = ""

    def overview(request: Request) -> Response:
        return _answer(lambda: api.overview(manager, suspicious_after))

    def pool(request: Request) -> Response:
        name = request.path_params["name"]
        return _answer(lambda: api.pool(manager, name, suspicious_after))

    def advice(request: Request) -> Response:
        name = request.path_params["name"]
        return _answer(lambda: api.advice(manager, name))

    def info(request: Request) -> Response:
        return JSONResponse(
            {"redis": manager.store.url, "read_only": bool(refusal), "why_read_only": refusal}
        )

    def page(file: str) -> Callable[[Request], Response]:
        def serve_page(request: Request) -> Response:
            return FileResponse(STATIC / file, media_type="text/html")

        return serve_page

    def change(act: Callable[[Request, Any], Any]) -> Callable[[Request], Awaitable[Response]]:
        """A route that changes pools: refused unless allowed, same-origin and authenticated."""

        async def route(request: Request) -> Response:
            if refusal:
                return _error(403, f"refused: {refusal}")
            headers = {k.lower(): v for k, v in request.headers.items()}
            why = cross_site(headers, headers.get("host", ""))
            if why is not None:
                return _error(403, f"refused as cross-site: {why}")
            if not accepted.accept(request.headers.get("authorization")):
                return _error(401, "an operator credential is needed: a bearer token or a user")
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return _error(400, "the request body is not JSON", field="request body")
            return await run_in_threadpool(_answer, lambda: act(request, body))

        return route

    def name_of(request: Request) -> str:
        return str(request.path_params["name"])

    def instance_of(request: Request) -> str:
        return str(request.path_params["instance"])

    # The changes: method, path, and what it does with the request and its JSON body.
    changes: list[tuple[str, str, Callable[[Request, Any], Any]]] = [
        ("POST", "/api/pools", lambda r, b: actions.create(manager, b)),
        ("PATCH", "/api/pools/{name}", lambda r, b: actions.update(manager, name_of(r), b)),
        ("DELETE", "/api/pools/{name}", lambda r, b: actions.delete(manager, name_of(r))),
        ("POST", "/api/pools/{name}/clear", lambda r, b: actions.clear(manager, name_of(r), b)),
        (
            "PUT",
            "/api/rates/{instance:path}",
            lambda r, b: actions.set_rate(manager, instance_of(r), b),
        ),
        (
            "DELETE",
            "/api/rates/{instance:path}",
            lambda r, b: actions.remove_rate(manager, instance_of(r)),
        ),
        (
            "PUT",
            "/api/pauses/{instance:path}",
            lambda r, b: actions.pause(manager, instance_of(r), b),
        ),
        (
            "DELETE",
            "/api/pauses/{instance:path}",
            lambda r, b: actions.resume(manager, instance_of(r)),
        ),
        (
            "PUT",
            "/api/instances/{instance:path}",
            lambda r, b: actions.assign(manager, instance_of(r), b),
        ),
        (
            "DELETE",
            "/api/instances/{instance:path}",
            lambda r, b: actions.unassign(manager, instance_of(r)),
        ),
    ]
    return Starlette(
        routes=[
            Route("/", page("overview.html")),
            Route("/pools/{name}", page("pool.html")),
            Route("/api/info", info),
            Route("/api/pools", overview, methods=["GET"]),
            Route("/api/pools/{name}", pool, methods=["GET"]),
            Route("/api/pools/{name}/advice", advice),
            *(Route(path, change(act), methods=[method]) for method, path, act in changes),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[
            Middleware(BaseHTTPMiddleware, dispatch=_secure),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
        ],
    )


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
    credentials: Credentials | None = None,
    read_only: bool = False,
    public: bool = False,
    allowed_hosts: Sequence[str] = (),
) -> None:
    """Serve the dashboard until interrupted (SIGINT, SIGTERM), answering to the ``Host`` names
    of loopback, ``host`` and ``allowed_hosts`` (the names a proxy in front of it uses).

    Raises :class:`PoolConfigError` for a ``host`` that is not a loopback address when no
    credential is configured, unless ``public`` says it is meant to be reachable from elsewhere
    without one (then anyone who reaches it sees every pool, and still changes nothing).
    """
    configured = credentials is not None and credentials.configured
    if not public and not configured and not is_loopback(host):
        raise PoolConfigError.invalid(
            "dashboard address",
            host,
            "a loopback address (127.0.0.1, ::1, localhost) while no operator credential is "
            "configured (pools_dashboard_token, pools_dashboard_users); --public serves it "
            "elsewhere anyway, read-only",
        )
    app = create_app(
        manager,
        suspicious_after=suspicious_after,
        credentials=credentials,
        read_only=read_only,
        allowed_hosts=[*LOOPBACK_HOSTS, host, *allowed_hosts],
    )
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning")
