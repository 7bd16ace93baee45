"""Worker groups on several Celery queues: what the engine sees of a group whose workers consume more than one
queue (``celery worker -Q normal,low``, ``queues[].celeryQueues``). Pure: observations in, one observation out.

The broker is read per Celery queue (a list per queue and priority, and a report hash per queue: ``reports.py``);
the engine decides per group, on one :class:`~.observation.QueueObservation`. :func:`group_observation` builds it:

- **backlog**: the waiting tasks of the queues the group *counts*. A Celery queue counts for the group named like
  it, when that group consumes it; a queue that is no consuming group's name counts for every group that consumes
  it, and :attr:`Grouping.shared` lists it (the operator warns: both groups scale for the same tasks). So with
  groups ``normal: [normal]`` and ``spare: [low, normal]``, ``normal``'s backlog scales ``normal`` only, and the
  spare workers help with it without being added for it;
- **workers and in flight**: each worker counts once, for one group: the one whose queues include every queue of
  the pool it reports on (the one with the fewest queues when several do, the first in the spec on a tie). A
  worker reports once per queue it consumes, each report with the tasks it holds from that queue: the group's view
  of a worker sums them (running, reserved), and it is draining only once every one of its queues says so (it
  takes tasks from none of them);
- **fires** (beat's announced work) and the oldest task's age: those of the counted queues.

A group that consumes only the queue named like it, and shares it with no other group (every pool before groups
existed), sees that queue's observation as it is: no copy, no cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from workerpool_operator.observation import QueueObservation, WorkerLoad

NOT_OBSERVED = "queue was not observed"


@dataclass(frozen=True, slots=True)
class Grouping:
    """Which Celery queues each worker group of one pool consumes, counts and needs read."""

    consumes: Mapping[str, tuple[str, ...]]  # group -> the Celery queues its workers consume, as the spec lists them
    counts: Mapping[str, tuple[str, ...]]  # group -> the Celery queues whose backlog scales it
    polled: Mapping[str, tuple[str, ...]]  # group -> the queues to read for it: its own and its neighbours'
    shared: Mapping[str, tuple[str, ...]]  # Celery queue -> the groups that count it, where more than one does
    simple: frozenset[str]  # groups that see their one queue's observation as it is

    def to_poll(self, groups: Sequence[str]) -> set[str]:
        """The Celery queues one poll must read for ``groups``."""
        wanted: set[str] = set()
        for group in groups:
            wanted.update(self.polled[group])
        return wanted


def grouping(consumes: Mapping[str, Sequence[str]]) -> Grouping:
    """The grouping of a pool's groups (group -> the Celery queues it consumes; empty: its own name), in spec order."""
    queues = {group: tuple(found) if found else (group,) for group, found in consumes.items()}
    counted_by: dict[str, list[str]] = {}
    for group, own in queues.items():
        for queue in own:
            named = queue in queues and queue in queues[queue]  # a group of that name consumes it
            if not named or queue == group:
                counted_by.setdefault(queue, []).append(group)
    counts = {group: tuple(q for q in own if group in counted_by.get(q, ())) for group, own in queues.items()}
    consumers: dict[str, list[str]] = {}
    for group, own in queues.items():
        for queue in own:
            consumers.setdefault(queue, []).append(group)
    polled: dict[str, tuple[str, ...]] = {}
    for group, own in queues.items():
        near = dict.fromkeys(own)
        for queue in own:
            for other in consumers[queue]:
                if other != group:
                    near.update(dict.fromkeys(queues[other]))
        polled[group] = tuple(near)
    simple = frozenset(group for group, own in queues.items() if own == (group,) and polled[group] == (group,))
    shared = {queue: tuple(groups) for queue, groups in counted_by.items() if len(groups) > 1}
    return Grouping(consumes=queues, counts=counts, polled=polled, shared=shared, simple=simple)


def group_observation(
    grouping: Grouping, group: str, observed: Mapping[str, QueueObservation], missing: str = NOT_OBSERVED
) -> QueueObservation:
    """What ``group`` sees of one poll (``observed``: every Celery queue read, by name). A queue of the group that
    failed, or was not read (``missing`` says why), fails the whole group's observation: never a partial count."""
    if group in grouping.simple:
        found = observed.get(group)
        return found if found is not None else QueueObservation(queue=group, error=missing)
    own = grouping.consumes[group]
    for queue in own:
        found = observed.get(queue)
        if found is None or not found.ok:
            error = missing if found is None else found.error
            return QueueObservation(queue=group, error=f"queue {queue}: {error}" if len(own) > 1 else error)
    counted = [observed[q] for q in grouping.counts[group]]
    ages = [obs.oldest_age for obs in counted if obs.oldest_age is not None]
    workers = _members(grouping, group, observed)
    return QueueObservation(
        queue=group,
        backlog=sum(obs.backlog for obs in counted),
        in_flight=sum(w.in_flight for w in workers),
        workers=workers,
        oldest_age=max(ages) if ages else None,
        fires=tuple(sorted(fire for obs in counted for fire in obs.fires)),
        backlogs=tuple((queue, observed[queue].backlog, queue in grouping.counts[group]) for queue in own),
    )


def _members(grouping: Grouping, group: str, observed: Mapping[str, QueueObservation]) -> tuple[WorkerLoad, ...]:
    """The group's own workers, each as the sum of its reports on the group's queues, by name."""
    reports: dict[str, dict[str, WorkerLoad]] = {}  # worker -> queue -> its report there
    for queue in grouping.polled[group]:
        found = observed.get(queue)
        for load in found.workers if found is not None else ():
            reports.setdefault(load.worker, {})[queue] = load
    own = set(grouping.consumes[group])
    owners: dict[frozenset[str], str | None] = {}
    members = []
    for worker, by_queue in reports.items():
        seen_on = frozenset(by_queue)
        if seen_on.isdisjoint(own):
            continue
        if seen_on not in owners:
            owners[seen_on] = owner(grouping, seen_on)
        if owners[seen_on] == group:
            members.append(_merged(worker, [load for queue, load in by_queue.items() if queue in own]))
    members.sort(key=lambda load: load.worker)
    return tuple(members)


def owner(grouping: Grouping, reported_on: frozenset[str]) -> str | None:
    """The group a worker reporting on these Celery queues belongs to: the one consuming all of them with the fewest
    queues, the first in the spec on a tie; ``None`` when no group consumes all of them."""
    best: str | None = None
    for group, own in grouping.consumes.items():
        if reported_on <= set(own) and (best is None or len(own) < len(grouping.consumes[best])):
            best = group
    return best


def _merged(worker: str, loads: Sequence[WorkerLoad]) -> WorkerLoad:
    """One worker's reports on several queues as one: what it holds from each summed, its counters (the same in
    every report) once, draining only when it drains every one of them."""
    if len(loads) == 1:
        return loads[0]
    return WorkerLoad(
        worker=worker,
        running=sum(load.running for load in loads),
        reserved=sum(load.reserved for load in loads),
        done=max(load.done for load in loads),
        heartbeat=max(load.heartbeat for load in loads),
        concurrency=max(load.concurrency for load in loads),
        draining=all(load.draining for load in loads),
        started=max(load.started for load in loads),
    )
