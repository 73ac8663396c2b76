"""The peers table: a row per case, the API's view of each run, and a verdict.

A peer is **unsafe** when the API ever served more calls than the limit or answered 429; it
**loses a slot** when, after one holder's process was SIGKILLed, the API never again served
``limit`` other calls while work was still waiting (or only after more than three leases); it
**loses tasks** when some task's call never reached the API.
"""

from __future__ import annotations

from typing import Any

from bench.report import aligned, pipes

__all__ = ["HEADER", "markdown", "rows", "table", "verdict"]

#: The runs of a case, in the order they ran.
RUNS = ("fixed", "varied", "kill")

HEADER = [
    "peer",
    "package",
    "limit",
    "max in flight (API) / 429s",
    "utilisation fixed / varied",
    "release-to-start p50 / p99 ms (varied)",
    "order inversions (fixed)",
    "broker msgs / task",
    "Redis cmds (scripts) / task",
    "CPU ms / task: all (Redis)",
    "after a holder's SIGKILL: slot back / tasks failed+lost / killed task ran again",
    "verdict",
]


def _number(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def verdict(result: dict[str, Any], lease: float) -> str:
    """``safe``, or what went wrong (unsafe, loses a slot, loses tasks), from the API's view."""
    runs = [result[run] for run in RUNS if run in result]
    problems = []
    if any(r["max_in_flight"] > result["limit"] or r["refused"] for r in runs):
        problems.append("UNSAFE (over the cap)")
    kill = result.get("kill", {})
    back, waited = kill.get("slot_back_s"), kill.get("last_start_s") or 0.0
    if ("killed_at" in kill and back is None and waited > 2 * lease) or (
        back is not None and back > 3 * lease
    ):
        problems.append("LOSES A SLOT")
    elif "killed_at" in kill and back is None:
        problems.append("slot not back before the run ended (too short to tell)")
    if any(r["lost_tasks"] for r in runs):
        problems.append("LOSES TASKS")
    failures: dict[str, int] = {}
    for r in runs:
        for kind, count in r.get("failures", {}).items():
            failures[kind] = failures.get(kind, 0) + count
    if failures:
        shown = ", ".join(f"{count} x {kind}" for kind, count in sorted(failures.items()))
        problems.append(f"TASKS FAIL ({shown})")
    return ", ".join(problems) or "safe"


def _kill_cell(kill: dict[str, Any]) -> str:
    if "kill_error" in kill:
        return f"not killed: {kill['kill_error']}"
    back = kill.get("slot_back_s")
    if back is None:
        waited = kill.get("last_start_s")
        shown = "not back" + ("" if waited is None else f" in {waited:.1f} s of work")
    else:
        shown = f"{back:.1f} s"
    again = "yes" if kill.get("victim_calls", 0) >= 2 else "no"
    return f"{shown} / {kill.get('failed_tasks', 0)}+{kill['lost_tasks']} / {again}"


def rows(results: dict[str, Any], lease: float) -> list[list[str]]:
    """One row of cells per case of ``results`` (label -> result)."""
    lines = []
    for label, result in results.items():
        package = f"{result.get('package', '')} {result.get('version') or ''}".strip()
        if "error" in result:
            failed = f"failed: {result['error']}"
            lines.append([label, package, str(result["limit"]), failed] + [""] * 8)
            continue
        fixed, varied, kill = result["fixed"], result["varied"], result["kill"]
        runs = [fixed, varied, kill]
        share = fixed["inversion_fraction"]
        lines.append(
            [
                label,
                package,
                str(result["limit"]),
                f"{max(r['max_in_flight'] for r in runs)} / {sum(r['refused'] for r in runs)}",
                f"{_number(fixed['utilisation'], '.2f')} / {_number(varied['utilisation'], '.2f')}",
                f"{_number(varied['handoff_p50_ms'], '.1f')} / "
                f"{_number(varied['handoff_p99_ms'], '.0f')}",
                f"{share:.1%}",
                _number(fixed["broker_messages_per_task"], ".2f"),
                f"{_number(fixed['redis_commands_per_task'], '.1f')} "
                f"({_number(fixed['redis_script_calls_per_task'], '.1f')})",
                f"{_number(fixed['cpu_ms_per_task'], '.1f')} "
                f"({_number(fixed['redis_cpu_ms_per_task'], '.2f')})",
                _kill_cell(kill),
                verdict(result, lease),
            ]
        )
    return lines


def table(results: dict[str, Any], lease: float) -> str:
    """The peers table as aligned text."""
    return aligned([HEADER, *rows(results, lease)])


def markdown(results: dict[str, Any], lease: float) -> str:
    """The peers table in Markdown, for ``docs/benchmarks.md``."""
    return pipes([HEADER, *rows(results, lease)])
