"""The rate-limit commands: ``rate``, ``unrate``, ``pause``, ``resume``."""

from __future__ import annotations

import math

import click
from celery.bin.base import CeleryCommand

from celery_pools import views

from .group import json_option, manager_of, option, pools, print_json
from .output import clock, duration

__all__ = ["pause", "rate_", "resume", "unrate"]

_BURST_HELP = "Extra calls that may start at once after a quiet spell."


@pools.command(name="rate", cls=CeleryCommand)
@click.argument("instance")
@click.argument("rate")
@option("--burst", type=int, default=0, show_default=True, help=_BURST_HELP)
@json_option
@click.pass_context
def rate_(ctx: click.Context, instance: str, rate: str, burst: int, as_json: bool) -> None:
    """Limit connector INSTANCE to RATE calls, shared by every worker ('60/m', '10/s', '1000/h',
    '5/10s'), replacing any rate limit it had. Obeyed by the next acquisition."""
    manager = manager_of(ctx)
    previous = manager.rate_limits().get(instance)
    limit = manager.set_rate_limit(instance, rate, burst=burst)
    if as_json:
        # The set_rate_limit management task's result, and the limit replaced (or null).
        print_json(
            {
                **views.rate_limit(instance, limit),
                "previous": None if previous is None else str(previous),
            }
        )
        return
    was = f" (was {previous})" if previous is not None and previous != limit else ""
    click.echo(f"Rate limit of instance {instance}: {limit}{was}.")
    if manager.pool_of(instance) is None:
        click.echo(
            f"Instance {instance} has no pool: its tasks are rate limited alone (and wait up to "
            f"the default timeout)."
        )


@pools.command(cls=CeleryCommand)
@click.argument("instance")
@json_option
@click.pass_context
def unrate(ctx: click.Context, instance: str, as_json: bool) -> None:
    """Remove connector INSTANCE's rate limit (a pause in force stays: see 'resume')."""
    manager = manager_of(ctx)
    previous = manager.rate_limits().get(instance)
    removed = manager.remove_rate_limit(instance)
    if as_json:
        print_json(
            {
                **views.rate_removed(instance, removed),
                "previous": str(previous) if removed and previous is not None else None,
            }
        )
        return
    if not removed:
        click.echo(f"Instance {instance} had no rate limit; nothing changed.")
    else:
        was = f" (was {previous})" if previous is not None else ""
        click.echo(f"Removed the rate limit of instance {instance}{was}.")


@pools.command(cls=CeleryCommand)
@click.argument("instance")
@click.argument("seconds", type=click.FloatRange(min=0, min_open=True))
@json_option
@click.pass_context
def pause(ctx: click.Context, instance: str, seconds: float, as_json: bool) -> None:
    """Pause connector INSTANCE for SECONDS on every worker (after an HTTP 429 Retry-After, say).

    No task of it starts anywhere until the pause ends; running tasks are not interrupted. A
    pause only ever grows: a shorter one than the pause in force changes nothing.
    """
    if not math.isfinite(seconds):
        raise click.BadParameter(f"{seconds} is not a number of seconds", param_hint="SECONDS")
    manager = manager_of(ctx)
    until = manager.pause(instance, seconds)
    paused_for = manager.rates([instance])[0].paused_for
    if as_json:
        print_json({**views.pause(instance, until), "paused_for": paused_for})
        return
    longer = " (a longer pause was already in force)" if paused_for > seconds else ""
    click.echo(
        f"Paused instance {instance} until {clock(until)} ({duration(paused_for)} from now)"
        f"{longer}; none of its tasks starts on any worker until then."
    )


@pools.command(cls=CeleryCommand)
@click.argument("instance")
@json_option
@click.pass_context
def resume(ctx: click.Context, instance: str, as_json: bool) -> None:
    """Lift connector INSTANCE's pause: its tasks may start again at once."""
    manager = manager_of(ctx)
    paused_for = manager.rates([instance])[0].paused_for
    manager.resume(instance)
    if as_json:
        print_json({**views.pause(instance, None), "was_paused_for": paused_for})
        return
    if paused_for > 0:
        click.echo(f"Resumed instance {instance} ({duration(paused_for)} of its pause were left).")
    else:
        click.echo(f"Instance {instance} was not paused; nothing changed.")
