"""``celery -A proj pools ...``: manage pools from the command line.

Installed as a ``celery`` subcommand through the ``celery.commands`` entry point. Every command
talks to the pools' Redis directly (no worker needs to be running):

- read: ``list``, ``show NAME`` (with rate limits, metrics and suspicious holders),
  ``watch [NAME]``, ``advise NAME`` (sizing), ``export FILE``;
- write: ``create``, ``update`` (limit, timeout, waiting mode), ``delete``, ``assign``,
  ``unassign``, ``clear``, ``import FILE``;
- rate limits: ``rate INSTANCE RATE``, ``unrate INSTANCE``, ``pause INSTANCE SECONDS``,
  ``resume INSTANCE``;
- ``exporter --port N``: serve the pools' metrics to Prometheus until Ctrl-C.

``--json`` prints the same data the management tasks return. Errors go to stderr as
``Error: <message>`` with exit status 1 (2 for a usage error).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click
from celery.bin.base import CeleryCommand, CeleryOption

from .errors import PoolBackendError, PoolError, PoolExistsError, PoolNotFoundError
from .extension import get_extension
from .manager import PoolManager
from .metrics import Histogram, PoolMetrics
from .models import MAX_TIMEOUT, WAIT_MODES, check_pool_name
from .portable import FORMATS, apply_document, dumps, export_document, format_for, loads
from .ratelimit import InstanceRate

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


def _app(ctx: click.Context) -> Any:
    obj = ctx.find_root().obj
    app = getattr(obj, "app", None)
    if app is None:
        raise click.UsageError("no Celery app: run it as 'celery -A proj pools ...'")
    return app


def _manager(ctx: click.Context) -> PoolManager:
    return PoolManager(_app(ctx))


def _suspicious_after(ctx: click.Context) -> float:
    """The app's ``pools_suspicious_hold_seconds``."""
    return get_extension(_app(ctx)).settings.suspicious_hold_seconds


def _pool_metrics(manager: PoolManager, name: str) -> PoolMetrics:
    """One pool's status with its counters and histograms, read together."""
    check_pool_name(name)
    found = manager.store.metrics([name])
    if not found:
        raise PoolNotFoundError(f"no pool named {name!r}", pool=name)
    return found[0]


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


def _quantile(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}s"


# -- read commands ---------------------------------------------------------------------------


@pools.command(name="list", cls=CeleryCommand)
@_json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """A table of every pool: limit, in use, free, waiting, timeout, waiting mode, instances."""
    manager = _manager(ctx)
    statuses = manager.statuses()
    waits = {pool.name: pool.wait for pool in manager.list()}
    if as_json:
        _print_json([{**s.model_dump(mode="json"), "wait": waits.get(s.name)} for s in statuses])
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
            waits.get(s.name, "?"),
            ", ".join(s.instances) or "-",
        ]
        for s in statuses
    ]
    headers = ["NAME", "LIMIT", "IN USE", "FREE", "WAITING", "TIMEOUT", "WAIT", "INSTANCES"]
    click.echo(_table(headers, rows, right=(1, 2, 3, 4, 5)))


@pools.command(cls=CeleryCommand)
@click.argument("name")
@_json_option
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """A pool's settings, its instances' rate limits, its metrics, its holders (suspicious ones
    flagged) and its waiters (oldest first)."""
    manager = _manager(ctx)
    metrics = _pool_metrics(manager, name)
    wait = manager.get(name).wait
    rates = manager.rates(metrics.status.instances)
    threshold = _suspicious_after(ctx)
    if as_json:
        _print_json(
            {
                **metrics.status.model_dump(mode="json"),
                "wait": wait,
                "rates": [rate.model_dump(mode="json") for rate in rates],
                "metrics": _metrics_data(metrics, threshold),
            }
        )
        return
    click.echo(_describe(metrics, wait, rates, threshold))


def _histogram_data(histogram: Histogram) -> dict[str, Any]:
    return {
        "count": histogram.count,
        "sum": histogram.sum,
        "p50": histogram.quantile(0.5),
        "p95": histogram.quantile(0.95),
    }


def _metrics_data(m: PoolMetrics, suspicious_after: float) -> dict[str, Any]:
    """The ``metrics`` of ``show --json``: counters, wait and hold quantiles, suspicious holders."""
    return {
        "started": m.started,
        "period": m.period,
        "acquired": m.acquired,
        "acquired_immediate": m.acquired_immediate,
        "acquired_waited": m.acquired_waited,
        "acquired_by_instance": dict(sorted(m.acquired_by_instance.items())),
        "timeouts": m.timeouts,
        "clears": m.clears,
        "cleared_waiters": m.cleared_waiters,
        "cleared_holders": m.cleared_holders,
        "released": m.released,
        "reclaimed": m.reclaimed,
        "handoffs": m.handoffs,
        "handoffs_retried": m.handoffs_retried,
        "grants_lapsed": m.grants_lapsed,
        "grants_withdrawn": m.grants_withdrawn,
        "handoffs_returned": m.handoffs_returned,
        "sent_back": m.sent_back,
        "wait": _histogram_data(m.wait),
        "hold": _histogram_data(m.hold),
        "suspicious_after": suspicious_after,
        "suspicious_holders": m.suspicious_holders(suspicious_after),
    }


def _describe(
    m: PoolMetrics, wait: str, rates: Sequence[InstanceRate], suspicious_after: float
) -> str:
    s = m.status
    oldest = f" (oldest {_duration(s.oldest_wait)})" if s.oldest_wait is not None else ""
    lines = [
        f"Pool {s.name}",
        f"  limit      {s.limit}",
        f"  timeout    {_seconds(s.timeout)}",
        f"  wait       {wait}",
        f"  in use     {s.in_use}",
        f"  free       {s.free}",
        f"  waiting    {s.waiting}{oldest}",
        f"  instances  {', '.join(s.instances) or '-'}",
    ]
    if rates:
        lines += ["", "Rate limits"]
        rows = [_rate_row(rate) for rate in rates]
        headers = ["INSTANCE", "RATE", "AVAILABLE NOW", "NEXT CALL IN", "PAUSED FOR"]
        lines.append(_indent(_table(headers, rows, right=(2, 3, 4))))
    lines += ["", *_describe_metrics(m)]
    suspicious = set(m.suspicious_holders(suspicious_after))
    lines += ["", f"Holders ({len(s.holders)})"]
    if s.holders:
        rows = [
            [
                h.task_id,
                h.task_name or "?",
                h.hostname or "?",
                str(h.pid) if h.pid is not None else "?",
                _ago(h.since, s.now),
                _ahead(h.lease_expires, s.now),
                "SUSPICIOUS" if h.task_id in suspicious else "",
            ]
            for h in s.holders
        ]
        headers = ["TASK ID", "TASK", "WORKER", "PID", "SINCE", "LEASE EXPIRES", ""]
        lines.append(_indent(_table(headers, rows)))
    if suspicious:
        lines.append(
            f"  SUSPICIOUS: {_plural(len(suspicious), 'holder')} held the slot longer than "
            f"pools_suspicious_hold_seconds ({_seconds(suspicious_after)}): stuck, or leaking "
            "its connection?"
        )
    lines += ["", f"Waiters ({len(s.waiters)})"]
    if s.waiters:
        rows = [
            [w.task_id, w.task_name or "?", _ago(w.since, s.now), _ahead(w.deadline, s.now)]
            for w in s.waiters
        ]
        lines.append(_indent(_table(["TASK ID", "TASK", "WAITING SINCE", "DEADLINE"], rows)))
    return "\n".join(lines)


def _rate_row(rate: InstanceRate) -> list[str]:
    paused = _duration(rate.paused_for) if rate.paused_for > 0 else "-"
    if rate.rate is None:
        return [rate.instance, "-", "-", "-", paused]
    next_in = "now" if not rate.next_in else _duration(rate.next_in)
    return [rate.instance, rate.rate, str(rate.available), next_in, paused]


def _describe_metrics(m: PoolMetrics) -> list[str]:
    if m.started is None:
        return ["Metrics: nothing counted yet"]
    return [
        f"Metrics (counted over {_duration(m.period)}, since {_clock(m.started)})",
        f"  acquisitions     {m.acquired} ({m.acquired_immediate} immediate, "
        f"{m.acquired_waited} after waiting)",
        f"  timeouts         {m.timeouts}",
        f"  clears           {m.clears} ({_plural(m.cleared_waiters, 'waiter')} and "
        f"{_plural(m.cleared_holders, 'holder')} dropped)",
        f"  releases         {m.released}",
        f"  reclaimed leases {m.reclaimed}",
        f"  hand-offs        {m.handoffs} ({m.handoffs_retried} handed out again, "
        f"{m.grants_lapsed} grants lapsed, {m.grants_withdrawn} withdrawn, "
        f"{m.handoffs_returned} given back, {m.sent_back} sent back for a pause)",
        f"  wait for a slot  p50 {_quantile(m.wait.quantile(0.5))}, "
        f"p95 {_quantile(m.wait.quantile(0.95))}",
        f"  slot held        p50 {_quantile(m.hold.quantile(0.5))}, "
        f"p95 {_quantile(m.hold.quantile(0.95))}",
    ]


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
        all_metrics = [_pool_metrics(manager, name)] if name else manager.store.metrics()
    except PoolBackendError as exc:
        return f"{_clock(time.time())}  {exc} (retrying every {_seconds(interval)})"
    now = all_metrics[0].status.now if all_metrics else time.time()
    header = f"{_clock(now)}  every {_seconds(interval)}, Ctrl-C to stop"
    if not all_metrics:
        return f"{header}\nNo pools."
    rows = [
        [
            m.status.name,
            _bar(m.status.in_use, m.status.limit),
            f"{m.status.in_use}/{m.status.limit}",
            str(m.status.waiting),
            _duration(m.status.oldest_wait) if m.status.oldest_wait is not None else "-",
            _quantile(m.wait.quantile(0.95)),
        ]
        for m in all_metrics
    ]
    headers = ["NAME", "USE", "IN USE", "WAITING", "OLDEST WAIT", "P95 WAIT"]
    return f"{header}\n{_table(headers, rows, right=(2, 3, 4, 5))}"


def _bar(used: int, limit: int, width: int = 20) -> str:
    filled = min(width, round(width * used / limit)) if limit else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


# -- write commands --------------------------------------------------------------------------

_LIMIT_HELP = "Number of slots: how many tasks of the pool's instances may run at once."
_TIMEOUT_HELP = f"Seconds a task may wait for a slot (0 to {MAX_TIMEOUT:g})."
_WAIT_HELP = (
    "How tasks wait for a slot: 'countdown' (sent again with a countdown) or 'handoff' (parked "
    "in Redis and handed the next free slot, oldest first)."
)


@pools.command(cls=CeleryCommand)
@click.argument("name")
@click.option("--limit", cls=CeleryOption, type=int, required=True, help=_LIMIT_HELP)
@click.option("--timeout", cls=CeleryOption, type=float, default=30.0, help=_TIMEOUT_HELP)
@click.option(
    "--wait",
    cls=CeleryOption,
    type=click.Choice(WAIT_MODES),
    default="countdown",
    show_default=True,
    help=_WAIT_HELP,
)
@_json_option
@click.pass_context
def create(  # noqa: PLR0917 - one parameter per option, as click passes them
    ctx: click.Context, name: str, limit: int, timeout: float, wait: str, as_json: bool
) -> None:
    """Create pool NAME."""
    try:
        pool = _manager(ctx).create(name, limit=limit, timeout=timeout, wait=wait)
    except PoolExistsError as exc:
        raise click.ClickException(
            f"a pool named {name!r} already exists; change it with 'pools update {name}'"
        ) from exc
    if as_json:
        _print_json(pool.model_dump(mode="json"))
        return
    waits = "" if pool.wait == "countdown" else f", wait {pool.wait}"
    click.echo(
        f"Created pool {pool.name} (limit {pool.limit}, timeout {_seconds(pool.timeout)}{waits})."
    )


@pools.command(cls=CeleryCommand)
@click.argument("name")
@click.option("--limit", cls=CeleryOption, type=int, help=_LIMIT_HELP)
@click.option("--timeout", cls=CeleryOption, type=float, help=_TIMEOUT_HELP)
@click.option("--wait", cls=CeleryOption, type=click.Choice(WAIT_MODES), help=_WAIT_HELP)
@_json_option
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
    manager = _manager(ctx)
    before = manager.get(name)
    pool = manager.update(name, limit=limit, timeout=timeout, wait=wait)
    if as_json:
        _print_json(pool.model_dump(mode="json"))
        return
    changes = []
    if limit is not None:
        changes.append(f"limit {before.limit} -> {pool.limit}")
    if timeout is not None:
        changes.append(f"timeout {_seconds(before.timeout)} -> {_seconds(pool.timeout)}")
    if wait is not None:
        changes.append(f"wait {before.wait} -> {pool.wait}")
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


# -- rate limits -----------------------------------------------------------------------------


@pools.command(name="rate", cls=CeleryCommand)
@click.argument("instance")
@click.argument("rate")
@click.option(
    "--burst",
    cls=CeleryOption,
    type=int,
    default=0,
    show_default=True,
    help="Extra calls that may start at once after a quiet spell.",
)
@_json_option
@click.pass_context
def rate_(ctx: click.Context, instance: str, rate: str, burst: int, as_json: bool) -> None:
    """Limit connector INSTANCE to RATE calls, shared by every worker ('60/m', '10/s', '1000/h',
    '5/10s'), replacing any rate limit it had. Obeyed by the next acquisition."""
    manager = _manager(ctx)
    previous = manager.rate_limits().get(instance)
    limit = manager.set_rate_limit(instance, rate, burst=burst)
    if as_json:
        # The set_rate_limit management task's result, and the limit replaced (or null).
        _print_json(
            {
                "instance": instance,
                **limit.model_dump(mode="json"),
                "rate": str(limit),
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
@_json_option
@click.pass_context
def unrate(ctx: click.Context, instance: str, as_json: bool) -> None:
    """Remove connector INSTANCE's rate limit (a pause in force stays: see 'resume')."""
    manager = _manager(ctx)
    previous = manager.rate_limits().get(instance)
    removed = manager.remove_rate_limit(instance)
    if as_json:
        _print_json(
            {
                "instance": instance,
                "removed": removed,
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
@_json_option
@click.pass_context
def pause(ctx: click.Context, instance: str, seconds: float, as_json: bool) -> None:
    """Pause connector INSTANCE for SECONDS on every worker (after an HTTP 429 Retry-After, say).

    No task of it starts anywhere until the pause ends; running tasks are not interrupted. A
    pause only ever grows: a shorter one than the pause in force changes nothing.
    """
    if not math.isfinite(seconds):
        raise click.BadParameter(f"{seconds} is not a number of seconds", param_hint="SECONDS")
    manager = _manager(ctx)
    until = manager.pause(instance, seconds)
    paused_for = manager.rates([instance])[0].paused_for
    if as_json:
        _print_json({"instance": instance, "paused_until": until, "paused_for": paused_for})
        return
    longer = " (a longer pause was already in force)" if paused_for > seconds else ""
    click.echo(
        f"Paused instance {instance} until {_clock(until)} ({_duration(paused_for)} from now)"
        f"{longer}; none of its tasks starts on any worker until then."
    )


@pools.command(cls=CeleryCommand)
@click.argument("instance")
@_json_option
@click.pass_context
def resume(ctx: click.Context, instance: str, as_json: bool) -> None:
    """Lift connector INSTANCE's pause: its tasks may start again at once."""
    manager = _manager(ctx)
    paused_for = manager.rates([instance])[0].paused_for
    manager.resume(instance)
    if as_json:
        _print_json({"instance": instance, "paused_until": None, "was_paused_for": paused_for})
        return
    if paused_for > 0:
        click.echo(f"Resumed instance {instance} ({_duration(paused_for)} of its pause were left).")
    else:
        click.echo(f"Instance {instance} was not paused; nothing changed.")


# -- metrics and sizing ------------------------------------------------------------------------


@pools.command(cls=CeleryCommand)
@click.option(
    "--port",
    cls=CeleryOption,
    type=click.IntRange(min=0, max=65535),
    required=True,
    help="Port to serve /metrics on (0: any free port).",
)
@click.option(
    "--addr",
    cls=CeleryOption,
    default="0.0.0.0",
    show_default=True,
    help="Address to listen on.",
)
@click.pass_context
def exporter(ctx: click.Context, port: int, addr: str) -> None:
    """Serve every pool's metrics to Prometheus on http://ADDR:PORT/metrics until Ctrl-C.

    Redis is read at each scrape. Needs the prometheus extra:
    pip install 'celery-pools[prometheus]'.
    """
    from .exporter import serve

    store = _manager(ctx).store
    try:
        server = serve(store, port, addr, suspicious_after=_suspicious_after(ctx))
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
@click.argument("name")
@click.option(
    "--headroom",
    cls=CeleryOption,
    type=float,
    default=0.3,
    show_default=True,
    help="Fraction added to the observed concurrency for spikes (0.3 = 30 %).",
)
@click.option(
    "--backend-max",
    cls=CeleryOption,
    type=click.IntRange(min=1),
    help="The backend's own cap on connections (shared by every deployment).",
)
@click.option(
    "--reserve",
    cls=CeleryOption,
    type=click.IntRange(min=0),
    help="Connections of --backend-max kept for others (admins, other apps); default 0.",
)
@click.option(
    "--deployments",
    cls=CeleryOption,
    type=click.IntRange(min=1),
    help="Deployments sharing --backend-max; default 1.",
)
@_json_option
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
    from .advisor import advise_pool

    if backend_max is None and (reserve is not None or deployments is not None):
        raise click.UsageError("--reserve and --deployments need --backend-max")
    metrics = _pool_metrics(_manager(ctx), name)
    advice = advise_pool(
        metrics,
        headroom=headroom,
        backend_max=backend_max,
        reserve=reserve or 0,
        deployments=deployments or 1,
    )
    if as_json:
        _print_json({"pool": name, **dataclasses.asdict(advice)})
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
    """Write every pool, association and rate limit to FILE ('-' for stdout), JSON or YAML."""
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
    parts = [
        _plural(len(document.pools), "pool"),
        _plural(len(document.associations()), "association"),
    ]
    if document.rate_limits:
        parts.append(_plural(len(document.rate_limits), "rate limit"))
    click.echo(f"Exported {', '.join(parts[:-1])} and {parts[-1]} to {file}.")


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
    help="Also delete pools and remove associations and rate limits that are not in FILE "
    "(waiting tasks of a deleted pool fail with PoolDeletedError).",
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
    """Make the pools match FILE ('-' for stdin), one atomic step per pool, association and
    rate limit.

    Creates missing pools, associations and rate limits, changes those that differ and reports
    those already right. Those absent from FILE are left alone unless --prune is given. Running
    it twice changes nothing the second time.
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
            removed = [
                f"{c.kind.replace('_', ' ')} {c.name}"
                for c in planned.changes
                if c.action == "remove"
            ]
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
    if change.kind == "rate_limit":
        if change.action == "change":
            return f"{_rate_detail(change.before)} -> {_rate_detail(change.after)}"
        if change.action == "remove":
            return f"was {_rate_detail(change.before)}"
        return _rate_detail(change.after or change.before)
    if change.action == "change":
        before, after = change.before, change.after
        parts = [
            f"{key} {before[key]} -> {after[key]}"
            for key in ("limit", "timeout", "wait")
            if before[key] != after[key]
        ]
        return ", ".join(parts)
    settings = change.after or change.before
    return f"limit {settings['limit']}, timeout {settings['timeout']}s, wait {settings['wait']}"


def _rate_detail(data: dict[str, Any]) -> str:
    burst = f" (burst {data['burst']})" if data["burst"] else ""
    return f"{data['rate']}{burst}"
