"""The ``pools`` command group and what its commands share: the app, its manager, options, JSON
output and confirmation."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from celery.bin.base import CeleryOption

from celery_pools.context import get_extension
from celery_pools.errors import PoolError
from celery_pools.manager import PoolManager
from celery_pools.portable import FORMATS

__all__ = [
    "app_of",
    "confirm",
    "format_option",
    "json_option",
    "manager_of",
    "option",
    "pools",
    "print_json",
    "suspicious_after",
    "yes_option",
]

F = TypeVar("F", bound=Callable[..., Any])


class _PoolsGroup(click.Group):
    """The ``pools`` group: turns celery-pools errors into ``Error: ...`` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PoolError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(name="pools", cls=_PoolsGroup)
@click.pass_context
def pools(ctx: click.Context) -> None:
    """Manage celery-pools connection pools (in the pools' Redis; no worker needed)."""


def app_of(ctx: click.Context) -> Any:
    """The Celery app the command runs for (``celery -A proj``). Without ``-A`` (or ``APP``)
    ``celery`` hands over its default app, configured only by ``--config``, ``-b`` or a
    ``celeryconfig`` module: if that names no Redis for pools, a usage error says how to name
    the app rather than a complaint about the default app's broker."""
    root = ctx.find_root()
    app = getattr(root.obj, "app", None)
    unnamed = root.command.name == "celery" and root.params.get("app") is None
    if app is None or (unnamed and not _names_a_redis(app)):
        raise click.UsageError("no Celery app: run it as 'celery -A proj pools ...'")
    return app


def _names_a_redis(app: Any) -> bool:
    try:
        get_extension(app).redis_url  # noqa: B018  (raises when the app names no Redis)
    except PoolError:
        return False
    return True


def manager_of(ctx: click.Context) -> PoolManager:
    """A manager of the app's pools."""
    return PoolManager(app_of(ctx))


def suspicious_after(ctx: click.Context) -> float:
    """The app's ``pools_suspicious_hold_seconds``."""
    return get_extension(app_of(ctx)).settings.suspicious_hold_seconds


def option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """A ``click.option`` in the style of ``celery``'s own options (:class:`CeleryOption`)."""
    decorator: Callable[[F], F] = click.option(*decls, cls=CeleryOption, **attrs)
    return decorator


#: ``--json``: print the command's result as JSON (the shapes of :mod:`celery_pools.views`).
json_option = option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (the management tasks' result) instead of text.",
)
#: ``--yes``/``-y``: do not ask for confirmation.
yes_option = option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


def format_option(text: str) -> Callable[[F], F]:
    """``--format json|yaml``, with what the default is."""
    return option("--format", "fmt", type=click.Choice(FORMATS), help=text)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON."""
    click.echo(json.dumps(data, indent=2))


def confirm(yes: bool, action: str, consequences: str) -> None:
    """Ask on a terminal whether to do ``action`` unless ``--yes``; elsewhere require ``--yes``.

    Without a terminal nobody can answer, and a destructive command must not guess.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(
            f"not confirmed: {action} ({consequences}) needs --yes when stdin is not a terminal"
        )
    click.confirm(f"{action[:1].upper()}{action[1:]} ({consequences})?", abort=True, err=True)
