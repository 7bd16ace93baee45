"""Status conditions of a WorkerPool, in the standard Kubernetes shape. Pure: no I/O, no clock.

A condition's ``lastTransitionTime`` moves only when its ``status`` changes, so recomputing the
same conditions every poll produces the same list, and the status is not rewritten.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from workerpool_operator.engine.wait_watch import Breach

READY = "Ready"
BROKER_REACHABLE = "BrokerReachable"
BEAT_READY = "BeatReady"  # only with spec.beat
SCALE_TARGETS_FOUND = "ScaleTargetsFound"  # only with a queue's scaleTargetRef
REPLICAS_CONTESTED = "ReplicasContested"  # only while another manager writes an active queue's replicas
CELERY_QUEUES_SHARED = "CeleryQueuesShared"  # only while two groups count one Celery queue
WAITS_WITHIN_TARGET = "WaitsWithinTarget"  # only while a queue has a target wait

# Reasons (CamelCase, as the API conventions want).
REASON_SCALING = "Scaling"  # Ready=True: workloads applied, broker observed
REASON_AWAITING_OBSERVATION = "AwaitingObservation"  # workloads applied, first poll not back yet
REASON_OBSERVED = "Observed"  # BrokerReachable=True
REASON_SECRET_NOT_FOUND = "SecretNotFound"
REASON_SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
REASON_INVALID_BROKER_URL = "InvalidBrokerURL"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_REDIS_UNREACHABLE = "RedisUnreachable"
REASON_APPLY_FAILED = "WorkloadApplyFailed"
REASON_BEAT_RUNNING = "BeatRunning"
REASON_BEAT_NOT_READY = "BeatNotReady"
REASON_DUPLICATE_BEAT = "DuplicateBeat"
REASON_SHADOW = "Shadow"  # Ready=True: observed and decided, nothing written (scaling.mode: Shadow)
REASON_SCALE_TARGET_FOUND = "Found"
REASON_SCALE_TARGET_NOT_FOUND = "ScaleTargetNotFound"
REASON_OTHER_MANAGER = "OtherManager"
REASON_COUNTED_TWICE = "CountedByTwoGroups"
REASON_WITHIN_TARGET = "WithinTarget"
# A queue's target broken: the reasons of engine/wait_watch.py (RedisUnreachable, ScalingPaused,
# WorkersNotStarting, MaxReplicasReached, NotEnoughWorkers).

# Problems that stop a pool from being served at all (no broker to observe).
CONFIG_REASONS = frozenset(
    {REASON_SECRET_NOT_FOUND, REASON_SECRET_KEY_NOT_FOUND, REASON_INVALID_BROKER_URL, REASON_INVALID_SPEC}
)

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True, slots=True)
class Condition:
    """What a condition says now; the transition time is filled in by :func:`merge_conditions`."""

    type: str
    status: Status
    reason: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a pool cannot be served (or observed): a condition reason and a message a user can act on."""

    reason: str
    message: str


def pool_conditions(
    *,
    config_problem: Problem | None,
    broker_error: str | None,
    observed: bool,
    apply_problem: Problem | None = None,
) -> list[Condition]:
    """The ``Ready`` and ``BrokerReachable`` conditions of a pool.

    ``config_problem``: the spec or its Secret cannot be used (nothing is observed then);
    ``broker_error``: the last poll of the broker failed; ``observed``: at least one poll came back;
    ``apply_problem``: the pool's workloads could not be applied (the broker's condition is unaffected).
    """
    if config_problem is not None:
        reachable = Condition(BROKER_REACHABLE, "Unknown", config_problem.reason, config_problem.message)
        ready = Condition(READY, "False", config_problem.reason, config_problem.message)
        return [ready, reachable]
    if broker_error is not None:
        message = f"cannot observe the broker: {broker_error}; replicas are held (no scale-down)"
        reachable = Condition(BROKER_REACHABLE, "False", REASON_REDIS_UNREACHABLE, message)
    elif observed:
        reachable = Condition(BROKER_REACHABLE, "True", REASON_OBSERVED, "the broker answered the last poll")
    else:
        reachable = Condition(BROKER_REACHABLE, "Unknown", REASON_AWAITING_OBSERVATION, "first poll pending")
    if apply_problem is not None:
        ready = Condition(READY, "False", apply_problem.reason, apply_problem.message)
    elif reachable.status == "False":
        ready = Condition(READY, "False", reachable.reason, reachable.message)
    elif reachable.status == "Unknown":
        ready = Condition(READY, "Unknown", REASON_AWAITING_OBSERVATION, "workloads applied; first poll pending")
    else:
        ready = Condition(READY, "True", REASON_SCALING, "workloads applied and scaled on the broker's backlog")
    return [ready, reachable]


def conditions_for_problem(problem: Problem | None, *, broker_error: str | None, observed: bool) -> list[Condition]:
    """:func:`pool_conditions` for a pool's one current problem, by its kind: a spec or Secret problem
    (:data:`CONFIG_REASONS`) leaves nothing to observe, so ``BrokerReachable`` is Unknown; any other (the
    API server refusing a workload: :data:`REASON_APPLY_FAILED`) makes the pool not Ready while
    ``BrokerReachable`` still says what the last poll found."""
    if problem is not None and problem.reason in CONFIG_REASONS:
        return pool_conditions(config_problem=problem, broker_error=broker_error, observed=observed)
    return pool_conditions(config_problem=None, broker_error=broker_error, observed=observed, apply_problem=problem)


@dataclass(frozen=True, slots=True)
class Workloads:
    """What the conditions say of the pool's workloads besides the broker: the Deployments it scales without
    rendering (``scaleTargetRef``), which of them are missing, other writers of replicas, shared Celery queues and
    the queues in Shadow."""

    targets: Mapping[str, str]  # queue -> Deployment (scaleTargetRef)
    missing: Collection[str] = ()  # queues whose target does not exist
    contested: Mapping[str, tuple[str, Sequence[str]]] = field(default_factory=dict)  # queue -> (Deployment, others)
    shared: Mapping[str, Sequence[str]] = field(default_factory=dict)  # Celery queue -> the groups counting it
    shadow: Sequence[str] = ()  # queues in Shadow
    queue_count: int = 0


def workload_conditions(ready: Condition, workloads: Workloads) -> tuple[Condition, list[Condition]]:
    """``Ready`` as the workloads leave it, and the conditions present only where they apply: ``ScaleTargetsFound``
    (with a scaleTargetRef), ``ReplicasContested`` (another field manager holds an active queue's replicas: the
    two would undo each other's writes), ``CeleryQueuesShared`` (two groups count one queue's backlog). A missing
    scale target makes a Ready pool not Ready; Shadow queues make its reason ``Shadow``."""
    found: list[Condition] = []
    if workloads.targets:
        missing = [q for q in workloads.targets if q in workloads.missing]
        if missing:
            gone = "; ".join(f"queue {q}: Deployment {workloads.targets[q]} not found" for q in missing)
            message = f"{gone} (scaleTargetRef): nothing to scale until it exists"
            found.append(Condition(SCALE_TARGETS_FOUND, "False", REASON_SCALE_TARGET_NOT_FOUND, message))
            if ready.status == "True":
                ready = Condition(READY, "False", REASON_SCALE_TARGET_NOT_FOUND, message)
        else:
            found.append(
                Condition(SCALE_TARGETS_FOUND, "True", REASON_SCALE_TARGET_FOUND, "every scaleTargetRef exists")
            )
    if workloads.contested:
        found.append(
            Condition(REPLICAS_CONTESTED, "True", REASON_OTHER_MANAGER, contested_message(workloads.contested))
        )
    if workloads.shared:
        parts = [
            f"Celery queue {q} is counted by groups {' and '.join(groups)}" for q, groups in workloads.shared.items()
        ]
        message = (
            f"{'; '.join(parts)}: a task waiting there scales each of them (a queue counts for the group named like it "
            "alone: name a group after it, or list it in one group only)"
        )
        found.append(Condition(CELERY_QUEUES_SHARED, "True", REASON_COUNTED_TWICE, message))
    if workloads.shadow and ready.status == "True":
        which = "every queue" if len(workloads.shadow) == workloads.queue_count else ", ".join(workloads.shadow)
        message = f"observing and deciding for {which}, writing nothing (scaling.mode: Shadow)"
        ready = Condition(READY, "True", REASON_SHADOW, message)
    return ready, found


def contested_message(contested: Mapping[str, tuple[str, Sequence[str]]]) -> str:
    """Who else writes which queue's replicas, and what to do about it."""
    parts = [
        f"queue {queue}: spec.replicas of Deployment {deployment} is also written by {', '.join(others)}"
        for queue, (deployment, others) in contested.items()
    ]
    return (
        f"{'; '.join(parts)}. The operator writes its own count again at its next change, so the two undo each "
        "other's writes: remove the other writer (an HPA, a KEDA ScaledObject, replicas in a deploy tool's "
        "manifest), or set scaling.mode: Shadow meanwhile"
    )


def beat_condition(deployment: str, ready: int | None, duplicates: Sequence[str] = ()) -> Condition:
    """``BeatReady``: the beat pod is ready, and no other pool of the namespace runs beat for the same app on the
    same broker. The operator cannot load the app, so a beat that fails (exit code 5: nothing to schedule) shows
    here as a pod that does not become ready, with where to look."""
    if duplicates:
        others = ", ".join(sorted(duplicates))
        message = (
            f"WorkerPool {others} in this namespace also runs beat for this app on the same broker: one beat runs at "
            "a time (the others wait for its lock), so keep spec.beat in one pool only"
        )
        return Condition(BEAT_READY, "False", REASON_DUPLICATE_BEAT, message)
    if ready:
        return Condition(BEAT_READY, "True", REASON_BEAT_RUNNING, f"the beat pod of Deployment {deployment} is ready")
    message = (
        f"the beat pod of Deployment {deployment} is not ready: starting, waiting for another beat's lock, or "
        f"failing (kubectl logs deploy/{deployment}; exit code 5: the app has no beat_schedule and no scheduler)"
    )
    return Condition(BEAT_READY, "False", REASON_BEAT_NOT_READY, message)


def wait_condition(breaches: Sequence[tuple[str, Breach]], *, observed: bool) -> Condition:
    """``WaitsWithinTarget``, for a pool with a target wait on at least one queue: False while a queue has waited
    above its target for longer than a start-up delay (``breaches``: queue and why, in spec order; the first one's
    reason is the condition's, every one is in the message), True once every queue keeps its target."""
    if breaches:
        message = "; ".join(f"queue {queue}: {breach.message}" for queue, breach in breaches)
        return Condition(WAITS_WITHIN_TARGET, "False", breaches[0][1].reason, message)
    if not observed:
        return Condition(WAITS_WITHIN_TARGET, "Unknown", REASON_AWAITING_OBSERVATION, "first poll pending")
    return Condition(WAITS_WITHIN_TARGET, "True", REASON_WITHIN_TARGET, "every queue with a target wait keeps it")


def merge_conditions(
    previous: Iterable[Mapping[str, Any]] | None,
    current: Sequence[Condition],
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """The full conditions list to write: ``current`` in order, each keeping its previous
    ``lastTransitionTime`` when its status did not change. Conditions not in ``current`` are dropped
    (a merge patch replaces lists whole, so the list we write is the list users see).
    """
    before = {str(c.get("type")): c for c in previous or () if isinstance(c, Mapping)}
    merged: list[dict[str, Any]] = []
    for condition in current:
        old = before.get(condition.type)
        unchanged = old is not None and old.get("status") == condition.status and old.get("lastTransitionTime")
        entry: dict[str, Any] = {
            "type": condition.type,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": old["lastTransitionTime"] if unchanged and old is not None else now,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        merged.append(entry)
    return merged


def condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of ``type_`` in a status list, if present."""
    for entry in conditions or ():
        if entry.get("type") == type_:
            return entry
    return None
