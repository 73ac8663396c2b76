"""``celery -A proj pools dashboard``: serve the web dashboard (the ``dashboard`` extra)."""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand

from celery_pools.context import get_extension

from .group import app_of, manager_of, option, pools, suspicious_after

try:
    from celery_pools.dashboard import Credentials, serve
except ImportError as missing:  # the extra is not installed: the command says how to get it
    serve = None  # type: ignore[assignment]
    _MISSING: ImportError | None = missing
else:
    _MISSING = None

__all__ = ["dashboard"]


@pools.command(cls=CeleryCommand)
@option(
    "--port", type=click.IntRange(min=1, max=65535), default=8808, show_default=True,
    help="Port to serve the dashboard on.",
)  # fmt: skip
@option("--addr", default="127.0.0.1", show_default=True, help="Address to listen on.")
@option(
    "--allowed-host", "allowed_hosts", multiple=True,
    help="A Host name it answers to besides loopback and --addr (a proxy's); repeatable.",
)  # fmt: skip
@option("--read-only", is_flag=True, help="Offer no action, whatever the credentials.")
@option(
    "--public", is_flag=True,
    help="Allow a non-loopback --addr with no credential configured (it then only reads).",
)  # fmt: skip
@click.pass_context
def dashboard(  # noqa: PLR0917 - one parameter per option, as click passes them
    ctx: click.Context,
    port: int,
    addr: str,
    allowed_hosts: tuple[str, ...],
    read_only: bool,
    public: bool,
) -> None:
    """Serve a web page of every pool (in use, free, waiting, waits, holders, waiters, advice,
    and the actions: create, resize, clear, delete, assign, rate limits, pauses) and its JSON
    API on http://ADDR:PORT/ until Ctrl-C.

    Changes need an operator credential (pools_dashboard_token, pools_dashboard_users); without
    one the dashboard only reads. Needs the dashboard extra: pip install
    'celery-pools[dashboard]'.
    """
    if serve is None:
        raise click.ClickException(
            f"the dashboard needs Starlette and uvicorn ({_MISSING}): "
            "pip install 'celery-pools[dashboard]'"
        )
    manager = manager_of(ctx)
    settings = get_extension(app_of(ctx)).settings
    credentials = Credentials(settings.dashboard_token, settings.dashboard_users)
    host = f"[{addr}]" if ":" in addr else addr
    click.echo(f"Serving the pools in {manager.store.url} on http://{host}:{port}/ (Ctrl-C stops).")
    serve(
        manager,
        host=addr,
        port=port,
        suspicious_after=suspicious_after(ctx),
        credentials=credentials,
        read_only=read_only,
        public=public,
        allowed_hosts=allowed_hosts,
    )
