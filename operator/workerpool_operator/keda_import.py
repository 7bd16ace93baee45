"""``from-keda``: a KEDA ScaledObject with redis list triggers, as the equivalent WorkerPool. Pure: dicts in, dicts out.

What maps (KEDA's ScaledObject specification and its Redis Lists scaler, keda.sh/docs):

- each ``redis`` trigger's ``listName`` is a Celery queue; several triggers make one worker group consuming
  them all (``queues[].celeryQueues``), scaled on their combined demand;
- ``listLength`` -> ``scaling.targetPerReplica``; ``activationListLength`` -> ``scaling.activationBacklog``,
  plus one: KEDA activates when the list is *longer than* the value, the WorkerPool wakes *at* its value;
- ``minReplicaCount`` / ``maxReplicaCount`` (KEDA's defaults 0 and 100 when unset) -> the queue's min and max;
  ``cooldownPeriod`` -> ``idleSecondsBeforeZero``; ``pollingInterval`` -> ``pollIntervalSeconds``;
  ``fallback`` -> ``scaling.fallback``; the ``autoscaling.keda.sh/paused`` annotation -> ``scaling.paused``;
- the trigger's address, database, TLS and credentials -> ``broker.url`` when nothing in it is secret, else
  ``broker.urlFrom`` (the Secret the workers' own broker URL comes from, when the Deployment names one; else
  a Secret to create, described in a note); a TriggerAuthentication's ``ca`` -> ``broker.caFrom``;
- ``scaleTargetRef`` -> ``queues[].scaleTargetRef`` (the operator scales that Deployment and nothing else of
  it), or with ``render`` the Deployment's pod template -> ``spec.template`` (deployment_import.py).

Everything else is listed with the reason it is not converted: the caller prints it as comments at the top
of the output and on stderr. The pool comes out in ``scaling.mode: Shadow`` unless asked otherwise, so
applying it beside the ScaledObject changes nothing: the two must never both write one Deployment's replicas.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from workerpool_operator import API_GROUP, API_VERSION, KIND
from workerpool_operator.deployment_import import (
    CeleryCommand,
    ConversionError,
    Skipped,
    celery_command,
    template_from,
    worker_container,
)
from workerpool_operator.keda_broker import broker_spec
from workerpool_operator.keda_triggers import RedisTrigger, redis_triggers, valid_queue
from workerpool_operator.spec import MAX_POOL_NAME, POOL_CONCURRENCY_LIMITS, CeleryPool

__all__ = [
    "Conversion",
    "ConversionError",
    "Inputs",
    "Options",
    "Skipped",
    "convert",
    "problems",
    "select_inputs",
    "to_yaml",
]

KEDA_GROUP = "keda.sh"
KEDA_MIN_REPLICAS, KEDA_MAX_REPLICAS = 0, 100  # KEDA's defaults (ScaledObject specification)
KEDA_POLLING_INTERVAL, KEDA_COOLDOWN = 30, 300
CELERY_PREFETCH_MULTIPLIER = 4  # Celery's worker_prefetch_multiplier default
MAX_REPLICAS = 1000  # the WorkerPool's bounds
MAX_CONCURRENCY = 10000
MAX_WINDOW = 86400  # idleSecondsBeforeZero
POLL_BOUNDS = (0.5, 300.0)
PAUSED = "autoscaling.keda.sh/paused"
PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"
MAX_QUEUE_NAME = 63
NOT_CONVERTED_SPEC = {
    "initialCooldownPeriod": "the WorkerPool has no start-up grace: it scales to zero after "
    "idleSecondsBeforeZero from its first poll",
}
IDLE_REPLICAS = (
    "KEDA goes to 0 while idle and to minReplicaCount ({low}) at once when active; a WorkerPool has one floor: "
    "minReplicas is 0 here, so an active queue gets the replicas its demand needs"
)
NOT_CONVERTED_ADVANCED = {
    "horizontalPodAutoscalerConfig": "the operator sizes replicas itself, no HPA: its nearest settings are "
    "scaling.scaleDownStabilizationSeconds and scaling.scaleUp (they apply to policy: demand; the default "
    "policy, throughput, sizes from measured task time and pod start-up)",
    "restoreToOriginalReplicaCount": "deleting a WorkerPool leaves the Deployment's replicas where they are",
    "scalingModifiers": "the WorkerPool scales on its queues' demand only; no formula over metrics",
}


@dataclass(frozen=True, slots=True)
class Inputs:
    """A ScaledObject with what it refers to: TriggerAuthentications by (kind, name), and its Deployment."""

    scaled_object: Mapping[str, Any]
    authentications: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    deployment: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Options:
    name: str | None = None  # the WorkerPool's name (default: the ScaledObject's)
    app: str | None = None  # spec.app (default: the Deployment's `celery -A`)
    render: bool = False  # spec.template from the Deployment instead of scaleTargetRef
    active: bool = False  # scaling.mode Active instead of Shadow


@dataclass(frozen=True, slots=True)
class Conversion:
    pool: dict[str, Any]
    source: str  # namespace/name of the ScaledObject
    skipped: tuple[Skipped, ...] = ()  # not converted, with the reason
    notes: tuple[str, ...] = ()  # converted, with something the user must know or do


def select_inputs(
    documents: Iterable[object], deployments: Iterable[object] = (), scaled_object: str | None = None
) -> Inputs:
    """The ScaledObject to convert (``scaled_object`` names it when there are several) and what it refers to,
    from the documents of the input files. Raises ConversionError when there is none, or no way to choose."""
    objects = [d for d in [*documents, *deployments] if isinstance(d, Mapping)]
    candidates = [d for d in objects if d.get("kind") == "ScaledObject" and _group(d) == KEDA_GROUP]
    if scaled_object is not None:
        candidates = [d for d in candidates if _meta(d).get("name") == scaled_object]
    if not candidates:
        wanted = f" named {scaled_object}" if scaled_object else ""
        raise ConversionError(f"no KEDA ScaledObject{wanted} (apiVersion keda.sh/v1alpha1) in the input")
    if len(candidates) > 1:
        names = ", ".join(str(_meta(d).get("name")) for d in candidates)
        raise ConversionError(f"several ScaledObjects ({names}): say which one with --scaled-object NAME")
    chosen = candidates[0]
    authentications = {
        (str(d["kind"]), str(_meta(d).get("name"))): d
        for d in objects
        if d.get("kind") in ("TriggerAuthentication", "ClusterTriggerAuthentication") and _group(d) == KEDA_GROUP
    }
    target = _target(chosen)
    found = [d for d in objects if d.get("kind") == "Deployment" and _meta(d).get("name") == target]
    return Inputs(chosen, authentications, found[0] if found else None)


def convert(inputs: Inputs, options: Options = Options()) -> Conversion:
    """The WorkerPool equivalent to ``inputs.scaled_object``. Raises ConversionError for input it cannot use."""
    so = inputs.scaled_object
    spec = so.get("spec")
    if not isinstance(spec, Mapping):
        raise ConversionError("the ScaledObject has no spec")
    source = f"{_meta(so).get('namespace') or 'default'}/{_meta(so).get('name')}"
    skipped: list[Skipped] = []
    notes: list[str] = []
    target = _target(so)
    deployment = inputs.deployment
    if options.render and deployment is None:
        raise ConversionError(f"--render needs the Deployment {target} (--deployment FILE)")
    container = worker_container(deployment, _env_container(so)) if deployment is not None else None
    command = celery_command(container) if container is not None else None
    if command is not None and options.render:  # scaling the Deployment as it is, its command stays its own
        skipped += command.dropped
    triggers = redis_triggers(spec, skipped)
    broker, broker_notes = broker_spec(triggers[0], container, inputs.authentications, _pool_name(so, options), skipped)
    notes += broker_notes
    queue = _queue(spec, triggers, command, options, target, skipped, notes)
    pool_spec: dict[str, Any] = {"broker": broker, "app": _app(options, command, target)}
    if options.render:
        assert deployment is not None and container is not None
        made = template_from(deployment, container, command or CeleryCommand())
        pool_spec["template"] = made.template
        skipped += made.skipped
        notes += made.notes
    pool_spec["queues"] = [queue]
    pool_spec["scaling"] = _scaling(so, spec, triggers, options, skipped, notes)
    _not_converted(so, spec, skipped)
    metadata: dict[str, Any] = {"name": _pool_name(so, options)}
    if _meta(so).get("namespace"):
        metadata["namespace"] = _meta(so)["namespace"]
    pool = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": metadata, "spec": pool_spec}
    return Conversion(pool=pool, source=source, skipped=tuple(skipped), notes=tuple(notes))


# --- the queue and its scaling ------------------------------------------------------------------------------


def _queue(
    spec: Mapping[str, Any],
    triggers: Sequence[RedisTrigger],
    command: CeleryCommand | None,
    options: Options,
    target: str,
    skipped: list[Skipped],
    notes: list[str],
) -> dict[str, Any]:
    lists = [t.list_name for t in triggers]
    consumed = list(command.queues) if command is not None else []
    others = [q for q in consumed if q not in lists]
    celery_queues = lists + [q for q in others if valid_queue(q)] if options.render else lists
    if others and options.render:
        notes.append(
            f"celeryQueues also holds {', '.join(others)}: the workers consume them (-Q) though no trigger "
            "watched them; their demand now counts too"
        )
    elif others:
        notes.append(
            f"the workers also consume {', '.join(others)} (-Q), which no trigger watches: add them to "
            "celeryQueues if their backlog should count"
        )
    missing = [q for q in lists if consumed and q not in consumed]
    if missing:
        notes.append(f"the workers' -Q ({', '.join(consumed)}) does not name {', '.join(missing)}")
    queue: dict[str, Any] = {"name": lists[0] if len(celery_queues) == 1 else _group_name(target, lists)}
    if celery_queues != [queue["name"]]:
        queue["celeryQueues"] = celery_queues
    if not options.render:
        queue["scaleTargetRef"] = {"name": target}
    if command is not None:
        _worker_settings(command, queue, options.render, skipped, notes)
    elif options.render:
        notes.append("the worker container runs no `celery worker` the conversion could read: set concurrency")
    low, high = _replica_bounds(spec, skipped, notes)
    queue["minReplicas"], queue["maxReplicas"] = low, high
    return queue


def _worker_settings(
    command: CeleryCommand, queue: dict[str, Any], render: bool, skipped: list[Skipped], notes: list[str]
) -> None:
    limit, _ = POOL_CONCURRENCY_LIMITS.get(CeleryPool(command.pool or "prefork"), (MAX_CONCURRENCY, ""))
    limit = min(limit, MAX_CONCURRENCY)
    if command.concurrency is not None and command.concurrency > limit:
        where = f"celery worker --pool {command.pool or 'prefork'} --concurrency {command.concurrency}"
        skipped.append(Skipped(where, f"a WorkerPool allows at most {limit} for that pool: set pool and concurrency"))
    else:
        if command.pool is not None:
            queue["pool"] = command.pool
        if command.concurrency is not None:
            queue["concurrency"] = command.concurrency
        else:
            notes.append(
                "the workers' concurrency is not in their command: Celery's default is the pod's CPU count; "
                "set queues[].concurrency (the rendered worker gets 1 otherwise)"
            )
    if command.prefetch_multiplier is not None:
        queue["prefetchMultiplier"] = command.prefetch_multiplier
    elif not render:
        queue["prefetchMultiplier"] = CELERY_PREFETCH_MULTIPLIER  # what the Deployment's workers do
    else:
        notes.append(
            "prefetchMultiplier is 1 in a WorkerPool (Celery's default is 4): waiting tasks stay in Redis "
            "where a new replica can take them"
        )
    if command.max_tasks_per_child is not None and (command.pool or "prefork") == "prefork":
        queue["maxTasksPerChild"] = command.max_tasks_per_child


def _replica_bounds(spec: Mapping[str, Any], skipped: list[Skipped], notes: list[str]) -> tuple[int, int]:
    low = _spec_integer(spec, "minReplicaCount", KEDA_MIN_REPLICAS)
    high = _spec_integer(spec, "maxReplicaCount", KEDA_MAX_REPLICAS)
    if "idleReplicaCount" in spec and low > 0:
        skipped.append(Skipped(f"spec.idleReplicaCount ({spec['idleReplicaCount']})", IDLE_REPLICAS.format(low=low)))
        low = 0
    if low > high:
        raise ConversionError(f"spec.minReplicaCount ({low}) exceeds spec.maxReplicaCount ({high})")
    if high > MAX_REPLICAS:
        notes.append(f"maxReplicaCount {high} is more than a WorkerPool allows: maxReplicas is {MAX_REPLICAS}")
        high, low = MAX_REPLICAS, min(low, MAX_REPLICAS)
    if "maxReplicaCount" not in spec:
        notes.append(f"maxReplicas is KEDA's default, {KEDA_MAX_REPLICAS} (the WorkerPool's own is 10)")
    return low, high


def _scaling(
    so: Mapping[str, Any],
    spec: Mapping[str, Any],
    triggers: Sequence[RedisTrigger],
    options: Options,
    skipped: list[Skipped],
    notes: list[str],
) -> dict[str, Any]:
    scaling: dict[str, Any] = {"mode": "Active" if options.active else "Shadow"}
    lengths = sorted({t.list_length for t in triggers})
    activations = sorted({t.activation for t in triggers})
    scaling["targetPerReplica"] = lengths[0]
    scaling["activationBacklog"] = activations[0] + 1
    if len(triggers) > 1:
        notes.append(
            "the group scales on its queues' combined demand ÷ targetPerReplica (the HPA took the highest "
            "of each list ÷ its listLength): with policy demand, never fewer replicas than KEDA would set"
            + (
                f"; listLength differed ({', '.join(map(str, lengths))}): the smallest is kept"
                if len(lengths) > 1
                else ""
            )
        )
    notes.append(
        "targetPerReplica counts waiting and running tasks on every priority list (KEDA's listLength counted "
        "one list's waiting tasks); it is what policy demand scales by, and what the default policy, "
        "throughput, uses until it has measured task times: set scaling.policy: demand to keep KEDA's rule"
    )
    if "pollingInterval" in spec:
        low, high = POLL_BOUNDS
        polling = _spec_integer(spec, "pollingInterval", KEDA_POLLING_INTERVAL)
        bounded = min(max(float(polling), low), high)
        scaling["pollIntervalSeconds"] = int(bounded) if bounded.is_integer() else bounded
        if bounded != polling:
            notes.append(
                f"pollingInterval {polling} is outside the WorkerPool's bounds: pollIntervalSeconds is {bounded:g}"
            )
    else:
        notes.append(
            f"pollingInterval is unset (KEDA polls every {KEDA_POLLING_INTERVAL} s, the HPA every 15 s): the "
            "WorkerPool polls every 2 s (scaling.pollIntervalSeconds)"
        )
    if "cooldownPeriod" in spec:
        cooldown = _spec_integer(spec, "cooldownPeriod", KEDA_COOLDOWN)
        scaling["idleSecondsBeforeZero"] = min(cooldown, MAX_WINDOW)
        if cooldown > MAX_WINDOW:
            notes.append(f"cooldownPeriod {cooldown} is more than a WorkerPool allows: {MAX_WINDOW} s")
    else:
        notes.append(
            f"cooldownPeriod is unset (KEDA waits {KEDA_COOLDOWN} s before scaling to zero): the WorkerPool "
            "waits 120 s (scaling.idleSecondsBeforeZero)"
        )
    fallback = spec.get("fallback")
    if isinstance(fallback, Mapping):
        scaling["fallback"] = _fallback(fallback, skipped)
    annotations = _meta(so).get("annotations") or {}
    if str(annotations.get(PAUSED, "")).lower() == "true":
        scaling["paused"] = True
    return scaling


def _fallback(fallback: Mapping[str, Any], skipped: list[Skipped]) -> dict[str, Any]:
    converted = {
        "failureThreshold": _spec_integer(fallback, "failureThreshold", 3, "spec.fallback."),
        "replicas": _spec_integer(fallback, "replicas", 0, "spec.fallback."),
    }
    behavior = fallback.get("behavior", "static")
    if behavior != "static":
        reason = "the WorkerPool's fallback holds fallback.replicas (KEDA's behavior static)"
        skipped.append(Skipped(f"spec.fallback.behavior ({behavior})", reason))
    return converted


def _not_converted(so: Mapping[str, Any], spec: Mapping[str, Any], skipped: list[Skipped]) -> None:
    for key, reason in NOT_CONVERTED_SPEC.items():
        if spec.get(key):
            skipped.append(Skipped(f"spec.{key} ({spec[key]})", reason))
    advanced = spec.get("advanced") or {}
    for key in advanced:
        reason = NOT_CONVERTED_ADVANCED.get(key, "not a setting the WorkerPool has")
        skipped.append(Skipped(f"spec.advanced.{key}", reason))
    for key, value in (_meta(so).get("annotations") or {}).items():
        if key == PAUSED_REPLICAS:
            reason = "a paused WorkerPool keeps the replicas where they are (scaling.paused)"
            skipped.append(Skipped(f"metadata.annotations.{key} ({value})", reason))
        elif key != PAUSED and "keda.sh/" in key:
            skipped.append(Skipped(f"metadata.annotations.{key}", "KEDA's own"))


# --- names and small readers --------------------------------------------------------------------------------


def _app(options: Options, command: CeleryCommand | None, target: str) -> str:
    if options.app:
        return options.app
    if command is not None and command.app:
        return command.app
    raise ConversionError(
        f"the Celery app is unknown: give --app MODULE:ATTRIBUTE, or the Deployment {target} (--deployment FILE) "
        "whose `celery -A` says it"
    )


def _pool_name(so: Mapping[str, Any], options: Options) -> str:
    name = options.name or str(_meta(so).get("name") or "")
    if not name or len(name) > MAX_POOL_NAME:
        raise ConversionError(f"the WorkerPool's name {name!r} must be 1 to {MAX_POOL_NAME} characters: use --name")
    return name


def _group_name(target: str, lists: Sequence[str]) -> str:
    """A worker group's name: its Deployment's, made a valid queue name (lists joined when that fails)."""
    for candidate in (target, "-".join(lists)):
        name = re.sub(r"[^a-z0-9_.-]+", "-", candidate.lower())[:MAX_QUEUE_NAME].strip("-_.")
        if valid_queue(name) and name not in lists[1:]:
            return name
    return "workers"


def _target(so: Mapping[str, Any]) -> str:
    spec = so.get("spec") or {}
    ref = spec.get("scaleTargetRef") if isinstance(spec, Mapping) else None
    if not isinstance(ref, Mapping) or not ref.get("name"):
        raise ConversionError("the ScaledObject has no spec.scaleTargetRef.name")
    kind = ref.get("kind") or "Deployment"
    version = ref.get("apiVersion") or "apps/v1"
    if kind != "Deployment" or version != "apps/v1":
        raise ConversionError(f"scaleTargetRef is a {version} {kind}: a WorkerPool scales Deployments only")
    return str(ref["name"])


def _env_container(so: Mapping[str, Any]) -> str | None:
    ref = (so.get("spec") or {}).get("scaleTargetRef") or {}
    name = ref.get("envSourceContainerName")
    return str(name) if name else None


def _spec_integer(spec: Mapping[str, Any], key: str, default: int, prefix: str = "spec.") -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConversionError(f"{prefix}{key}: expected a whole number, got {value!r}")
    return value


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _group(obj: Mapping[str, Any]) -> str:
    return str(obj.get("apiVersion") or "").split("/", 1)[0]


# --- output -------------------------------------------------------------------------------------------------

WIDTH = 116


def to_yaml(conversion: Conversion) -> str:
    """The WorkerPool as YAML, after comments that say where it came from and what was left out."""
    lines = [f"# WorkerPool converted from KEDA ScaledObject {conversion.source} (workerpool-operator from-keda)."]
    mode = conversion.pool["spec"]["scaling"]["mode"]
    if mode == "Shadow":
        lines += _comment(
            "scaling.mode is Shadow: the operator observes, decides and publishes (status, metrics) but writes "
            "no replicas, while KEDA still scales the Deployment. Switch to Active only once the ScaledObject "
            "is gone (docs/moving-from-keda.md)."
        )
    if conversion.skipped:
        lines.append("#")
        lines.append("# Not converted:")
        for item in conversion.skipped:
            lines += _comment(f"- {item.field}: {item.reason}", indent="  ")
    if conversion.notes:
        lines.append("#")
        lines.append("# Notes:")
        for note in conversion.notes:
            lines += _comment(f"- {note}", indent="  ")
    body = yaml.safe_dump(conversion.pool, sort_keys=False, default_flow_style=False, width=WIDTH)
    return "\n".join(lines) + "\n" + body


def _comment(text: str, indent: str = "") -> list[str]:
    wrapped = textwrap.wrap(text, width=WIDTH - 2, subsequent_indent=indent, break_on_hyphens=False)
    return [f"# {line}" for line in wrapped]


def problems(conversion: Conversion) -> list[str]:
    """One line per item not converted and per note, for stderr."""
    return [f"not converted: {item.field}: {item.reason}" for item in conversion.skipped] + [
        f"note: {note}" for note in conversion.notes
    ]
