"""``celery -A proj pools ...``: manage pools from the command line.

Installed as a ``celery`` subcommand through the ``celery.commands`` entry point. Every command
talks to the pools' Redis directly (no worker needs to be running):

- read: ``list``, ``show NAME``, ``watch [NAME]``, ``export FILE``;
- write: ``create``, ``update``, ``delete``, ``assign``, ``unassign``, ``clear``, ``import FILE``.

``--json`` prints the same data the management tasks return. Errors go to stderr as
``Error: <message>`` with exit status 1 (2 for a usage error).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click
from celery.bin.base import CeleryCommand, CeleryOption

from .errors import PoolBackendError, PoolError, PoolExistsError
from .manager import PoolManager
from .models import MAX_TIMEOUT, PoolStatus
from .portable import FORMATS, apply_document, dumps, export_document, format_for, loads

__all__ = ["pools"]

F = TypeVar("F", bound=Callable[..., Any])

_CLEAR_UP = "\x1b[{n}F\x1b[J"  # cursor up n lines to column 1, then erase to the end


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


def _manager(ctx: click.Context) -> PoolManager:
    obj = ctx.find_root().obj
    app = getattr(obj, "app", None)
    if app is None:
        raise click.UsageError("no Celery app: run it as 'celery -A proj pools ...'")
    return PoolManager(app)


def _json_option(function: F) -> F:
    return click.option(
        "--json",
        "as_json",
        cls=CeleryOption,
        is_flag=True,
        help="Print JSON (the management tasks' result) instead of text.",
    )(function)


def _yes_option(function: F) -> F:
    return click.option(
        "--yes",
        "-y",
        cls=CeleryOption,
        is_flag=True,
        help="Do not ask for confirmation.",
    )(function)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _confirm(yes: bool, action: str, consequences: str) -> None:
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


# -- formatting ------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _ago(timestamp: float, now: float) -> str:
    return f"{_clock(timestamp)} ({_duration(now - timestamp)} ago)"


def _ahead(timestamp: float, now: float) -> str:
    return f"{_clock(timestamp)} (in {_duration(timestamp - now)})"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Plain aligned columns; the columns whose indexes are in ``right`` are right-aligned."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


# -- read commands ---------------------------------------------------------------------------


@pools.command(name="list", cls=CeleryCommand)
@_json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """A table of every pool: limit, in use, free, waiting, timeout, instances."""
    statuses = _manager(ctx).statuses()
    if as_json:
        _print_json([status.model_dump(mode="json") for status in statuses])
        return
    if not statuses:
        click.echo("No pools.")
        return
    rows = [
        [
            s.name,
            str(s.limit),
            str(s.in_use),
            str(s.free),
            str(s.waiting),
            _seconds(s.timeout),
            ", ".join(s.instances) or "-",
        ]
        for s in statuses
    ]
    headers = ["NAME", "LIMIT", "IN USE", "FREE", "WAITING", "TIMEOUT", "INSTANCES"]
    click.echo(_table(headers, rows, right=(1, 2, 3, 4, 5)))


@pools.command(cls=CeleryCommand)
@click.argument("name")
@_json_option
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """A pool's settings, its holders and its waiters (oldest first)."""
    status = _manager(ctx).status(name)
    if as_json:
        _print_json(status.model_dump(mode="json"))
        return
    click.echo(_describe(status))


def _describe(s: PoolStatus) -> str:
    oldest = f" (oldest {_duration(s.oldest_wait)})" if s.oldest_wait is not None else ""
    lines = [
        f"Pool {s.name}",
        f"  limit      {s.limit}",
        f"  timeout    {_seconds(s.timeout)}",
        f"  in use     {s.in_use}",
        f"  free       {s.free}",
        f"  waiting    {s.waiting}{oldest}",
        f"  instances  {', '.join(s.instances) or '-'}",
        "",
        f"Holders ({len(s.holders)})",
    ]
    if s.holders:
        rows = [
            [
                h.task_id,
                h.task_name or "?",
                h.hostname or "?",
                str(h.pid) if h.pid is not None else "?",
                _ago(h.since, s.now),
                _ahead(h.lease_expires, s.now),
            ]
            for h in s.holders
        ]
        headers = ["TASK ID", "TASK", "WORKER", "PID", "SINCE", "LEASE EXPIRES"]
        lines.append(_indent(_table(headers, rows)))
    lines += ["", f"Waiters ({len(s.waiters)})"]
    if s.waiters:
        rows = [
            [w.task_id, w.task_name or "?", _ago(w.since, s.now), _ahead(w.deadline, s.now)]
            for w in s.waiters
        ]
        lines.append(_indent(_table(["TASK ID", "TASK", "WAITING SINCE", "DEADLINE"], rows)))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


@pools.command(cls=CeleryCommand)
@click.argument("name", required=False)
@click.option(
    "--interval",
    cls=CeleryOption,
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option(
    "--iterations",
    cls=CeleryOption,
    type=click.IntRange(min=0),
    default=0,
    help="Stop after this many refreshes (default: until Ctrl-C).",
)
@_json_option
@click.pass_context
def watch(
    ctx: click.Context, name: str | None, interval: float, iterations: int, as_json: bool
) -> None:
    """A live view of every pool (or NAME): in use against limit, waiting, oldest wait.

    On a terminal the view is redrawn in place; otherwise each refresh is printed after the
    previous one (with --json, one JSON line per refresh).
    """
    manager = _manager(ctx)
    redraw = not as_json and sys.stdout.isatty()
    previous_lines = 0
    try:
        for index in _count(iterations):
            if index:
                time.sleep(interval)
            if as_json:
                statuses = [manager.status(name)] if name else manager.statuses()
                click.echo(json.dumps([s.model_dump(mode="json") for s in statuses]))
                continue
            frame = _frame(manager, name, interval)
            if redraw:
                if previous_lines:
                    click.echo(_CLEAR_UP.format(n=previous_lines), nl=False)
                previous_lines = frame.count("\n") + 1
            elif index:
                click.echo()
            click.echo(frame)
    except KeyboardInterrupt:
        click.echo()


def _count(iterations: int) -> Iterator[int]:
    index = 0
    while not iterations or index < iterations:
        yield index
        index += 1


def _frame(manager: PoolManager, name: str | None, interval: float) -> str:
    try:
        statuses = [manager.status(name)] if name else manager.statuses()
    except PoolBackendError as exc:
        return f"{_clock(time.time())}  {exc} (retrying every {_seconds(interval)})"
    now = statuses[0].now if statuses else time.time()
    header = f"{_clock(now)}  every {_seconds(interval)}, Ctrl-C to stop"
    if not statuses:
        return f"{header}\nNo pools."
    rows = [
        [
            s.name,
            _bar(s.in_use, s.limit),
            f"{s.in_use}/{s.limit}",
            str(s.waiting),
            _duration(s.oldest_wait) if s.oldest_wait is not None else "-",
        ]
        for s in statuses
    ]
    table = _table(["NAME", "USE", "IN USE", "WAITING", "OLDEST WAIT"], rows, right=(2, 3, 4))
    return f"{header}\n{table}"


def _bar(used: int, limit: int, width: int = 20) -> str:
    filled = min(width, round(width * used / limit)) if limit else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


# -- write commands --------------------------------------------------------------------------

_LIMIT_HELP = "Number of slots: how many tasks of the pool's instances may run at once."
_TIMEOUT_HELP = f"Seconds a task may wait for a slot (0 to {MAX_TIMEOUT:g})."


@pools.command(cls=CeleryCommand)
@click.argument("name")
@click.option("--limit", cls=CeleryOption, type=int, required=True, help=_LIMIT_HELP)
@click.option("--timeout", cls=CeleryOption, type=float, default=30.0, help=_TIMEOUT_HELP)
@_json_option
@click.pass_context
def create(ctx: click.Context, name: str, limit: int, timeout: float, as_json: bool) -> None:
    """Create pool NAME."""
    try:
        pool = _manager(ctx).create(name, limit=limit, timeout=timeout)
    except PoolExistsError as exc:
        raise click.ClickException(
            f"a pool named {name!r} already exists; change it with 'pools update {name}'"
        ) from exc
    if as_json:
        _print_json(pool.model_dump(mode="json"))
        return
    click.echo(f"Created pool {pool.name} (limit {pool.limit}, timeout {_seconds(pool.timeout)}).")


@pools.command(cls=CeleryCommand)
@click.argument("name")
@click.option("--limit", cls=CeleryOption, type=int, help=_LIMIT_HELP)
@click.option("--timeout", cls=CeleryOption, type=float, help=_TIMEOUT_HELP)
@_json_option
@click.pass_context
def update(
    ctx: click.Context, name: str, limit: int | None, timeout: float | None, as_json: bool
) -> None:
    """Change pool NAME's limit and/or timeout, obeyed at once by every worker.

    A larger limit admits waiting tasks at their next attempt; a smaller one never interrupts
    running tasks: new ones start only when fewer than the limit are running.
    """
    if limit is None and timeout is None:
        raise click.UsageError("give --limit, --timeout or both")
    manager = _manager(ctx)
    before = manager.get(name)
    pool = manager.update(name, limit=limit, timeout=timeout)
    if as_json:
        _print_json(pool.model_dump(mode="json"))
        return
    changes = []
    if limit is not None:
        changes.append(f"limit {before.limit} -> {pool.limit}")
    if timeout is not None:
        changes.append(f"timeout {_seconds(before.timeout)} -> {_seconds(pool.timeout)}")
    click.echo(f"Updated pool {name}: {', '.join(changes)}.")
    in_use = manager.status(name).in_use
    if in_use > pool.limit:
        click.echo(
            f"{_plural(in_use, 'running task')} hold slots; they finish normally, and no new "
            f"task starts until fewer than {pool.limit} are running."
        )


@pools.command(cls=CeleryCommand)
@click.argument("name")
@click.option(
    "--release-held",
    cls=CeleryOption,
    is_flag=True,
    help="Also free the slots of running tasks. They keep running, so this can admit more "
    "tasks than the limit while they finish.",
)
@_yes_option
@_json_option
@click.pass_context
def clear(ctx: click.Context, name: str, release_held: bool, yes: bool, as_json: bool) -> None:
    """Drop every pending request of pool NAME.

    Each task waiting for a slot fails with PoolClearedError (state FAILURE, link_error runs)
    and its body never runs. Running tasks keep their slots unless --release-held is given.
    """
    manager = _manager(ctx)
    status = manager.status(name)
    held = ""
    if release_held:
        held = f"; the slots of {_plural(status.in_use, 'running task')} are freed"
    _confirm(
        yes, f"clear pool {name!r}", f"{_plural(status.waiting, 'waiting task')} will fail{held}"
    )
    result = manager.clear(name, release_held=release_held)
    if as_json:
        _print_json(
            {
                "pool": result.pool,
                "waiters_dropped": result.waiters_dropped,
                "holders_released": result.holders_released,
            }
        )
        return
    message = (
        f"Cleared pool {name}: {_plural(result.waiters_dropped, 'waiting task')} "
        "will fail with PoolClearedError"
    )
    if release_held:
        message += f"; released {_plural(result.holders_released, 'held slot')}"
    click.echo(message + ".")


@pools.command(cls=CeleryCommand)
@click.argument("name")
@_yes_option
@_json_option
@click.pass_context
def delete(ctx: click.Context, name: str, yes: bool, as_json: bool) -> None:
    """Delete pool NAME and every association to it.

    Tasks waiting for one of its slots fail with PoolDeletedError at their next attempt; tasks
    holding a slot finish normally. Its instances are left without a pool: their tasks then run
    without a limit (or fail, with pools_require_assignment) until assigned to another pool.
    """
    manager = _manager(ctx)
    status = manager.status(name)
    instances = ", ".join(status.instances) or "none"
    _confirm(
        yes,
        f"delete pool {name!r}",
        f"instances left without a pool: {instances}; "
        f"{_plural(status.waiting, 'waiting task')} will fail",
    )
    result = manager.delete(name)
    if as_json:
        _print_json(
            {
                "pool": result.pool,
                "instances": result.instances,
                "holders": result.holders,
                "waiters": result.waiters,
            }
        )
        return
    click.echo(
        f"Deleted pool {name}: {_plural(result.instances, 'instance')} unassigned; "
        f"{_plural(result.waiters, 'waiting task')} will fail with PoolDeletedError; "
        f"{_plural(result.holders, 'running task')} finish normally."
    )


@pools.command(cls=CeleryCommand)
@click.argument("instance")
@click.argument("pool")
@_json_option
@click.pass_context
def assign(ctx: click.Context, instance: str, pool: str, as_json: bool) -> None:
    """Associate connector INSTANCE with POOL (replacing its previous pool)."""
    previous = _manager(ctx).assign(instance, pool)
    if as_json:
        _print_json({"instance": instance, "pool": pool, "previous": previous})
        return
    was = f" (was {previous})" if previous and previous != pool else ""
    click.echo(f"Assigned instance {instance} to pool {pool}{was}.")


@pools.command(cls=CeleryCommand)
@click.argument("instance")
@_json_option
@click.pass_context
def unassign(ctx: click.Context, instance: str, as_json: bool) -> None:
    """Remove connector INSTANCE's association with its pool."""
    previous = _manager(ctx).unassign(instance)
    if as_json:
        _print_json({"instance": instance, "pool": None, "previous": previous})
        return
    if previous is None:
        click.echo(f"Instance {instance} had no pool; nothing changed.")
    else:
        click.echo(f"Unassigned instance {instance} from pool {previous}.")


# -- pools as code ---------------------------------------------------------------------------


@pools.command(name="export", cls=CeleryCommand)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    cls=CeleryOption,
    type=click.Choice(FORMATS),
    help="json or yaml (default: from FILE's extension; json for '-').",
)
@click.pass_context
def export_(ctx: click.Context, file: str, fmt: str | None) -> None:
    """Write every pool and association to FILE ('-' for stdout), as JSON or YAML."""
    document = export_document(_manager(ctx))
    text = dumps(document, "yaml" if (fmt or format_for(file)) == "yaml" else "json")
    if file == "-":
        click.echo(text, nl=False)
        return
    try:
        with open(file, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {file}: {exc.strerror or exc}") from exc
    count = len(document.associations())
    click.echo(
        f"Exported {_plural(len(document.pools), 'pool')} and "
        f"{_plural(count, 'association')} to {file}."
    )


# action -> (table word, in a dry run; summary word, in a dry run)
_ACTION_WORDS = {
    "create": ("created", "would create", "created", "to create"),
    "change": ("changed", "would change", "changed", "to change"),
    "unchanged": ("unchanged", "unchanged", "unchanged", "unchanged"),
    "keep": ("kept", "would keep", "left alone (not in file)", "left alone (not in file)"),
    "remove": ("removed", "would remove", "removed", "to remove"),
}


@pools.command(name="import", cls=CeleryCommand)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--dry-run",
    cls=CeleryOption,
    is_flag=True,
    help="Show what would be created, changed and left alone; write nothing.",
)
@click.option(
    "--prune",
    cls=CeleryOption,
    is_flag=True,
    help="Also delete pools and remove associations that are not in FILE (waiting tasks of a "
    "deleted pool fail with PoolDeletedError).",
)
@click.option(
    "--format",
    "fmt",
    cls=CeleryOption,
    type=click.Choice(FORMATS),
    help="json or yaml (default: from FILE's extension, else its content).",
)
@_yes_option
@_json_option
@click.pass_context
def import_(  # noqa: PLR0917 - one parameter per option, as click passes them
    ctx: click.Context,
    file: str,
    dry_run: bool,
    prune: bool,
    fmt: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Make the pools match FILE ('-' for stdin), one atomic step per pool and association.

    Creates missing pools and associations, changes those that differ and reports those already
    right. Pools and associations absent from FILE are left alone unless --prune is given.
    Running it twice changes nothing the second time.
    """
    try:
        with click.open_file(file, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror or exc}") from exc
    chosen = fmt or format_for(file, text)
    document = loads(text, "yaml" if chosen == "yaml" else "json", source=file)
    manager = _manager(ctx)
    if prune and not dry_run:
        planned = apply_document(manager, document, prune=True, dry_run=True)
        if planned.count("remove"):
            removed = [f"{c.kind} {c.name}" for c in planned.changes if c.action == "remove"]
            _confirm(yes, f"import {file} with --prune", "removes " + ", ".join(removed))
    report = apply_document(manager, document, prune=prune, dry_run=dry_run)
    if as_json:
        _print_json(report.to_data())
        return
    rows = []
    for change in report.changes:
        word = _ACTION_WORDS[change.action][1 if dry_run else 0]
        rows.append([word, change.kind, change.name, _change_detail(change)])
    if rows:
        click.echo(_table(["ACTION", "KIND", "NAME", "DETAIL"], rows))
    counts = ", ".join(
        f"{report.count(action)} {_ACTION_WORDS[action][3 if dry_run else 2]}"
        for action in ("create", "change", "unchanged", "keep", "remove")
        if report.count(action) or action in ("create", "change", "unchanged")
    )
    click.echo(f"Dry run, nothing written: {counts}." if dry_run else f"{counts}.")


def _change_detail(change: Any) -> str:
    if change.kind == "association":
        if change.action == "change":
            return f"{change.before} -> {change.after}"
        if change.action == "remove":
            return f"was in {change.before}"
        return f"-> {change.after}"
    if change.action == "change":
        before, after = change.before, change.after
        parts = [
            f"{key} {before[key]} -> {after[key]}"
            for key in ("limit", "timeout")
            if before[key] != after[key]
        ]
        return ", ".join(parts)
    settings = change.after or change.before
    return f"limit {settings['limit']}, timeout {settings['timeout']}s"
