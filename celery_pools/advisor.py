"""Pool sizing: how many slots a pool needs, with the arithmetic shown.

The rule operators use: concurrency needed = arrival rate x p95 time a slot is held, plus
headroom (20-50 %) for spikes; and when several deployments share one backend, each may have at
most (backend's own cap - reserve) / deployments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import PoolConfigError
from .metrics import PoolMetrics

__all__ = ["Advice", "advise", "advise_pool"]


@dataclass(frozen=True)
class Advice:
    """A recommended limit and how it was reached."""

    concurrency: float | None
    recommended: int | None
    low: int | None
    high: int | None
    per_deployment_cap: int | None
    current_limit: int | None
    steps: list[str] = field(default_factory=list)

    def explain(self) -> str:
        """The arithmetic, one step a line."""
        return "\n".join(self.steps)


def _ceil(value: float) -> int:
    # 300 x 0.1 is 30.000000000000004 in floating point: round before taking the ceiling.
    return math.ceil(round(value, 6))


def advise(
    rate: float | None,
    hold_p95: float | None,
    *,
    headroom: float = 0.3,
    current_limit: int | None = None,
    backend_max: int | None = None,
    reserve: int = 0,
    deployments: int = 1,
) -> Advice:
    """Recommend a limit from an arrival ``rate`` (tasks/s) and the p95 ``hold_p95`` (seconds).

    ``headroom`` is the fraction added for spikes (0.3 = 30 %); the low and high figures are for
    20 % and 50 %. With ``backend_max``, the backend's own cap shared by ``deployments`` after a
    ``reserve``, each deployment's cap is floor((backend_max - reserve) / deployments) and the
    recommendation never exceeds it.
    """
    if headroom < 0 or headroom > 5:
        raise PoolConfigError.invalid("headroom", headroom, "a fraction from 0 to 5 (0.3 = 30 %)")
    if deployments < 1:
        raise PoolConfigError.invalid("deployments", deployments, "a whole number >= 1")
    if reserve < 0 or (backend_max is not None and not 0 <= reserve < backend_max):
        raise PoolConfigError.invalid("reserve", reserve, "0 or more, and less than --backend-max")
    steps: list[str] = []
    cap = None
    if backend_max is not None:
        cap = (backend_max - reserve) // deployments
        steps.append(
            f"per-deployment cap = floor(({backend_max} max - {reserve} reserved) / "
            f"{deployments} deployments) = {cap}"
        )
    if rate is None or hold_p95 is None:
        steps.append(
            "no arrival rate or hold time observed yet (no finished slot, or a counting period "
            "too short): nothing to size from"
        )
        return Advice(None, cap, None, None, cap, current_limit, steps)
    concurrency = rate * hold_p95
    steps.append(
        f"concurrency = arrival rate {rate:.3g}/s x p95 hold {hold_p95:.3g} s = {concurrency:.3g}"
    )
    low, high = _ceil(concurrency * 1.2), _ceil(concurrency * 1.5)
    recommended = max(1, _ceil(concurrency * (1 + headroom)))
    steps.append(
        f"with {headroom:.0%} headroom: ceil({concurrency:.3g} x {1 + headroom:g}) = "
        f"{recommended} (20-50 % headroom: {low}-{high})"
    )
    if cap is not None and recommended > cap:
        steps.append(
            f"capped at {cap}: the backend cannot give this deployment more; expect waiting "
            f"(demand needs {recommended})"
        )
        recommended = cap
    if current_limit is not None:
        verdict = (
            "keep it"
            if recommended == current_limit
            else f"{'raise' if recommended > current_limit else 'lower'} it to {recommended}"
        )
        steps.append(f"current limit {current_limit}: {verdict}")
    return Advice(concurrency, recommended, low, high, cap, current_limit, steps)


def advise_pool(metrics: PoolMetrics, **options: object) -> Advice:
    """Advice for a pool from its observed metrics (arrival rate, p95 hold, waits, timeouts)."""
    period = metrics.period
    rate = metrics.arrivals / period if period > 0 and metrics.arrivals else None
    hold = metrics.hold.quantile(0.95)
    advice = advise(rate, hold, current_limit=metrics.status.limit, **options)  # type: ignore[arg-type]
    observed = [
        f"observed over {period:.0f} s: {metrics.arrivals} arrivals, {metrics.acquired_waited} of "
        f"{metrics.acquired} acquisitions waited, {metrics.timeouts} timed out"
    ]
    wait = metrics.wait.quantile(0.95)
    if wait is not None:
        observed.append(f"p95 wait for a slot {wait:.3g} s (timeout {metrics.status.timeout:g} s)")
    return Advice(
        advice.concurrency,
        advice.recommended,
        advice.low,
        advice.high,
        advice.per_deployment_cap,
        advice.current_limit,
        observed + advice.steps,
    )
