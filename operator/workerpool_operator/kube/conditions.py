"""Status conditions of a WorkerPool, in the standard Kubernetes shape. Pure: no I/O, no clock.

A condition's ``lastTransitionTime`` moves only when its ``status`` changes, so recomputing the
same conditions every poll produces the same list, and the status is not rewritten.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from workerpool_operator.engine.wait_watch import Breach

READY = "Ready"
BROKER_REACHABLE = "BrokerReachable"
BEAT_READY = "BeatReady"  # only with spec.beat
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
