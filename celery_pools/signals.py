"""Celery-style signals sent by pooled tasks.

Connect to them like any Celery signal::

    from celery_pools import signals

    @signals.slot_acquired.connect
    def on_acquired(sender, pool, instance, task_id, waited, **kwargs):
        metrics.observe(pool, waited)

``sender`` is the task. Every signal carries ``pool``, ``instance`` and ``task_id``; times are in
seconds. Receivers run in the process where the event happens (usually the worker's child process)
and their exceptions are logged, never raised into the task.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = ["slot_acquired", "slot_handoff", "slot_released", "slot_timeout", "slot_waiting"]

#: A slot was taken. ``waited``: seconds since the task first asked for it; ``first``: when it
#: first asked; ``granted``: when the pool gave it the slot (a slot handed to a parked task or a
#: standby: the hand-off, which its claim follows; else as it was taken). Times are epoch seconds
#: by the Redis server's clock, to the millisecond.
slot_acquired = Signal(
    name="slot_acquired",
    providing_args={"pool", "instance", "task_id", "waited", "first", "granted"},
)

#: The pool was full and the task waits: asks again after ``countdown`` seconds (in its worker
#: process when the countdown fits in ``pools_wait_in_process_seconds``, else sent again), or
#: parked for a hand-off (``countdown`` None). ``waited``: seconds so far; ``deadline``: when it
#: gives up.
slot_waiting = Signal(
    name="slot_waiting",
    providing_args={"pool", "instance", "task_id", "waited", "countdown", "deadline"},
)

#: The task gave up at its deadline and fails with PoolTimeoutError. ``waited``: seconds waited.
slot_timeout = Signal(name="slot_timeout", providing_args={"pool", "instance", "task_id", "waited"})

#: A freed slot was handed to a parked task, whose message is about to be published (hand-off
#: mode). ``sender`` is the app; ``handoff_id`` identifies this hand-off.
slot_handoff = Signal(
    name="slot_handoff", providing_args={"pool", "instance", "task_id", "handoff_id"}
)

#: A slot was given back. ``held``: seconds it was held (None if unknown).
slot_released = Signal(name="slot_released", providing_args={"pool", "instance", "task_id", "held"})
