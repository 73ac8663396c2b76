"""The PNG: concurrency over time against the limit in the saturation scenario and, as the API
counted it, in the calls scenario, one line per waiting mode; the workers' memory during the
backlog below them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot"]

MIB = 1024 * 1024


def plot(results: dict[str, dict[str, Any]], path: Path) -> str | None:
    """Draw ``results`` (scenario -> mode -> result) to ``path``.

    Returns None when drawn, else why not (matplotlib missing, or nothing to draw).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'celery-pools[bench]')"
    panels = {
        name: data
        for name in ("saturation", "calls", "backlog")
        if (data := _available(results.get(name, {})))
    }
    if not panels:
        return "no saturation, calls or backlog results to draw"
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 4.2 * len(panels)), squeeze=False)
    for axis, (panel, data) in zip(axes[:, 0], panels.items(), strict=True):
        if panel == "backlog":
            _memory(axis, data)
        else:
            first = next(iter(data.values()))
            title = (
                f"saturation: {first['tasks']} tasks of {first['task_seconds'] * 1000:.0f} ms "
                f"on a pool of {first['limit']}: bodies running at once"
                if panel == "saturation"
                else f"calls: {first['tasks']} calls of {first['median_ms']:.0f} ms (median) "
                f"to an API capped at {first['limit']}: calls in flight, as the API counts them"
            )
            _concurrency(axis, data, title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def _available(by_mode: dict[str, Any]) -> dict[str, Any]:
    return {
        mode: result
        for mode, result in by_mode.items()
        if result.get("available", True) and not result.get("error")
    }


def _concurrency(axis: Any, by_mode: dict[str, Any], title: str) -> None:
    limit = 0
    for mode, result in by_mode.items():
        times = [t for t, _ in result["timeline"]]
        running = [n for _, n in result["timeline"]]
        axis.step(
            times, running, where="post", label=f"{mode} (utilisation {result['utilisation']:.2f})"
        )
        limit = max(limit, result["limit"])
    axis.axhline(limit, color="red", linestyle="--", label=f"limit {limit}")
    axis.set_title(title)
    axis.set_xlabel("seconds since the first task started")
    axis.set_ylabel("tasks running")
    axis.set_ylim(0, limit * 1.3 + 1)
    axis.legend(loc="upper right")
    axis.grid(alpha=0.3)


def _memory(axis: Any, by_mode: dict[str, Any]) -> None:
    for mode, result in by_mode.items():
        samples = result["samples"][1:]  # the first is the baseline, taken before publishing
        axis.plot(
            [s["t"] for s in samples],
            [s["worker_rss"] / MIB for s in samples],
            label=f"{mode}: workers' RSS",
        )
        axis.plot(
            [s["t"] for s in samples],
            [s["worker_main_rss"] / MIB for s in samples],
            linestyle=":",
            label=f"{mode}: main processes' RSS",
        )
    first = next(iter(by_mode.values()))
    axis.set_title(
        f"backlog: {first['tasks']} tasks queued at once on a pool of {first['limit']}: "
        "worker memory"
    )
    axis.set_xlabel("seconds since the workers began to consume the backlog")
    axis.set_ylabel("MiB")
    axis.set_ylim(bottom=0)
    axis.legend(loc="center right")
    axis.grid(alpha=0.3)
