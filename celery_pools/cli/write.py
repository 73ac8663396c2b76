"""The write commands: ``create``, ``update``, ``clear``, ``delete``, ``assign``, ``unassign``."""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand

from celery_pools import views
from celery_pools.errors import PoolExistsError
from celery_pools.models import MAX_TIMEOUT, WAIT_MODES

from .group import confirm, json_option, manager_of, option, pools, print_json, yes_option
from .output import plural, seconds

__all__ = ["assign", "clear", "create", "delete", "unassign", "update"]

_LIMIT_HELP = "Number of slots: how many tasks of the pool's instances may run at once."
_TIMEOUT_HELP = f"Seconds a task may wait for a slot (0 to {MAX_TIMEOUT:g})."
_WAIT_HELP = (
    "How tasks wait for a slot: 'countdown' (sent again with a countdown) or 'handoff' (parked "
    "in Redis and handed the next free slot, oldest first)."
)
_RELEASE_HELD_HELP = (
    "Also free the slots of running tasks. They keep running, so this can admit more "
    "tasks than the limit while they finish."
)


@pools.command(cls=CeleryCommand)
@click.argument("name")
@option("--limit", type=int, required=True, help=_LIMIT_HELP)
@option("--timeout", type=float, default=30.0, help=_TIMEOUT_HELP)
@option(
    "--wait", type=click.Choice(WAIT_MODES), default="countdown", show_default=True, help=_WAIT_HELP
)
@json_option
@click.pass_context
def create(  # noqa: PLR0917 - one parameter per option, as click passes them
    ctx: click.Context, name: str, limit: int, timeout: float, wait: str, as_json: bool
) -> None:
    """Create pool NAME."""
    try:
        pool = manager_of(ctx).create(name, limit=limit, timeout=timeout, wait=wait)
    except PoolExistsError as exc:
        raise click.ClickException(
            f"a pool named {name!r} already exists; change it with 'pools update {name}'"
        ) from exc
    if as_json:
        print_json(views.pool(pool))
        return
    waits = "" if pool.wait == "countdown" else f", wait {pool.wait}"
    click.echo(
        f"Created pool {pool.name} (limit {pool.limit}, timeout {seconds(pool.timeout)}{waits})."
    )


@pools.command(cls=CeleryCommand)
@click.argument("name")
@option("--limit", type=int, help=_LIMIT_HELP)
@option("--timeout", type=float, help=_TIMEOUT_HELP)
@option("--wait", type=click.Choice(WAIT_MODES), help=_WAIT_HELP)
@json_option
@click.pass_context
def update(  # noqa: PLR0917 - one parameter per option, as click passes them
    ctx: click.Context,
    name: str,
    limit: int | None,
    timeout: float | None,
    wait: str | None,
    as_json: bool,
) -> None:
    """Change pool NAME's limit, timeout and/or waiting mode, obeyed at once by every worker.

    A larger limit admits waiting tasks at their next attempt; a smaller one never interrupts
    running tasks: new ones start only when fewer than the limit are running. A new waiting mode
    is used from each waiting task's next attempt; tasks already parked are still handed slots
    in turn.
    """
    if limit is None and timeout is None and wait is None:
        raise click.UsageError("give --limit, --timeout, --wait or several of them")
    manager = manager_of(ctx)
    before = manager.get(name)
    pool = manager.update(name, limit=limit, timeout=timeout, wait=wait)
    if as_json:
        print_json(views.pool(pool))
        return
    changes = []
    if limit is not None:
        changes.append(f"limit {before.limit} -> {pool.limit}")
    if timeout is not None:
        changes.append(f"timeout {seconds(before.timeout)} -> {seconds(pool.timeout)}")
    if wait is not None:
        changes.append(f"wait {before.wait} -> {pool.wait}")
    click.echo(f"Updated pool {name}: {', '.join(changes)}.")
    in_use = manager.status(name).in_use
    if in_use > pool.limit:
        click.echo(
            f"{plural(in_use, 'running task')} hold slots; they finish normally, and no new "
            f"task starts until fewer than {pool.limit} are running."
        )


@pools.command(cls=CeleryCommand)
@click.argument("name")
@option("--release-held", is_flag=True, help=_RELEASE_HELD_HELP)
@yes_option
@json_option
@click.pass_context
def clear(ctx: click.Context, name: str, release_held: bool, yes: bool, as_json: bool) -> None:
    """Drop every pending request of pool NAME.

    Each task waiting for a slot fails with PoolClearedError (state FAILURE, link_error runs)
    and its body never runs. Running tasks keep their slots unless --release-held is given.
    """
    manager = manager_of(ctx)
    status = manager.status(name)
    held = ""
    if release_held:
        held = f"; the slots of {plural(status.in_use, 'running task')} are freed"
    confirm(
        yes, f"clear pool {name!r}", f"{plural(status.waiting, 'waiting task')} will fail{held}"
    )
    result = manager.clear(name, release_held=release_held)
    if as_json:
        print_json(views.cleared(result))
        return
    message = (
        f"Cleared pool {name}: {plural(result.waiters_dropped, 'waiting task')} "
        "will fail with PoolClearedError"
    )
    if release_held:
        message += f"; released {plural(result.holders_released, 'held slot')}"
    click.echo(message + ".")


@pools.command(cls=CeleryCommand)
@click.argument("name")
@yes_option
@json_option
@click.pass_context
def delete(ctx: click.Context, name: str, yes: bool, as_json: bool) -> None:
    """Delete pool NAME and every association to it.

    Tasks waiting for one of its slots fail with PoolDeletedError at their next attempt; tasks
    holding a slot finish normally. Its instances are left without a pool: their tasks then run
    without a limit (or fail, with pools_require_assignment) until assigned to another pool.
    """
    manager = manager_of(ctx)
    status = manager.status(name)
    instances = ", ".join(status.instances) or "none"
    confirm(
        yes,
        f"delete pool {name!r}",
        f"instances left without a pool: {instances}; "
        f"{plural(status.waiting, 'waiting task')} will fail",
    )
    result = manager.delete(name)
    if as_json:
        print_json(views.deleted(result))
        return
    click.echo(
        f"Deleted pool {name}: {plural(result.instances, 'instance')} unassigned; "
        f"{plural(result.waiters, 'waiting task')} will fail with PoolDeletedError; "
        f"{plural(result.holders, 'running task')} finish normally."
    )


@pools.command(cls=CeleryCommand)
@click.argument("instance")
@click.argument("pool")
@json_option
@click.pass_context
def assign(ctx: click.Context, instance: str, pool: str, as_json: bool) -> None:
    """Associate connector INSTANCE with POOL (replacing its previous pool)."""
    previous = manager_of(ctx).assign(instance, pool)
    if as_json:
        print_json(views.assignment(instance, pool, previous))
        return
    was = f" (was {previous})" if previous and previous != pool else ""
    click.echo(f"Assigned instance {instance} to pool {pool}{was}.")


@pools.command(cls=CeleryCommand)
@click.argument("instance")
@json_option
@click.pass_context
def unassign(ctx: click.Context, instance: str, as_json: bool) -> None:
    """Remove connector INSTANCE's association with its pool."""
    previous = manager_of(ctx).unassign(instance)
    if as_json:
        print_json(views.assignment(instance, None, previous))
        return
    if previous is None:
        click.echo(f"Instance {instance} had no pool; nothing changed.")
    else:
        click.echo(f"Unassigned instance {instance} from pool {previous}.")


@pools.command(cls=CeleryCommand)
@click.argument("task_id")
@option(
    "--force",
    is_flag=True,
    help="Also free the slot of a task that is running (its call may be in flight: the pool may "
    "then see one call over its limit).",
)
@yes_option
@json_option
@click.pass_context
def release(ctx: click.Context, task_id: str, force: bool, yes: bool, as_json: bool) -> None:
    """Free the slot task TASK_ID abandoned, now.

    A task that ended without releasing its slot (its process was killed, a hard time limit,
    revoke with terminate) leaves it taken for pools_abandoned_grace_seconds, as its call may
    still be in flight; once you know that call is over, this frees the slot for the next waiting
    task. A running task's slot is freed only with --force (asks for confirmation).
    """
    if force:
        confirm(
            yes,
            f"free the slot of task {task_id!r} even if it is running",
            "its call may be in flight, so the pool may see one call over its limit",
        )
    freed = manager_of(ctx).release(task_id, force=force)
    if as_json:
        print_json(views.freed(freed))
        return
    what = "abandoned slot" if freed.abandoned else "slot (its task was running)"
    click.echo(f"Freed the {what} of task {task_id} in pool {freed.pool}.")
