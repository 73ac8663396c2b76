"""How the commands print: durations, clock times, aligned tables, bars."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

__all__ = [
    "ago",
    "ahead",
    "bar",
    "clock",
    "duration",
    "indent",
    "plural",
    "quantile",
    "seconds",
    "table",
]


def seconds(value: float) -> str:
    return f"{value:g}s"


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def ago(timestamp: float, now: float) -> str:
    return f"{clock(timestamp)} ({duration(now - timestamp)} ago)"


def ahead(timestamp: float, now: float) -> str:
    return f"{clock(timestamp)} (in {duration(timestamp - now)})"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
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


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def quantile(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}s"


def indent(text: str) -> str:
    """``text`` with every line indented by two spaces."""
    return "\n".join("  " + line for line in text.splitlines())


def bar(used: int, limit: int, width: int = 20) -> str:
    """``[#####.....]``: ``used`` of ``limit`` as a bar ``width`` characters wide."""
    filled = min(width, round(width * used / limit)) if limit else width
    return "[" + "#" * filled + "." * (width - filled) + "]"
