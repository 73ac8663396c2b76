"""Pools as code: ``export FILE`` and ``import FILE``."""

from __future__ import annotations

from typing import Any

import click
from celery.bin.base import CeleryCommand

from celery_pools.portable import apply_document, dumps, export_document, format_for, loads

from .group import (
    confirm,
    format_option,
    json_option,
    manager_of,
    option,
    pools,
    print_json,
    yes_option,
)
from .output import plural, table

__all__ = ["export_", "import_"]

_DRY_RUN_HELP = "Show what would be created, changed and left alone; write nothing."
_PRUNE_HELP = (
    "Also delete pools and remove associations and rate limits that are not in FILE "
    "(waiting tasks of a deleted pool fail with PoolDeletedError)."
)


@pools.command(name="export", cls=CeleryCommand)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@format_option("json or yaml (default: from FILE's extension; json for '-').")
@click.pass_context
def export_(ctx: click.Context, file: str, fmt: str | None) -> None:
    """Write every pool, association and rate limit to FILE ('-' for stdout), JSON or YAML."""
    document = export_document(manager_of(ctx))
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
        plural(len(document.pools), "pool"),
        plural(len(document.associations()), "association"),
    ]
    if document.rate_limits:
        parts.append(plural(len(document.rate_limits), "rate limit"))
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
@option("--dry-run", is_flag=True, help=_DRY_RUN_HELP)
@option("--prune", is_flag=True, help=_PRUNE_HELP)
@format_option("json or yaml (default: from FILE's extension, else its content).")
@yes_option
@json_option
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
    manager = manager_of(ctx)
    if prune and not dry_run:
        planned = apply_document(manager, document, prune=True, dry_run=True)
        if planned.count("remove"):
            removed = [
                f"{c.kind.replace('_', ' ')} {c.name}"
                for c in planned.changes
                if c.action == "remove"
            ]
            confirm(yes, f"import {file} with --prune", "removes " + ", ".join(removed))
    report = apply_document(manager, document, prune=prune, dry_run=dry_run)
    if as_json:
        print_json(report.to_data())
        return
    rows = []
    for change in report.changes:
        word = _ACTION_WORDS[change.action][1 if dry_run else 0]
        rows.append([word, change.kind, change.name, _change_detail(change)])
    if rows:
        click.echo(table(["ACTION", "KIND", "NAME", "DETAIL"], rows))
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
