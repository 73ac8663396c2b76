"""The read commands: ``list``, ``show`` and ``watch``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence

import click
from celery.bin.base import CeleryCommand

from celery_pools import views
from celery_pools.errors import PoolBackendError
from celery_pools.manager import PoolManager
from celery_pools.metrics import PoolMetrics
from celery_pools.models import PoolStatus
from celery_pools.ratelimit import InstanceRate

from .group import json_option, manager_of, option, pools, print_json, suspicious_after
from .output import ago, ahead, bar, clock, duration, indent, plural, quantile, seconds, table

__all__ = ["list_", "show", "watch"]

_CLEAR_UP = "\x1b[{n}F\x1b[J"  # cursor up n lines to column 1, then erase to the end

_INTERVAL_HELP = "Seconds between refreshes."
_ITERATIONS_HELP = "Stop after this many refreshes (default: until Ctrl-C)."


@pools.command(name="list", cls=CeleryCommand)
@json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """A table of every pool: limit, in use, free, waiting, timeout, waiting mode, instances."""
    manager = manager_of(ctx)
    statuses = manager.statuses()
    waits = {pool.name: pool.wait for pool in manager.list()}
    if as_json:
        print_json([{**views.status(s), "wait": waits.get(s.name)} for s in statuses])
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
            seconds(s.timeout),
            waits.get(s.name, "?"),
            ", ".join(s.instances) or "-",
        ]
        for s in statuses
    ]
    headers = ["NAME", "LIMIT", "IN USE", "FREE", "WAITING", "TIMEOUT", "WAIT", "INSTANCES"]
    click.echo(table(headers, rows, right=(1, 2, 3, 4, 5)))


@pools.command(cls=CeleryCommand)
@click.argument("name")
@json_option
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """A pool's settings, its instances' rate limits, its metrics, its holders (suspicious ones
    flagged) and its waiters (oldest first)."""
    manager = manager_of(ctx)
    metrics = manager.metrics(name)
    wait = manager.get(name).wait
    rates = manager.rates(metrics.status.instances)
    threshold = suspicious_after(ctx)
    if as_json:
        print_json(views.pool_details(metrics, wait, rates, threshold))
        return
    click.echo(_describe(metrics, wait, rates, threshold))


def _describe(
    m: PoolMetrics, wait: str, rates: Sequence[InstanceRate], suspicious_after: float
) -> str:
    s = m.status
    oldest = f" (oldest {duration(s.oldest_wait)})" if s.oldest_wait is not None else ""
    lines = [
        f"Pool {s.name}",
        f"  limit      {s.limit}",
        f"  timeout    {seconds(s.timeout)}",
        f"  wait       {wait}",
        f"  in use     {s.in_use}" + (f" ({len(s.abandoned)} abandoned)" if s.abandoned else ""),
        f"  free       {s.free}"
        + (f" ({s.reserved} more kept for calls on their way)" if s.reserved else ""),
        f"  waiting    {s.waiting}{oldest}"
        + (f" ({s.standbys} standing by)" if s.standbys else ""),
        f"  instances  {', '.join(s.instances) or '-'}",
    ]
    if rates:
        lines += ["", "Rate limits"]
        rows = [_rate_row(rate) for rate in rates]
        headers = ["INSTANCE", "RATE", "AVAILABLE NOW", "NEXT CALL IN", "PAUSED FOR"]
        lines.append(indent(table(headers, rows, right=(2, 3, 4))))
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
                ago(h.since, s.now),
                ahead(h.lease_expires, s.now),
                "SUSPICIOUS" if h.task_id in suspicious else "",
            ]
            for h in s.holders
        ]
        headers = ["TASK ID", "TASK", "WORKER", "PID", "SINCE", "LEASE EXPIRES", ""]
        lines.append(indent(table(headers, rows)))
    if suspicious:
        lines.append(
            f"  SUSPICIOUS: {plural(len(suspicious), 'holder')} held the slot longer than "
            f"pools_suspicious_hold_seconds ({seconds(suspicious_after)}): stuck, or leaking "
            "its connection?"
        )
    if s.abandoned:
        lines += ["", *_describe_abandoned(s)]
    lines += ["", f"Waiters ({len(s.waiters)})"]
    if s.waiters:
        rows = [
            [w.task_id, w.task_name or "?", ago(w.since, s.now), ahead(w.deadline, s.now)]
            for w in s.waiters
        ]
        lines.append(indent(table(["TASK ID", "TASK", "WAITING SINCE", "DEADLINE"], rows)))
    return "\n".join(lines)


def _describe_abandoned(s: PoolStatus) -> list[str]:
    rows = [
        [
            a.task_id,
            a.task_name or "?",
            a.hostname or "?",
            str(a.pid) if a.pid is not None else "?",
            a.why or "?",
            ago(a.abandoned, s.now),
            ahead(a.until, s.now),
        ]
        for a in s.abandoned
    ]
    headers = ["TASK ID", "TASK", "WORKER", "PID", "ENDED BY", "ABANDONED", "FREE IN"]
    return [
        f"Abandoned ({len(s.abandoned)}): holders that ended without releasing; each slot stays "
        "taken while its call may be in flight ('celery -A <app> pools release TASK_ID' frees "
        "one now)",
        indent(table(headers, rows)),
    ]


def _rate_row(rate: InstanceRate) -> list[str]:
    paused = duration(rate.paused_for) if rate.paused_for > 0 else "-"
    if rate.rate is None:
        return [rate.instance, "-", "-", "-", paused]
    next_in = "now" if not rate.next_in else duration(rate.next_in)
    return [rate.instance, rate.rate, str(rate.available), next_in, paused]


def _describe_metrics(m: PoolMetrics) -> list[str]:
    if m.started is None:
        return ["Metrics: nothing counted yet"]
    return [
        f"Metrics (counted over {duration(m.period)}, since {clock(m.started)})",
        f"  acquisitions     {m.acquired} ({m.acquired_immediate} immediate, "
        f"{m.acquired_waited} after waiting)",
        f"  timeouts         {m.timeouts}",
        f"  clears           {m.clears} ({plural(m.cleared_waiters, 'waiter')} and "
        f"{plural(m.cleared_holders, 'holder')} dropped)",
        f"  releases         {m.released}",
        f"  reclaimed leases {m.reclaimed}",
        f"  abandoned        {m.abandoned} ({m.abandoned_expired} freed after the grace, "
        f"{m.abandoned_released} released by an operator)",
        f"  hand-offs        {m.handoffs} ({m.handoffs_retried} handed out again, "
        f"{m.grants_lapsed} grants lapsed, {m.grants_withdrawn} withdrawn, "
        f"{m.handoffs_returned} given back, {m.sent_back} sent back for a pause)",
        f"  standbys         {m.standbys_promoted} promoted, {m.standbys_woken} woken by a "
        f"freed slot, {m.standbys_returned} sent back to the FIFO",
        f"  wait for a slot  p50 {quantile(m.wait.quantile(0.5))}, "
        f"p95 {quantile(m.wait.quantile(0.95))}",
        f"  slot held        p50 {quantile(m.hold.quantile(0.5))}, "
        f"p95 {quantile(m.hold.quantile(0.95))}",
    ]


@pools.command(cls=CeleryCommand)
@click.argument("name", required=False)
@option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help=_INTERVAL_HELP,
)
@option("--iterations", type=click.IntRange(min=0), default=0, help=_ITERATIONS_HELP)
@json_option
@click.pass_context
def watch(
    ctx: click.Context, name: str | None, interval: float, iterations: int, as_json: bool
) -> None:
    """A live view of every pool (or NAME): in use against limit, waiting, oldest wait.

    On a terminal the view is redrawn in place; otherwise each refresh is printed after the
    previous one (with --json, one JSON line per refresh).
    """
    manager = manager_of(ctx)
    redraw = not as_json and sys.stdout.isatty()
    previous_lines = 0
    try:
        for index in _count(iterations):
            if index:
                time.sleep(interval)
            if as_json:
                statuses = [manager.status(name)] if name else manager.statuses()
                click.echo(json.dumps([views.status(s) for s in statuses]))
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
        all_metrics = [manager.metrics(name)] if name else manager.all_metrics()
    except PoolBackendError as exc:
        return f"{clock(time.time())}  {exc} (retrying every {seconds(interval)})"
    now = all_metrics[0].status.now if all_metrics else time.time()
    header = f"{clock(now)}  every {seconds(interval)}, Ctrl-C to stop"
    if not all_metrics:
        return f"{header}\nNo pools."
    rows = [
        [
            m.status.name,
            bar(m.status.in_use, m.status.limit),
            f"{m.status.in_use}/{m.status.limit}",
            str(m.status.waiting),
            duration(m.status.oldest_wait) if m.status.oldest_wait is not None else "-",
            quantile(m.wait.quantile(0.95)),
        ]
        for m in all_metrics
    ]
    headers = ["NAME", "USE", "IN USE", "WAITING", "OLDEST WAIT", "P95 WAIT"]
    return f"{header}\n{table(headers, rows, right=(2, 3, 4, 5))}"
