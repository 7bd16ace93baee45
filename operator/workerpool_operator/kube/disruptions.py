"""Disruptions the operator does not start (pure): busy worker pods protected from voluntary node disruption, and
workers that vanished with their tasks.

**Protection.** Karpenter does not disrupt a node (consolidation, drift) while a pod on it is annotated
``karpenter.sh/do-not-disrupt: "true"``; the cluster autoscaler does not scale a node down while a pod says
``cluster-autoscaler.kubernetes.io/safe-to-evict: "false"``. A worker busy for :data:`PROTECT_AFTER` seconds in a
row (its reports say it runs a task at every poll) gets both, and loses them when a report says it is idle: a worker
running short tasks is never marked, one running long tasks is marked once and unmarked once per busy stretch, and
never written twice within :data:`MIN_WRITE_INTERVAL`. So a pod costs at most two writes per busy stretch, and at
most one write per :data:`MIN_WRITE_INTERVAL`. A stopping worker keeps its mark until it is idle (its node must
not go while it finishes). Neither mark stops ``kubectl drain``, a node's expiry or its loss: those evict (SIGTERM,
then the pod's grace period: ``worker_env.worker_grace``) or kill.

**Lost workers.** A worker whose report aged out (its heartbeat stopped a report TTL ago: the process was killed,
OOM, its node lost) while it held tasks, and that no scale-down of ours removed, is lost with them: the
``acks_late`` ones come back after the broker's visibility timeout, the others are gone. A worker that exits
cleanly deletes its report at once, so its report vanishes younger than the TTL: not a loss. (Exact while polls are
more frequent than the TTL less a report interval, 13 s by default.) A stopping worker lost so was killed at the
end of its grace period.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from workerpool_operator.observation import WorkerLoad
from workerpool_operator.reports import DEFAULT_TTL

DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
PROTECTED = {DO_NOT_DISRUPT: "true", SAFE_TO_EVICT: "false"}
UNPROTECTED = {DO_NOT_DISRUPT: None, SAFE_TO_EVICT: None}  # a merge patch removing both
PROTECT_AFTER = 60.0  # seconds a worker runs tasks, poll after poll, before its pod is protected
MIN_WRITE_INTERVAL = 30.0  # seconds between two writes of one pod's marks
CLOCK_SLACK = 0.5  # seconds between the broker's clock (heartbeats) and ours (polls)

WORKER_LOST = "worker_lost"
STOPPED_AT_GRACE = "stopped_at_grace"


@dataclass(frozen=True, slots=True)
class Marks:
    """What the operator knows of one pod's protection."""

    busy_since: float | None = None  # the first poll of the current busy stretch
    marked: bool = False
    written: float = float("-inf")  # when its marks were last written


@dataclass(frozen=True, slots=True)
class Protection:
    """The writes one poll asks for, and the marks after them."""

    protect: tuple[str, ...] = ()
    release: tuple[str, ...] = ()
    marks: Mapping[str, Marks] = field(default_factory=dict)


def protection(
    workers: Iterable[WorkerLoad], known: Mapping[str, Marks], now: float, after: float = PROTECT_AFTER
) -> Protection:
    """Which pods to protect and which to release, for the workers one poll saw (``after`` 0: protect none)."""
    protect: list[str] = []
    release: list[str] = []
    marks: dict[str, Marks] = {}
    for worker in workers:
        name = worker.worker.rsplit("@", 1)[-1]  # a Celery hostname names its pod after the @
        before = known.get(name, Marks())
        busy = worker.running > 0
        since = (before.busy_since if before.busy_since is not None else now) if busy else None
        writable = now - before.written >= MIN_WRITE_INTERVAL
        if busy and not before.marked and after > 0 and now - since >= after and writable:  # type: ignore[operator]
            protect.append(name)
            marks[name] = Marks(since, True, now)
        elif not busy and before.marked and writable:
            release.append(name)
            marks[name] = Marks(None, False, now)
        else:
            marks[name] = Marks(since, before.marked, before.written)
    return Protection(tuple(protect), tuple(release), marks)  # a pod gone is forgotten: its marks went with it


@dataclass(frozen=True, slots=True)
class Lost:
    """A worker that vanished with tasks: how many it held, and why it went."""

    worker: str
    running: int
    reserved: int
    cause: str  # WORKER_LOST or STOPPED_AT_GRACE


def vanished(
    before: Iterable[WorkerLoad],
    now_seen: Iterable[WorkerLoad],
    removed: Collection[str],
    now: float,
    ttl: float = DEFAULT_TTL,
) -> list[Lost]:
    """The workers of the last poll (``before``) missing from this one, that held tasks, went without a clean exit
    (their report aged out: ``ttl``) and were not ``removed`` by a scale-down of ours (``QueueState.leaving``)."""
    present = {w.worker for w in now_seen}
    lost = []
    for worker in before:
        if worker.worker in present or worker.worker in removed or not worker.running + worker.reserved:
            continue
        if now - worker.heartbeat < ttl - CLOCK_SLACK:
            continue  # younger than the TTL: deleted by a clean exit, not aged out
        cause = STOPPED_AT_GRACE if worker.stopping else WORKER_LOST
        lost.append(Lost(worker.worker, worker.running, worker.reserved, cause))
    return lost
