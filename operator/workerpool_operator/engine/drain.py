"""Scale-down without killing: which workers to drain, when to remove them, when to take them back. Pure.

The engine decides how many workers a queue should have serving (``wanted``: reporting workers that are not
draining, plus pods that do not report yet); this module turns that into what the backend does:

- more wanted than serving: take back draining workers first (instant: they are running), then add pods;
- fewer: first remove pods that do not report yet (starting: the ReplicaSet removes unready pods first),
  then ask the idlest workers to drain (fewest running, then fewest reserved): they stop taking tasks,
  hand back what they prefetched and finish what they run;
- a draining worker is removed once its report says it is draining and idle, or after ``drain_timeout``
  whatever it runs; while pods are starting nobody is removed by name (the ReplicaSet would remove the
  starting pods instead);
- a worker asked to drain that never says so (an older worker image) is removed once idle after
  ``UNCONFIRMED_AFTER`` seconds, as the idlest worker was before draining existed.

With ``drain_timeout`` 0 nothing drains: the idlest workers are removed at once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from workerpool_operator.observation import WorkerLoad

HAND_BACK_AFTER = 30.0  # task seconds from which a busy worker's prefetched tasks are sent back to the queue
UNCONFIRMED_AFTER = 10.0  # seconds a drain request may go unanswered (reports come every 2 s) before the worker
# is treated as one that cannot drain

Draining = tuple[tuple[str, float], ...]


class Plan(NamedTuple):
    desired_replicas: int
    remove_first: tuple[str, ...]
    drain: tuple[str, ...]
    undrain: tuple[str, ...]
    draining: Draining
    added: int  # pods added
    cut: int  # replicas removed that do not report yet
    note: str  # what happened to draining workers, for the reason ("" when nothing)


def idlest_first(workers: tuple[WorkerLoad, ...], count: int) -> tuple[str, ...]:
    """The ``count`` workers to remove first: fewest running + reserved, then fewest running, then by name."""
    if count <= 0 or not workers:
        return ()
    ranked = sorted([(w.running + w.reserved, w.running, w.worker) for w in workers])
    return tuple(name for _, _, name in ranked[:count])


def still_draining(
    workers: tuple[WorkerLoad, ...], draining: Draining, now: float, handing: tuple[str, ...] = ()
) -> Draining:
    """The drain state after an observation: workers that stopped reporting are gone; a worker that says it is
    draining but is not in the state (a restart lost it), nor handing back, is adopted."""
    present = {w.worker for w in workers}
    kept = tuple(item for item in draining if item[0] in present)
    known = {name for name, _ in kept}.union(handing)
    return kept + tuple((w.worker, now) for w in workers if w.draining and w.worker not in known)


def hand_back(
    workers: tuple[WorkerLoad, ...], handing: tuple[str, ...], plan: Plan, task_seconds: float | None, policy: Any
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Long tasks: a busy worker's prefetched tasks would wait a whole task behind it, while other workers may
    be idle. Such a worker (every slot running, something reserved) is asked to drain, which hands its
    prefetched tasks back to the queue; once a slot frees it is taken back. Returns (workers handing back now,
    to drain, to take back). Nothing of it with draining off or tasks shorter than ``HAND_BACK_AFTER``."""
    if policy.drain_timeout <= 0 or task_seconds is None or task_seconds < HAND_BACK_AFTER:
        return (), (), handing  # take back any left from before
    slots = policy.target_per_replica if policy.target_per_replica > 0 else 1
    leaving = {name for name, _ in plan.draining}
    loads = {w.worker: w for w in workers}
    kept: list[str] = []
    take: list[str] = []
    for name in handing:
        worker = loads.get(name)
        if worker is None or name in leaving:
            continue  # gone, or drained for a scale-down now
        if worker.running < (worker.concurrency or slots):
            take.append(name)
        else:
            kept.append(name)
    asked = set(handing)
    hand = tuple(
        w.worker
        for w in workers
        if w.reserved and w.running >= (w.concurrency or slots) and w.worker not in asked and w.worker not in leaving
    )
    return (*kept, *hand), hand, tuple(take)


def plan(
    wanted: int, current: int, workers: tuple[WorkerLoad, ...], draining: Draining, drain_timeout: float, now: float
) -> Plan:
    """What to do so that ``wanted`` workers serve; ``draining`` as returned by :func:`still_draining`."""
    reporting = len(workers)
    starting = current - reporting if current > reporting else 0
    if drain_timeout <= 0:
        return _without_draining(wanted, current, workers, draining)
    serving = current - len(draining)
    add = cut = 0
    drain: tuple[str, ...] = ()
    undrain: tuple[str, ...] = ()
    if wanted > serving:
        by_load = {w.worker: w.running + w.reserved for w in workers}
        busiest = sorted(draining, key=lambda item: (-by_load.get(item[0], 0), item[0]))
        undrain = tuple(name for name, _ in busiest[: wanted - serving])
        add = wanted - serving - len(undrain)
        if undrain:
            taken = set(undrain)
            draining = tuple(item for item in draining if item[0] not in taken)
    elif wanted < serving:
        surplus = serving - wanted
        cut = surplus if surplus < starting else starting
        if surplus > cut:
            held = {name for name, _ in draining}
            drain = idlest_first(tuple(w for w in workers if w.worker not in held), surplus - cut)
            draining = draining + tuple((name, now) for name in drain)
    remove: tuple[str, ...] = ()
    note = ""
    if draining and starting <= cut:  # with pods still starting, the ReplicaSet would remove those instead
        loads = {w.worker: w for w in workers}
        fresh = set(drain)
        remove = tuple(
            name
            for name, since in draining
            if name not in fresh and _removable(loads[name], now - since, drain_timeout)
        )
        if remove:
            gone = set(remove)
            draining = tuple(item for item in draining if item[0] not in gone)
            note = f"remove {len(remove)} drained worker{'s' if len(remove) > 1 else ''}"
    desired = current + add - cut - len(remove)
    return Plan(desired, remove, drain, undrain, draining, add, cut, note)


def _removable(worker: WorkerLoad, draining_for: float, drain_timeout: float) -> bool:
    if draining_for >= drain_timeout:
        return True
    idle = not worker.running and not worker.reserved
    return idle and (worker.draining or draining_for >= UNCONFIRMED_AFTER)


def _without_draining(wanted: int, current: int, workers: tuple[WorkerLoad, ...], draining: Draining) -> Plan:
    """drainTimeoutSeconds 0: the replicas follow ``wanted`` at once, the idlest workers named first; workers
    still draining from before are taken back."""
    undrain = tuple(name for name, _ in draining)
    remove = idlest_first(workers, current - wanted) if wanted < current else ()
    added = wanted - current if wanted > current else 0
    return Plan(wanted, remove, (), undrain, (), added, 0, "")
