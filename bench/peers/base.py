"""What every peer adapter provides: a name, where its documentation says how to use it, how the
driver prepares it, and the slot a task holds while it calls the API.

An adapter is the library used the way its own documentation says (each module's docstring cites
it), inside an ordinary Celery task (:mod:`bench.peers.app`). Where the library blocks until a
slot is free, the task blocks; where it answers "no slot", the task retries by Celery countdown
(:data:`RETRY_COUNTDOWN`), as a Celery user would write it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import redis

from celery_pools import PoolManager

__all__ = ["RETRY_COUNTDOWN", "Busy", "Peer", "SlotPeer"]

#: Seconds a task that found no free slot waits before its next attempt, drawn uniformly: the
#: "retry every 0.2-0.5 s" users write today.
RETRY_COUNTDOWN = (0.2, 0.5)


class Busy(Exception):
    """No slot is free now: the task retries after :data:`RETRY_COUNTDOWN`."""


@dataclass(frozen=True)
class Peer:
    """One alternative a user would pick to cap the calls in flight.

    ``task`` is the Celery task that runs a call through it; ``package`` the PyPI distribution
    whose version the report shows; ``docs`` where its documentation says how to use it;
    ``limit_one`` whether it can only cap at 1 (a lock); ``worker_settings`` celery-pools
    settings its workers need beyond the benchmark's.
    """

    name: str
    package: str
    docs: str
    task: str = "peers.call"
    limit_one: bool = False
    worker_settings: dict[str, int] = field(default_factory=dict)

    def prepare(self, manager: PoolManager, key: str, limit: int) -> None:
        """Make ``key`` a fresh limit of ``limit`` before a run (in the driver). Nothing by
        default: the libraries create their keys on first use."""


class SlotPeer(Peer):
    """A peer whose slot a task takes inside its body, through :meth:`slot`."""

    def slot(
        self, client: redis.Redis, key: str, limit: int, lease: float
    ) -> AbstractContextManager[None]:
        """Hold one of ``limit`` slots of ``key`` for the block (in a worker process); raise
        :class:`Busy` when the library's way is to give up now and retry later. ``lease`` is the
        expiry the library's keys get, the same for every peer."""
        raise NotImplementedError
