"""From a decision to what is done about it (pure): the one reading of a :class:`~.decide.Decision` that both the
scaling loop (the operator and the local runtime) and the simulator carry out.

``decide`` returns the new replica count, the workers to remove first, and its new state, whose ``draining`` and
``leaving`` say which workers must hold a drain request. :func:`actions` turns the state before and after, the
decision and the replica count into :class:`Actions`:

- ``drain``: every worker that must hold a drain request now (worker -> when it was asked): the draining ones
  (``QueueState.draining``, going) and the busy ones handing back what they prefetched (``QueueState.handing_back``,
  staying: ``drain.hand_back``). All of them, every poll: the requests expire (``drain_requests.ttl_for``), so a
  lost write is made good at the next poll, and a worker that restarted is asked again. A runtime that keeps a
  worker's drain state itself (the simulator) drains those not draining yet;
- ``release``: workers whose request is taken back: back in service, or gone. A worker a scale-down removed keeps
  its request until it stops reporting (``QueueState.leaving``): released at once, it would take tasks again until
  its SIGTERM;
- ``scale_to``: the replica count to set, or ``None`` when it does not change;
- ``remove_first``: on a scale-down, exactly the workers it removes (idlest first), for ``pod-deletion-cost``;
- ``cancelled``: the tasks running on those workers (0 when they were drained first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from workerpool_operator.engine.decide import Decision, QueueState
from workerpool_operator.observation import WorkerLoad


@dataclass(frozen=True, slots=True)
class Actions:
    drain: Mapping[str, float] = field(default_factory=dict)
    release: tuple[str, ...] = ()
    scale_to: int | None = None
    remove_first: tuple[str, ...] = ()
    cancelled: int = 0

    @property
    def sends_drains(self) -> bool:
        """Whether there are drain requests to write (or take back)."""
        return bool(self.drain or self.release)


NOTHING = Actions()


def actions(
    before: QueueState,
    after: QueueState,
    decision: Decision,
    replicas: int,
    now: float,
    workers: Iterable[WorkerLoad] = (),
) -> Actions:
    """What to do about ``decision`` for a queue at ``replicas``, whose state went from ``before`` to ``after`` at
    ``now``; ``workers`` (what the poll saw) count the tasks a scale-down cancels."""
    held = {worker for worker, _ in before.draining}.union(before.leaving, before.handing_back)
    drain = dict(after.draining)
    for worker in after.handing_back:
        drain.setdefault(worker, now)
    still = set(drain).union(after.leaving)
    release = tuple(sorted(held - still))
    if decision.desired_replicas == replicas:
        if not drain and not release:
            return NOTHING
        return Actions(drain=drain, release=release)
    removed = decision.remove_first[: max(0, replicas - decision.desired_replicas)]
    cancelled = 0
    if removed:
        gone = set(removed)
        cancelled = sum(w.running for w in workers if w.worker in gone)
    return Actions(drain, release, decision.desired_replicas, removed, cancelled)
