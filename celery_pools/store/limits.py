"""The store's writes of instance limits: rate limits and pauses, obeyed by the next acquisition
everywhere (acquire.lua reads them). A pause is set by pause.lua, on the Redis clock: a shorter
one than the pause in force changes nothing, 0 lifts it."""

from __future__ import annotations

from celery_pools.ratelimit import RateLimit

from . import replies
from .base import ms
from .reading import StoreReading

__all__ = ["StoreLimits"]


class StoreLimits(StoreReading):
    """Rate limits and pauses of connector instances."""

    def set_rate_limit(self, instance: str, rate: RateLimit) -> None:
        """Give ``instance`` a rate limit (replacing any); obeyed by the next acquisition."""
        with self._backend(f"set the rate limit of instance {instance!r}"):
            self.client.hset(self.keys.rates, instance, rate.encode())

    def remove_rate_limit(self, instance: str) -> bool:
        """Remove the instance's rate limit; return whether it had one."""
        with self._backend(f"remove the rate limit of instance {instance!r}"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.keys.rates, instance)
            pipe.hdel(self.keys.rate_state, instance)
            removed, _ = pipe.execute()
        return bool(removed)

    def pause(self, instance: str, seconds: float) -> float:
        """Pause ``instance`` for every worker for ``seconds`` (0 lifts the pause).

        Returns when the pause ends (Unix seconds, Redis clock; 0 when not paused).
        """
        reply = self._run("pause", {"instance": instance, "pause_ms": ms(seconds)})
        return replies.seconds(reply[2])
