"""What the store's operations answer. Times are Unix seconds on the Redis server's clock."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from celery_pools.models import AbandonedSlot

__all__ = [
    "Abandonment",
    "AcquireStatus",
    "Acquisition",
    "ClearResult",
    "DeleteResult",
    "Effects",
    "Freed",
    "Grant",
    "Handoff",
    "HolderProcess",
    "Parking",
    "Reclaimed",
    "Release",
    "Reserve",
    "StandbyBlock",
]

#: The free slots a producer parking a call (or asking for a grant) keeps for the calls it
#: published as usual that may be on their way to a worker: how many, the pool's count of such
#: calls that arrived (``Parking.arrived``) when it last read it ("" if never), and for how many
#: seconds at most (see lib/reserve.lua).
Reserve = tuple[int, int | str, float]


@dataclass(frozen=True)
class StandbyBlock:
    """A standby's block ahead of its next acquisition: on its wake LIST in ``pool``, for
    ``seconds`` at most (what its FULL "standby" answer said)."""

    pool: str
    seconds: float


class AcquireStatus(str, enum.Enum):
    """What an acquisition attempt found (acquire.lua's statuses)."""

    OK = "OK"
    STALE = "STALE"
    FULL = "FULL"
    RATE = "RATE"
    TIMEOUT = "TIMEOUT"
    CLEARED = "CLEARED"
    UNASSIGNED = "UNASSIGNED"


@dataclass(frozen=True)
class Reclaimed:
    """A slot taken back from a holder whose lease lapsed (its process died or hung)."""

    task_id: str
    task_name: str
    instance: str
    hostname: str
    pid: int | None


@dataclass(frozen=True)
class Handoff:
    """A slot handed to a parked task: publish ``entry``'s message with ``handoff_id``. A
    ``standby`` is handed no slot yet: its message goes out ahead of need, and its task blocks
    until a freed slot is handed to it under the same id."""

    token: str
    handoff_id: str
    pool: str
    entry: dict[str, Any]
    standby: bool = False


@dataclass(frozen=True)
class Effects:
    """What a store operation leaves its caller to finish, in ``pool``: the messages of tasks
    just handed a slot, to publish now, and the holders whose slots were taken back, to report.

    :meth:`celery_pools.handoff.Dispatcher.settle` does both.
    """

    pool: str = ""
    handoffs: tuple[Handoff, ...] = ()
    reclaimed: tuple[Reclaimed, ...] = ()

    def __add__(self, other: Effects) -> Effects:
        return Effects(
            self.pool or other.pool,
            self.handoffs + other.handoffs,
            self.reclaimed + other.reclaimed,
        )


@dataclass(frozen=True)
class Acquisition:
    """The answer to one acquisition attempt."""

    status: AcquireStatus
    now: float
    pool: str = ""
    first: float = 0.0
    limit: int = 0
    in_use: int = 0
    timeout: float = 0.0
    uid: str = ""
    reentrant: bool = False
    retry_after: float = 0.0
    reason: str = ""
    reclaimed: tuple[Reclaimed, ...] = ()
    #: When the slot was given to the task (OK): the hand-off, standby wake-up or grant at
    #: publication of a slot handed to it, else when it took it (epoch seconds, the Redis
    #: clock). A repeat call of the execution that holds the slot answers what its first did.
    granted: float = 0.0

    @property
    def waited(self) -> float:
        """Seconds since the task first asked for a slot."""
        return max(0.0, self.now - self.first)

    @property
    def deadline(self) -> float:
        """When the task gives up waiting."""
        return self.first + self.timeout

    @property
    def effects(self) -> Effects:
        """The holders this attempt reclaimed (an acquisition hands nothing on)."""
        return Effects(self.pool, (), self.reclaimed)


@dataclass(frozen=True)
class Grant:
    """A slot granted to a call as it is published: the wait state its message carries (in the
    ``celery_pools`` header), so that its task claims the slot when it starts."""

    pool: str
    uid: str
    timeout: float
    first: float
    handoff: str

    def header(self) -> dict[str, Any]:
        """The grant as a wait-state header value."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class _Settled:
    """The part of an answer that its caller must settle (see :class:`Effects`)."""

    pool: str = ""
    handoffs: tuple[Handoff, ...] = ()
    reclaimed: tuple[Reclaimed, ...] = ()

    @property
    def effects(self) -> Effects:
        """The hand-offs to publish and the holders reclaimed."""
        return Effects(self.pool, self.handoffs, self.reclaimed)


@dataclass(frozen=True)
class Parking(_Settled):
    """The answer to parking a task.

    ``parked`` is True when the task's message must not be published now: it waits in the pool's
    FIFO at ``position`` (0: the task was parked or held a slot already) until ``deadline``.
    ``granted`` is set when, instead, a slot was granted at once (the message is published as
    usual, with the grant). The hand-offs, which may include this very task, must be published by
    the caller.
    """

    parked: bool
    position: int = 0
    deadline: float | None = None
    #: Why it was not parked: "countdown", "limited" (paused), "rate" (rate-limited, and a slot
    #: free with nobody waiting, or too many of its instance's tasks parked already), "held" (its
    #: id holds a slot), "contended" (asked without its entry, and it must park), "gone" (the
    #: pool no longer exists), "" (no pool).
    reason: str = ""
    granted: Grant | None = None
    #: With a grant: how many slots were still free after it.
    free: int = 0
    #: With a grant: how many calls published as usual have reached a worker so far, in any
    #: producer (the pool's ``as_usual_arrived`` counter).
    arrived: int = 0
    #: When the store answered (Redis clock, seconds; 0.0 when it was not asked).
    now: float = 0.0


@dataclass(frozen=True)
class Release(_Settled):
    """The answer to a release: whether a slot was given back and how long it was held;
    ``elsewhere``: the token holds its slot as another execution than the one that asked (it
    was left alone)."""

    released: bool
    held: float | None = None
    elsewhere: bool = False


@dataclass(frozen=True)
class Abandonment(_Settled):
    """The answer to abandoning a slot (its holder ended without releasing it).

    ``slot`` is the abandoned slot, kept taken until its grace ends; None when the token held no
    slot, or held one it never used (a hand-off it had not claimed), which was given back at once
    (``released``), or stood by (dropped if revoked, else back in the FIFO). ``elsewhere``: the
    token holds a slot or stands by as an execution other than the one named (a copy of its
    message, or a hand-off or standby not taken up that the ending may not give back), or, for
    a task revoked before it started, as any execution: left alone.
    """

    slot: AbandonedSlot | None = None
    released: bool = False
    elsewhere: bool = False


@dataclass(frozen=True)
class Freed:
    """The answer to an operator's release of a task's slot: the pool whose slot was freed,
    whether it was an abandoned slot (or a running holder's), and who held it since when."""

    task_id: str
    pool: str
    abandoned: bool
    task_name: str = ""
    hostname: str = ""
    pid: int | None = None
    since: float | None = None


@dataclass(frozen=True)
class HolderProcess:
    """The process that took a slot, as its holder record says: host, pid and when that
    process started (:func:`celery_pools.processes.process_start`; None where unknown)."""

    hostname: str
    pid: int | None
    started: int | None = None


@dataclass(frozen=True)
class ClearResult:
    """What a clear did."""

    pool: str
    waiters_dropped: int
    holders_released: int


@dataclass(frozen=True)
class DeleteResult:
    """What a delete removed."""

    pool: str
    instances: int
    holders: int
    waiters: int
