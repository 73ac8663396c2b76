"""The operator's commands: ``exporter`` (Prometheus), ``advise`` (sizing) and ``acl`` (the
Redis ACL user pool state needs)."""

from __future__ import annotations

import signal
import threading

import click
from celery.bin.base import CeleryCommand

from celery_pools import views
from celery_pools.advisor import advise_pool
from celery_pools.context import get_extension
from celery_pools.exporter import serve
from celery_pools.store import acl_setuser

from .group import app_of, json_option, manager_of, option, pools, print_json, suspicious_after

__all__ = ["acl", "advise", "exporter"]

_PORT_HELP = "Port to serve /metrics on (0: any free port)."
_HEADROOM_HELP = "Fraction added to the observed concurrency for spikes (0.3 = 30 %)."
_BACKEND_MAX_HELP = "The backend's own cap on connections (shared by every deployment)."
_RESERVE_HELP = "Connections of --backend-max kept for others (admins, other apps); default 0."
_DEPLOYMENTS_HELP = "Deployments sharing --backend-max; default 1."


@pools.command(cls=CeleryCommand)
@option("--port", type=click.IntRange(min=0, max=65535), required=True, help=_PORT_HELP)
@option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.pass_context
def exporter(ctx: click.Context, port: int, addr: str) -> None:
    """Serve every pool's metrics to Prometheus on http://ADDR:PORT/metrics until Ctrl-C.

    Redis is read at each scrape. Needs the prometheus extra:
    pip install 'celery-pools[prometheus]'.
    """
    store = manager_of(ctx).store
    try:
        server = serve(store, port, addr, suspicious_after=suspicious_after(ctx))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {addr}:{port}: {exc.strerror or exc}"
        ) from exc
    host = f"[{addr}]" if ":" in addr else addr
    click.echo(
        f"Serving the metrics of the pools in {store.url} on "
        f"http://{host}:{server.server_port}/metrics (Ctrl-C to stop)."
    )
    stopped = threading.Event()
    restore = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (docker stop, systemd, kill) stops it as cleanly as Ctrl-C.
        restore = signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
    click.echo("Stopped.")


@pools.command(cls=CeleryCommand)
@option("--user", default="celery-pools", show_default=True, help="The ACL user's name.")
@click.pass_context
def acl(ctx: click.Context, user: str) -> None:
    """Print the ACL SETUSER line of a Redis user that may hold this app's pool state and
    nothing else: the keys of its pools_key_prefix, the commands celery-pools sends.

    Run it on the pools' Redis (redis-cli), put the password in place of <password>, and give
    the user in pools_redis_url (redis://celery-pools:PASSWORD@host:6379/0). The pools' Redis
    is asked its version: CLIENT SETINFO is allowed only where Redis has it (7.2 and newer).
    """
    ext = get_extension(app_of(ctx))
    version = ext.store.redis_version()
    if version is None:
        click.echo(
            "# could not read the Redis version (INFO): on Redis 7.2 or newer, add +client|setinfo",
            err=True,
        )
    click.echo(acl_setuser(user, ext.settings.key_prefix, redis_version=version))


@pools.command(cls=CeleryCommand)
@click.argument("name")
@option("--headroom", type=float, default=0.3, show_default=True, help=_HEADROOM_HELP)
@option("--backend-max", type=click.IntRange(min=1), help=_BACKEND_MAX_HELP)
@option("--reserve", type=click.IntRange(min=0), help=_RESERVE_HELP)
@option("--deployments", type=click.IntRange(min=1), help=_DEPLOYMENTS_HELP)
@json_option
@click.pass_context
def advise(  # noqa: PLR0917 - one parameter per option, as click passes them
    ctx: click.Context,
    name: str,
    headroom: float,
    backend_max: int | None,
    reserve: int | None,
    deployments: int | None,
    as_json: bool,
) -> None:
    """Recommend a limit for pool NAME from its metrics, showing the arithmetic.

    Concurrency needed = observed arrival rate x p95 time a slot is held, plus headroom. With
    --backend-max, each deployment may have at most (backend max - reserve) / deployments.
    """
    if backend_max is None and (reserve is not None or deployments is not None):
        raise click.UsageError("--reserve and --deployments need --backend-max")
    metrics = manager_of(ctx).metrics(name)
    advice = advise_pool(
        metrics,
        headroom=headroom,
        backend_max=backend_max,
        reserve=reserve or 0,
        deployments=deployments or 1,
    )
    if as_json:
        print_json(views.advice(name, advice))
        return
    if advice.recommended is None:
        headline = f"Pool {name}: no recommendation yet (limit {metrics.status.limit})."
    else:
        headline = (
            f"Pool {name}: recommended limit {advice.recommended} (now {metrics.status.limit})."
        )
    click.echo(headline)
    if advice.per_deployment_cap is not None:
        click.echo(f"Per-deployment cap: {advice.per_deployment_cap}.")
    click.echo("")
    click.echo(advice.explain())
