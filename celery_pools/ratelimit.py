"""Rate limits per connector instance: the value object, its parsing, and what it looks like now.

A rate limit is shared by every worker: it is kept in Redis beside the instance's pool
association and enforced by the acquire script with GCRA (the generic cell rate algorithm) on the
Redis server's clock, so calls are spaced evenly and there is no double burst at window edges.

``"60/m"`` allows one call a second; ``burst=5`` lets up to 5 more go at once after a quiet
spell. In any window of one period there are at most ``count + burst`` calls.
"""

from __future__ import annotations

import re

from pydantic import Field

from .errors import PoolConfigError
from .models import Model

__all__ = ["InstanceRate", "RateLimit", "parse_rate"]

_UNITS = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hour": 3600,
    "d": 86400, "day": 86400,
}  # fmt: skip
_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*")
_ALLOWED = (
    "a rate is '<calls>/<unit>' such as '60/m', '10/s', '1000/h' or '5/10s' (units s, m, h, d; "
    "calls >= 1)"
)


class RateLimit(Model):
    """``count`` calls per ``period`` seconds, plus up to ``burst`` extra calls at once."""

    count: int = Field(ge=1)
    period: float = Field(gt=0)
    burst: int = Field(default=0, ge=0)

    @property
    def interval(self) -> float:
        """Seconds between two calls at the steady rate."""
        return self.period / self.count

    def __str__(self) -> str:
        unit = {1: "s", 60: "m", 3600: "h", 86400: "d"}.get(int(self.period))
        spec = f"{self.count}/{unit}" if unit else f"{self.count}/{self.period:g}s"
        return spec + (f" (burst {self.burst})" if self.burst else "")

    def encode(self) -> str:
        """The form kept in Redis: ``<interval ms>/<tolerance ms>/<count>/<period ms>``.

        The acquire script needs only the first two; the rest lets the rate be read back.
        """
        interval = self.period * 1000 / self.count
        return f"{interval:.6f}/{interval * self.burst:.6f}/{self.count}/{self.period * 1000:.3f}"

    @classmethod
    def decode(cls, raw: str, burst: int | None = None) -> RateLimit:
        """Read back :meth:`encode`'s form."""
        interval, tolerance, count, period = raw.split("/")
        steps = round(float(tolerance) / float(interval)) if float(interval) else 0
        return cls(
            count=int(count), period=float(period) / 1000, burst=steps if burst is None else burst
        )


def parse_rate(spec: object, burst: object = 0) -> RateLimit:
    """Parse ``"60/m"``-style rates (Celery's form, plus an optional multiplier: ``"5/10s"``).

    Raises :class:`PoolConfigError` naming the value and the accepted forms.
    """
    if isinstance(spec, RateLimit):
        return spec
    match = _RATE_RE.fullmatch(spec) if isinstance(spec, str) else None
    if match is None or match.group(3) not in _UNITS or int(match.group(1)) < 1:
        raise PoolConfigError.invalid("rate limit", spec, _ALLOWED)
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
        raise PoolConfigError.invalid("burst", burst, "a whole number of extra calls >= 0")
    multiplier = int(match.group(2) or 1)
    if multiplier < 1:
        raise PoolConfigError.invalid("rate limit", spec, _ALLOWED)
    return RateLimit(
        count=int(match.group(1)), period=float(multiplier * _UNITS[match.group(3)]), burst=burst
    )


class InstanceRate(Model):
    """A connector instance's rate limit and how close it is to it, read on the Redis clock."""

    instance: str
    rate: str | None = Field(default=None, description="The limit, e.g. '60/m (burst 5)'.")
    available: int | None = Field(
        default=None, description="Calls that may start at once now (burst + 1 when idle)."
    )
    next_in: float | None = Field(
        default=None, description="Seconds until the next call may start (0 when one may now)."
    )
    paused_for: float = Field(default=0.0, description="Seconds the instance stays paused.")
