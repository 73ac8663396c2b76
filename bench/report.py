"""The printed table: one row per figure, the issue's target, then one column per waiting mode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ROWS", "Row", "aligned", "markdown", "pipes", "table"]

MIB = 1024 * 1024


@dataclass(frozen=True)
class Row:
    """A figure of one scenario: how to read it from that scenario's result, and its target."""

    scenario: str
    label: str
    value: Callable[[dict[str, Any]], str]
    target: str = ""


def _field(name: str, spec: str = ".2f", scale: float = 1.0) -> Callable[[dict[str, Any]], str]:
    def read(result: dict[str, Any]) -> str:
        value = result.get(name)
        return "-" if value is None else format(value * scale, spec)

    return read


def _mib(name: str) -> Callable[[dict[str, Any]], str]:
    return _field(name, ".1f", 1 / MIB)


def _done(result: dict[str, Any]) -> str:
    tasks, completed = result["tasks"], result["completed"]
    note = "" if result["finished"] else " (window ended)"
    return f"{completed}/{tasks} in {result['elapsed_s']:.0f} s{note}"


def _makespan(result: dict[str, Any]) -> str:
    return f"{result['makespan_s']:.2f} s (ideal {result['ideal_makespan_s']:.2f})"


def _concurrency(result: dict[str, Any]) -> str:
    return f"{result['max_concurrency']} (limit {result['limit']})"


def _inversions(count: str, fraction: str) -> Callable[[dict[str, Any]], str]:
    def show(result: dict[str, Any]) -> str:
        share = result.get(fraction)
        if share is None:
            return "-"
        shown = f"{share:.0%}" if share >= 0.01 or share == 0 else f"{share:.2%}"
        return f"{result[count]} ({shown} of pairs)"

    return show


_BY_START = _inversions("order_inversions", "inversion_fraction")


def _cpu_per_task(result: dict[str, Any]) -> str:
    plain, pooled = result.get("plain_cpu_per_task_ms"), result.get("pooled_cpu_per_task_ms")
    return "-" if plain is None or pooled is None else f"{plain:.2f} / {pooled:.2f}"


def _lengths(result: dict[str, Any]) -> str:
    return f"{result['tasks']} calls, {result['median_ms']:.0f} / {result['mean_ms']:.0f}"


def _p50_p99(prefix: str) -> Callable[[dict[str, Any]], str]:
    """``<prefix>_p50_ms / <prefix>_p99_ms`` of a result."""

    def read(result: dict[str, Any]) -> str:
        p50, p99 = result.get(f"{prefix}_p50_ms"), result.get(f"{prefix}_p99_ms")
        return "-" if p50 is None or p99 is None else f"{p50:.1f} / {p99:.1f}"

    return read


def _extra_by_role(key: str) -> Callable[[dict[str, Any]], str]:
    def cell(result: dict[str, Any]) -> str:
        extra = result.get(key) or {}
        short = {"worker children": "children", "worker main": "main"}
        return (
            ", ".join(
                f"{short.get(role, role.removesuffix(' redis'))} {ms:+.2f}"
                for role, ms in extra.items()
            )
            or "-"
        )

    return cell


def _cpu(result: dict[str, Any]) -> str:
    readings = result.get("plain_batches_cpu", []) + result.get("pooled_batches_cpu", [])
    readings = readings or [result.get("cpu") or {}]
    busy = [r["busy"] for r in readings if r.get("busy") is not None]
    others = [r["others"] for r in readings if r.get("others") is not None]
    if not busy or not others:
        return "-"
    return f"{max(busy):.0%} (others {max(others):.0%})"


ROWS: tuple[Row, ...] = (
    Row("slotops", "acquire+release pairs/s", _field("pairs_per_s", ".0f")),
    Row("slotops", "PING round trips/s (same client)", _field("pings_per_s", ".0f")),
    Row("slotops", "PINGs per pair", _field("pings_per_pair")),
    Row("slotops", "Dramatiq ConcurrentRateLimiter pairs/s", _field("dramatiq_pairs_per_s", ".0f")),
    Row("slotops", "pairs/s vs Dramatiq", _field("pairs_vs_dramatiq")),
    Row("overhead", "plain Task no-ops/s", _field("plain_per_s", ".0f")),
    Row("overhead", "PooledTask no-ops/s", _field("pooled_per_s", ".0f")),
    Row("overhead", "throughput ratio pooled/plain", _field("throughput_ratio")),
    Row("overhead", "CPU per task, plain / pooled (ms)", _cpu_per_task),
    Row("overhead", "CPU of acquire + release scripts (ms)", _field("bare_pair_cpu_ms", ".3f")),
    Row("overhead", "extra CPU of a pooled task / scripts", _field("overhead_figure"), "<= 1.5"),
    Row("overhead", "extra CPU by process (ms per task)", _extra_by_role("extra_cpu_by_role_ms")),
    Row("overhead", "the scripts in a plain task (ms)", _field("in_task_pair_cpu_ms", ".3f")),
    Row("overhead", "  by process (ms per task)", _extra_by_role("scripts_extra_cpu_by_role_ms")),
    Row("overhead", "extra CPU / scripts in a plain task", _field("overhead_figure_in_task")),
    Row("overhead", "machine CPU busy, max of batches", _cpu),
    Row("saturation", "utilisation", _field("utilisation", ".3f"), ">= 0.97"),
    Row("saturation", "makespan", _makespan),
    Row("saturation", "utilisation after publication", _field("steady_utilisation", ".3f")),
    Row("saturation", "hand-off latency p50 (ms)", _field("handoff_p50_ms", ".1f"), "<= 1"),
    Row("saturation", "hand-off latency p99 (ms)", _field("handoff_p99_ms", ".1f"), "<= 10"),
    Row("saturation", "body end to next start p50 / p99 (ms)", _p50_p99("gap")),
    Row("saturation", "  after publication: hand-off p50 / p99 (ms)", _p50_p99("steady_handoff")),
    Row("saturation", "  after publication: end to next start (ms)", _p50_p99("steady_gap")),
    Row("saturation", "hand-off grant to start p50 / p99 (ms)", _p50_p99("grant_to_start")),
    Row("saturation", "  after publication (ms)", _p50_p99("steady_grant_to_start")),
    Row("saturation", "broker messages per task", _field("messages_per_task"), "<= 1"),
    Row(
        "saturation",
        "order inversions (grant order)",
        _inversions("grant_inversions", "grant_inversion_fraction"),
        "0",
    ),
    Row("saturation", "order inversions (start order)", _BY_START),
    Row("saturation", "max concurrency", _concurrency, "<= limit"),
    Row("saturation", "machine CPU busy", _cpu),
    Row("calls", "calls (median / mean ms)", _lengths),
    Row("calls", "utilisation seen by the API", _field("utilisation", ".3f"), ">= 0.97"),
    Row("calls", "makespan", _makespan),
    Row("calls", "API max in flight", _concurrency, "<= limit"),
    Row("calls", "API 429s", _field("refused", ".0f"), "0"),
    Row("calls", "hand-off latency p50 / p99 (ms)", _p50_p99("handoff")),
    Row("calls", "broker messages per task", _field("messages_per_task"), "<= 1"),
    Row("calls", "order inversions (start order)", _BY_START),
    Row("calls", "machine CPU busy", _cpu),
    Row("backlog", "tasks done", _done),
    Row("backlog", "broker messages per task done", _field("messages_per_task"), "<= 1"),
    Row("backlog", "worker RSS baseline (MiB)", _mib("worker_rss_baseline")),
    Row("backlog", "worker RSS peak (MiB)", _mib("worker_rss_peak")),
    Row("backlog", "worker RSS growth (MiB)", _mib("worker_rss_growth"), "flat (~0)"),
    Row("backlog", "worker main processes' RSS peak (MiB)", _mib("worker_main_rss_peak")),
    Row("backlog", "pools Redis used_memory peak (MiB)", _mib("pools_memory_peak")),
    Row("backlog", "broker Redis used_memory peak (MiB)", _mib("broker_memory_peak")),
    Row("backlog", "max concurrency", _concurrency, "<= limit"),
    Row("backlog", "machine CPU busy", _cpu),
)


def _cells(
    results: dict[str, dict[str, Any]], modes: list[str]
) -> tuple[list[list[str]], list[str]]:
    """One list of cells per row (scenario, figure, target, one per mode), and the notes."""
    lines = []
    notes: dict[str, None] = {}  # ordered, without repeats
    for row in ROWS:
        by_mode = results.get(row.scenario)
        if not by_mode:
            continue
        cells = [row.scenario, row.label, row.target]
        for mode in modes:
            result = by_mode.get(mode) or {}
            if result.get("error"):
                notes[f"{mode}: {row.scenario} failed: {result['error']}"] = None
                cells.append("failed")
            elif not result.get("available", True):
                notes[f"{mode}: not available: {result.get('reason', '')}"] = None
                cells.append("not available")
            else:
                cells.append(row.value(result))
        lines.append(cells)
    return lines, list(notes)


def table(results: dict[str, dict[str, Any]], modes: list[str]) -> str:
    """The table of ``results`` (scenario -> mode -> result) for ``modes``, as aligned text."""
    rows, notes = _cells(results, modes)
    return "\n".join([aligned([["scenario", "figure", "target", *modes], *rows]), *notes])


def markdown(results: dict[str, dict[str, Any]], modes: list[str]) -> str:
    """The same table in Markdown, for ``docs/benchmarks.md``."""
    rows, notes = _cells(results, modes)
    text = pipes([["scenario", "figure", "target", *modes], *rows])
    return "\n".join([text, *(f"\n{note}" for note in notes)])


def aligned(lines: list[list[str]]) -> str:
    """``lines`` (a header, then rows of cells) as aligned text, a rule under the header."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def pipes(lines: list[list[str]]) -> str:
    """``lines`` (a header, then rows of cells) as a Markdown table."""
    lines = [lines[0], ["---"] * len(lines[0]), *lines[1:]]
    return "\n".join(
        "| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines
    )
