"""The WorkerPool status document, built from what the operator saw and decided. Pure: no I/O, no clock.

Status is written only when something a user cares about changed: :func:`build_status` returns the
same document for the same facts (condition times and last-scale times are carried over), and
:func:`write_needed` tells a change of state (conditions, replicas, decisions: write now) from a mere
change of figures (backlog and in-flight counts move with every poll: refreshed at most every
``figures_refresh`` seconds, so a busy queue does not cost an API write per poll).

Each queue's waits (``engine/wait_watch.py``: the oldest waiting task's age, measured or estimated, its p95 over a
window, the target and since when the age is above it) are figures too, apart from which kind of age it is and the
target (state); a target broken for longer than a start-up delay is a condition (``conditions.wait_condition``),
written at once. :func:`wait_poll` reads a poll as the watch needs it.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workerpool_operator.engine import ScalingPolicy
from workerpool_operator.engine.wait_watch import Poll, Waits
from workerpool_operator.kube.conditions import Condition, merge_conditions
from workerpool_operator.observation import WorkerLoad
from workerpool_operator.scaling_types import PoolResult, QueueResult

# Figures that move with every poll; every other status field is state (a group's queues: their names).
# (``waitAboveTargetSince`` moves each time the oldest task's age crosses the target, which a queue held near it may
# do often; the condition it leads to is state.)
FIGURE_FIELDS = frozenset({"backlog", "inFlight", "oldestTaskAgeSeconds", "waitP95Seconds", "waitAboveTargetSince"})
QUEUE_FIGURE_FIELDS = frozenset({"backlog"})  # of each entry of a group's celeryQueues
SHADOW_FIELDS = ("mode", "wouldScaleTime", "wouldScaleReason")  # a queue's, while it is in Shadow mode
TOTAL_FIGURE_FIELDS = frozenset({"totalBacklog"})
DEFAULT_FIGURES_REFRESH = 30.0


def rfc3339(timestamp: float) -> str:
    """A unix time as Kubernetes writes times (second precision, UTC)."""
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unix_time(text: object) -> float | None:
    """A time as :func:`rfc3339` writes it, as a unix time (None for anything else)."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """What the last poll of one queue showed. ``None`` keeps the previous figure (the poll failed)."""

    name: str
    backlog: int | None = None
    in_flight: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    desired_replicas: int | None = None
    draining: int | None = None  # workers asked to drain (they take no new task; removed once idle)
    oldest_age: float | None = None
    reason: str | None = None  # the decision's reason: written (as lastScaleReason) when this poll scaled
    scaled: bool = False  # the replica count was changed by this poll
    shadow: bool | None = None  # the queue is in Shadow mode (None: keep what the status says)
    would_scale: bool = False  # in Shadow: the count it would set changed with this poll
    scale_target: str | None = None  # the Deployment it scales without rendering (scaleTargetRef)
    scale_down: str | None = None  # how a scale-down picks its pods (None: not known from this poll)
    celery_queues: tuple[tuple[str, int, bool], ...] | None = None  # a group's queues: (name, backlog, counted)
    versions: tuple[VersionFigures, ...] | None = None  # mid-rollout: the workers of each version; () none
    waits: Waits | None = None  # the queue's waits after this poll (wait_watch.py); None: not watched


@dataclass(frozen=True, slots=True)
class VersionFigures:
    """The workers of one pod template version of a queue (issue of a rollout: see ``kube/render.py``)."""

    version: str  # the template's version label (12 hex digits)
    current: bool
    serving: int
    stopping: int


def version_figures(workers: Sequence[WorkerLoad], current: int) -> tuple[VersionFigures, ...]:
    """The workers of each version, the current one first, then the others by version; () when every worker runs
    the current version and none is stopping (no rollout). Workers reporting no version (before 0.3) count as the
    current version's."""
    counts: dict[int, list[int]] = {}
    for worker in workers:
        version = worker.version or current
        serving_stopping = counts.setdefault(version, [0, 0])
        serving_stopping[1 if worker.stopping else 0] += 1
    if set(counts) <= {current} and not counts.get(current, [0, 0])[1]:
        return ()
    ordered = sorted(counts, key=lambda v: (v != current, v))
    return tuple(VersionFigures(f"{v:012x}", v == current, counts[v][0], counts[v][1]) for v in ordered)


def _version_entry(version: VersionFigures) -> dict[str, Any]:
    return {
        "version": version.version,
        "current": version.current,
        "serving": version.serving,
        "stopping": version.stopping,
    }


def scaled(queue: QueueResult) -> bool:
    """Whether this tick changed the queue's replicas (a scale call made, and it succeeded)."""
    return queue.scaled_from is not None and queue.scale_error is None and queue.decision is not None


@dataclass(frozen=True, slots=True)
class QueueFacts:
    """What the status says of a queue besides a poll: from its spec, and from the reporter's memory."""

    shadow: bool = False  # scaling.mode Shadow
    would_scale: bool = False  # in Shadow, the count it would set changed with this poll
    scale_target: str | None = None  # scaleTargetRef's Deployment
    drains: bool = True  # drainTimeoutSeconds > 0


SCALE_DOWN_DRAIN = "Drain"  # the workers report: drained first, removed idle, idlest first (pod-deletion-cost)
SCALE_DOWN_IDLEST_FIRST = "IdlestFirst"  # they report, draining is off: the idlest go first (pod-deletion-cost)
SCALE_DOWN_REPLICA_SET = "ReplicaSet"  # ready pods report nothing: the ReplicaSet picks (warm shutdown only)


def scale_down_mode(queue: QueueResult, ready_replicas: int | None, drains: bool) -> str | None:
    """How a scale-down of the queue picks its pods, as the last poll showed: ``None`` when it cannot tell (the
    poll failed, no pod is ready)."""
    obs = queue.observation
    if not obs.ok or queue.decision is None:
        return None
    if obs.workers:
        return SCALE_DOWN_DRAIN if drains else SCALE_DOWN_IDLEST_FIRST
    return SCALE_DOWN_REPLICA_SET if ready_replicas else None


def queue_figures(
    queue: QueueResult,
    ready_replicas: int | None,
    waits: Waits | None = None,
    version: int = 0,
    facts: QueueFacts | None = None,
) -> QueueFigures:
    """What a poll of one queue shows in the status: a failed observation leaves the figures as they were,
    a queue without a workload shows no replica counts, a successful scale shows its new count and reason;
    ``version``: the queue's current pod template version (``reports.version_number``). In Shadow,
    ``desiredReplicas`` is what it would set beside the workload's ``replicas``."""
    facts = facts or QueueFacts()
    obs, decision = queue.observation, queue.decision
    current = obs.replicas if decision is not None else None
    desired = decision.desired_replicas if decision is not None else None
    changed = scaled(queue)
    return QueueFigures(
        queue.queue,
        backlog=obs.backlog if obs.ok else None,
        in_flight=obs.in_flight if obs.ok else None,
        replicas=desired if changed else current,
        ready_replicas=ready_replicas,
        desired_replicas=desired,
        draining=len(queue.state.draining) if decision is not None else None,
        oldest_age=obs.oldest_age if obs.ok else None,
        reason=decision.reason if decision is not None else None,
        scaled=changed,
        shadow=facts.shadow,
        would_scale=facts.would_scale and decision is not None,
        scale_target=facts.scale_target,
        scale_down=scale_down_mode(queue, ready_replicas, facts.drains),
        celery_queues=obs.backlogs if obs.ok and obs.backlogs else None,
        waits=waits,
        versions=version_figures(obs.workers, version) if obs.ok else None,
    )


def wait_poll(queue: QueueResult, policy: ScalingPolicy | None, ready: int | None, now: float) -> Poll:
    """One poll of a queue as the wait watch reads it: the observation, what the engine learned and decided, the
    queue's policy (its target, start-up delay and maxReplicas) and the workload's ready replicas (the live
    worker reports when the Deployment's are not known)."""
    obs, decision, state = queue.observation, queue.decision, queue.state
    learned = state.learned
    startup = learned.startup if learned.startup is not None else policy.startup_seconds if policy else 30.0
    replicas = None
    if decision is not None:
        replicas = decision.desired_replicas if scaled(queue) else obs.replicas
    return Poll(
        at=now,
        error=obs.error,
        backlog=obs.backlog,
        measured=obs.oldest_age,
        arrival_rate=learned.arrival_rate,
        waiting_since=state.waiting_since,
        target=policy.target_wait if policy is not None else None,
        startup=startup,
        paused=decision.paused if decision is not None else False,
        replicas=replicas,
        ready=ready if ready is not None else len(obs.workers) if decision is not None else None,
        desired=decision.desired_replicas if decision is not None else None,
        max_replicas=policy.max_replicas if policy is not None else None,
    )


def pool_figures(
    result: PoolResult,
    ready: Mapping[str, int | None],
    waits: Mapping[str, Waits] | None = None,
    versions: Mapping[str, int] | None = None,
    facts: Mapping[str, QueueFacts] | None = None,
) -> dict[str, QueueFigures]:
    """:func:`queue_figures` for every queue of a poll; ``ready`` maps a queue to its ready replicas, if known,
    ``waits`` to its waits, ``versions`` to its current pod template version, ``facts`` to what the status says of
    it besides the poll."""
    waits, versions, facts = waits or {}, versions or {}, facts or {}
    return {
        q.queue: queue_figures(q, ready.get(q.queue), waits.get(q.queue), versions.get(q.queue, 0), facts.get(q.queue))
        for q in result.queues
    }


def scaler_states(result: PoolResult) -> dict[str, dict[str, Any]]:
    """The engine's state of every queue of a poll, as persisted in ``status.scalerState``."""
    return {q.queue: q.state.to_dict() for q in result.queues}


def build_status(
    previous: Mapping[str, Any] | None,
    *,
    generation: int | None,
    queue_names: Sequence[str],
    conditions: Sequence[Condition],
    figures: Mapping[str, QueueFigures] | None = None,
    scaler_state: Mapping[str, Mapping[str, Any]] | None = None,
    beat: Mapping[str, Any] | None = None,
    now: float,
) -> dict[str, Any]:
    """The whole status to write. Queues are listed in spec order; removed queues disappear; ``beat`` (its
    Deployment, replicas and ready replicas) only while the pool has one."""
    previous = previous or {}
    stamp = rfc3339(now)
    before = {q.get("name"): q for q in previous.get("queues") or () if isinstance(q, Mapping)}
    queues: list[dict[str, Any]] = []
    for name in queue_names:
        entry: dict[str, Any] = {k: v for k, v in (before.get(name) or {}).items() if v is not None}
        entry["name"] = name
        update = (figures or {}).get(name)
        if update is not None:
            _set(entry, "backlog", update.backlog)
            _set(entry, "inFlight", update.in_flight)
            _set(entry, "replicas", update.replicas)
            _set(entry, "readyReplicas", update.ready_replicas)
            _set(entry, "desiredReplicas", update.desired_replicas)
            _set(entry, "draining", update.draining)
            if update.waits is not None:
                _set_waits(entry, update.waits)
            elif update.oldest_age is not None:
                entry["oldestTaskAgeSeconds"] = round(update.oldest_age, 1)
            if update.scaled:
                entry["lastScaleTime"] = stamp
                _set(entry, "lastScaleReason", update.reason)
            if update.versions is not None:
                entry.pop("versions", None)
                if update.versions:
                    entry["versions"] = [_version_entry(v) for v in update.versions]
            _set_adoption(entry, update, stamp)
        queues.append(entry)

    status: dict[str, Any] = {
        "conditions": merge_conditions(previous.get("conditions"), conditions, generation=generation, now=stamp),
        "queues": queues,
        "queueCount": len(queue_names),
        "totalBacklog": sum(int(q.get("backlog", 0)) for q in queues),
        "totalReplicas": sum(int(q.get("replicas", 0)) for q in queues),
        "totalReadyReplicas": sum(int(q.get("readyReplicas", 0)) for q in queues),
    }
    status["workers"] = f"{status['totalReadyReplicas']}/{status['totalReplicas']}"  # as kubectl get deploy READY
    old = sum(
        v.get("serving", 0) + v.get("stopping", 0)
        for q in queues
        for v in q.get("versions") or ()
        if not v.get("current")
    )
    if old:
        status["rollout"] = f"{old} old worker{'s' if old > 1 else ''} finishing"
    if beat is not None:
        status["beat"] = {k: v for k, v in beat.items() if v is not None}
    if generation is not None:
        status["observedGeneration"] = generation
    elif "observedGeneration" in previous:
        status["observedGeneration"] = previous["observedGeneration"]
    state = dict(previous.get("scalerState") or {})
    if scaler_state is not None:
        # null fields are dropped, as a merge patch would drop them on the server
        state.update({q: {k: v for k, v in s.items() if v is not None} for q, s in scaler_state.items()})
    state = {q: s for q, s in state.items() if q in queue_names}
    if state:
        status["scalerState"] = state
    return status


def to_wire(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status as written to the API server: the engine's memory (``scalerState``) as one compact JSON string,
    so ``kubectl describe`` shows it as one line instead of pages of floats; the rest as built."""
    wire = dict(status)
    if isinstance(wire.get("scalerState"), Mapping):
        wire["scalerState"] = json.dumps(wire["scalerState"], separators=(",", ":"), sort_keys=True)
    return wire


def from_wire(status: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A status as read from the API server, the engine's memory parsed again (a string that is not JSON is
    dropped: the engine then starts afresh, conservatively). The first release's object form is read as is."""
    if not status:
        return None
    read = dict(status)
    state = read.get("scalerState")
    if isinstance(state, str):
        try:
            parsed = json.loads(state)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            read["scalerState"] = parsed
        else:
            read.pop("scalerState")
    return read


def _set(entry: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        entry[key] = value


def _set_adoption(entry: dict[str, Any], update: QueueFigures, stamp: str) -> None:
    """A queue's mode and what it would do in Shadow, the Deployment it scales, how it scales down, its Celery
    queues: each only where it applies."""
    if update.shadow is True:
        entry["mode"] = "Shadow"
        if update.would_scale:
            entry["wouldScaleTime"] = stamp
            _set(entry, "wouldScaleReason", update.reason)
    elif update.shadow is False:
        for key in SHADOW_FIELDS:
            entry.pop(key, None)
    if update.scale_target is not None:
        entry["scaleTarget"] = update.scale_target
    else:
        entry.pop("scaleTarget", None)
    _set(entry, "scaleDown", update.scale_down)
    if update.celery_queues is not None:
        entry["celeryQueues"] = [
            {"name": name, "backlog": backlog, "counted": counted} for name, backlog, counted in update.celery_queues
        ]


def _set_waits(entry: dict[str, Any], waits: Waits) -> None:
    """A queue's waits: figures kept as they were when unknown (a failed poll), the target and the time above it
    removed when there are none."""
    if waits.oldest is not None:
        entry["oldestTaskAgeSeconds"] = round(waits.oldest, 1)
    _set(entry, "waitSource", waits.source)
    if waits.p95 is not None:
        entry["waitP95Seconds"] = round(waits.p95, 1)
    for key, value in (
        ("targetWaitSeconds", waits.target),
        ("waitAboveTargetSince", None if waits.above_since is None else rfc3339(waits.above_since)),
    ):
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value


def _significant(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status without figures and with only the milestones of the engine state: a change here is
    written at once."""
    stripped = {k: v for k, v in status.items() if k not in TOTAL_FIGURE_FIELDS}
    stripped["queues"] = [_queue_state(q) for q in status.get("queues") or ()]
    stripped["scalerState"] = {q: _state_milestones(s) for q, s in (status.get("scalerState") or {}).items()}
    return stripped


def _queue_state(queue: Mapping[str, Any]) -> dict[str, Any]:
    """A queue's status entry without its figures (a group's queues keep their names and whether they count)."""
    state = {k: v for k, v in queue.items() if k not in FIGURE_FIELDS}
    if isinstance(state.get("celeryQueues"), list):
        state["celeryQueues"] = [
            {k: v for k, v in item.items() if k not in QUEUE_FIGURE_FIELDS} if isinstance(item, Mapping) else item
            for item in state["celeryQueues"]
        ]
    return state


def _state_milestones(state: Any) -> Any:
    """The part of a queue's engine state whose change is written at once: when the queue went idle and
    whether observations are failing."""
    if not isinstance(state, Mapping):
        return state
    return {"idleSince": state.get("idleSince"), "failing": bool(state.get("failures"))}


def _without_volatile(status: Mapping[str, Any]) -> Mapping[str, Any]:
    """The status without what moves at every poll even when nothing happens: the time of the engine's
    latest recommendation. Never worth a write on its own, and safe to lose: the latest recommendation is
    the lowest in the window, and an expired window restarts from the current replicas, which is never
    lower. (Shallow copies only: this runs for every pool at every poll.)"""
    states = status.get("scalerState")
    if not isinstance(states, Mapping) or not states:
        return status
    stripped: dict[str, Any] = {}
    for queue, state in states.items():
        recommendations = state.get("recommendations") if isinstance(state, Mapping) else None
        if isinstance(recommendations, list | tuple) and recommendations:
            last = recommendations[-1]
            if isinstance(last, list | tuple) and last:
                state = {**state, "recommendations": [*recommendations[:-1], [None, *last[1:]]]}
        stripped[queue] = state
    return {**status, "scalerState": stripped}


def write_needed(
    written: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    *,
    seconds_since_write: float,
    figures_refresh: float = DEFAULT_FIGURES_REFRESH,
) -> bool:
    """Whether ``new`` must be written, given the status last written: at once when state changed; when
    only figures (and the engine's window) moved, once ``figures_refresh`` seconds have passed; never when
    nothing but the time of the latest recommendation moved."""
    if written is None:
        return True
    if written == new or not pending(written, new):  # (the second: the common case at rest, in one comparison)
        return False
    if _significant(written) != _significant(new):
        return True
    return seconds_since_write >= figures_refresh


def pending(written: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether ``new`` says anything ``written`` does not (state or figures), the time of the engine's latest
    recommendation apart: what a write, now or at the next figures refresh, would carry."""
    return written is None or _without_volatile(written) != _without_volatile(new)


def _as_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _as_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_plain(v) for v in value]
    return value


def merge_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) turning ``old`` into ``new``: removed keys become ``None``."""
    old = old or {}
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif _as_plain(before) != _as_plain(value) or key not in old:
            patch[key] = _as_plain(value)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
