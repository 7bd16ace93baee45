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
from urllib.parse import urlsplit

import yaml

from workerpool_operator import API_GROUP, API_VERSION, KIND
from workerpool_operator.deployment_import import (
    BROKER_URL_VARIABLES,
    CeleryCommand,
    ConversionError,
    EnvValue,
    Skipped,
    celery_command,
    env_value,
    template_from,
    worker_container,
)
from workerpool_operator.spec import (
    MAX_POOL_NAME,
    POOL_CONCURRENCY_LIMITS,
    QUEUE_NAME_PATTERN,
    RESERVED_QUEUE_NAMES,
    URL_PASSWORD_PATTERNS,
    CeleryPool,
)

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
REDIS_TRIGGER = "redis"
KEDA_MIN_REPLICAS, KEDA_MAX_REPLICAS = 0, 100  # KEDA's defaults (ScaledObject specification)
KEDA_POLLING_INTERVAL, KEDA_COOLDOWN = 30, 300
DEFAULT_LIST_LENGTH = 5  # the Redis Lists scaler's default
CELERY_PREFETCH_MULTIPLIER = 4  # Celery's worker_prefetch_multiplier default
MAX_REPLICAS = 1000  # the WorkerPool's bounds
MAX_CONCURRENCY = 10000
MAX_WINDOW = 86400  # idleSecondsBeforeZero
POLL_BOUNDS = (0.5, 300.0)
PAUSED = "autoscaling.keda.sh/paused"
PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"
MAX_CELERY_QUEUES = 16  # queues[].celeryQueues' bound (agreed with the worker-group change)
MAX_QUEUE_NAME = 63
# Connection settings of a redis trigger: triggers that differ in one of them are on different brokers.
CONNECTION_KEYS = (
    "address",
    "host",
    "port",
    "addressFromEnv",
    "hostFromEnv",
    "portFromEnv",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
    "usernameFromEnv",
    "passwordFromEnv",
)
KNOWN_METADATA = {*CONNECTION_KEYS, "listName", "listLength", "activationListLength"}
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
    triggers = _redis_triggers(spec, skipped)
    broker, broker_notes = _broker(triggers[0], container, inputs.authentications, _pool_name(so, options), skipped)
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


# --- triggers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisTrigger:
    index: int
    list_name: str
    list_length: int
    activation: int  # activationListLength: KEDA is active while the list is longer than this
    metadata: Mapping[str, str]
    authentication: tuple[str, str] | None  # (kind, name) of authenticationRef

    @property
    def where(self) -> str:
        return f"spec.triggers[{self.index}]"

    def connection(self) -> tuple[object, ...]:
        return (*(self.metadata.get(k) for k in CONNECTION_KEYS), self.authentication)


def _redis_triggers(spec: Mapping[str, Any], skipped: list[Skipped]) -> list[RedisTrigger]:
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        raise ConversionError("the ScaledObject has no triggers")
    found: list[RedisTrigger] = []
    for index, trigger in enumerate(triggers):
        where = f"spec.triggers[{index}]"
        kind = trigger.get("type") if isinstance(trigger, Mapping) else None
        if kind != REDIS_TRIGGER:
            skipped.append(Skipped(f"{where} (type {kind})", _other_trigger_reason(str(kind))))
            continue
        parsed = _redis_trigger(index, trigger, skipped)
        if parsed is None:
            continue
        if found and parsed.connection() != found[0].connection():
            reason = f"it reads another broker than {found[0].where}: one WorkerPool has one broker"
            skipped.append(Skipped(where, reason + " (convert it into a second WorkerPool)"))
            continue
        if any(t.list_name == parsed.list_name for t in found):
            skipped.append(Skipped(where, f"list {parsed.list_name} is already watched by an earlier trigger"))
            continue
        found.append(parsed)
    if not found:
        raise ConversionError("the ScaledObject has no redis (list) trigger the WorkerPool can take over")
    if len(found) > MAX_CELERY_QUEUES:
        for extra in found[MAX_CELERY_QUEUES:]:
            skipped.append(Skipped(extra.where, f"a worker group consumes at most {MAX_CELERY_QUEUES} queues"))
        found = found[:MAX_CELERY_QUEUES]
    return found


def _other_trigger_reason(kind: str) -> str:
    if kind in ("redis-cluster", "redis-sentinel", "redis-streams", "redis-cluster-streams", "redis-sentinel-streams"):
        return (
            "the WorkerPool reads Celery's lists on one Redis (redis://, rediss://, or sentinel:// with "
            "broker.sentinelMaster written by hand); Redis Cluster and streams are not Celery's broker"
        )
    return "the WorkerPool scales on its queues' backlog and its workers' reports only"


def _redis_trigger(index: int, trigger: Mapping[str, Any], skipped: list[Skipped]) -> RedisTrigger | None:
    where = f"spec.triggers[{index}]"
    metadata = trigger.get("metadata")
    if not isinstance(metadata, Mapping) or not metadata.get("listName"):
        raise ConversionError(f"{where}: a redis trigger needs metadata.listName")
    values = {str(k): str(v) for k, v in metadata.items()}
    list_name = values["listName"]
    if not _valid_queue(list_name):
        reason = "not a queue name a WorkerPool accepts (lowercase letters, digits, '-', '_', '.')"
        skipped.append(Skipped(f"{where} (listName {list_name})", reason))
        return None
    for key in sorted(set(values) - KNOWN_METADATA):
        skipped.append(Skipped(f"{where}.metadata.{key}", "not a setting of KEDA's redis list trigger"))
    if trigger.get("metricType", "AverageValue") != "AverageValue":
        skipped.append(Skipped(f"{where}.metricType", "the WorkerPool's target is per replica (KEDA's AverageValue)"))
    ref = trigger.get("authenticationRef")
    authentication = None
    if isinstance(ref, Mapping) and ref.get("name"):
        authentication = (str(ref.get("kind") or "TriggerAuthentication"), str(ref["name"]))
    length = _integer(values, "listLength", where, DEFAULT_LIST_LENGTH, minimum=1)
    activation = _integer(values, "activationListLength", where, 0, minimum=0)
    return RedisTrigger(index, list_name, length, activation, values, authentication)


def _integer(values: Mapping[str, str], key: str, where: str, default: int, *, minimum: int) -> int:
    if key not in values:
        return default
    try:
        number = int(values[key])
    except ValueError:
        raise ConversionError(f"{where}.metadata.{key}: {values[key]!r} is not a whole number") from None
    if number < minimum:
        raise ConversionError(f"{where}.metadata.{key}: must be at least {minimum}, got {number}")
    return number


def _valid_queue(name: str) -> bool:
    return (
        len(name) <= MAX_QUEUE_NAME and bool(re.search(QUEUE_NAME_PATTERN, name)) and name not in RESERVED_QUEUE_NAMES
    )


# --- the broker ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Endpoint:
    """What the trigger (and its TriggerAuthentication) say about where the broker is and how to log in."""

    host: str | None = None
    port: str | None = None
    tls: bool = False
    unsafe: bool = False
    db: str = "0"
    credentials: list[str] = field(default_factory=list)  # where each secret part comes from, for the note
    unknown: list[str] = field(default_factory=list)  # address parts only known at run time


def _broker(
    trigger: RedisTrigger,
    container: Mapping[str, Any] | None,
    authentications: Mapping[tuple[str, str], Mapping[str, Any]],
    pool_name: str,
    skipped: list[Skipped],
) -> tuple[dict[str, Any], list[str]]:
    """``spec.broker`` and the notes that explain it."""
    endpoint = _endpoint(trigger, container, skipped)
    broker: dict[str, Any] = {}
    if trigger.authentication is not None:
        _authentication(trigger, authentications, container, endpoint, broker, skipped)
    from_env = _workers_broker_url(container)
    if from_env is not None and from_env.secret is not None:
        secret, key = from_env.secret
        note = (
            f"broker.urlFrom is Secret {secret}, key {key}: where the workers' {from_env.name} comes from "
            f"(KEDA's trigger reads {_describe(endpoint)})"
        )
        return {"urlFrom": {"secretKeyRef": {"name": secret, "key": key}}, **broker}, [note]
    if from_env is not None and from_env.value is not None and _usable_url(from_env.value):
        note = f"broker.url is the workers' {from_env.name} (KEDA's trigger reads {_describe(endpoint)})"
        return {"url": from_env.value, **broker}, [note]
    notes = []
    if from_env is not None and from_env.value is not None and _has_password(from_env.value):
        notes.append(f"the Deployment's {from_env.name} holds the broker password in plain text: move it to a Secret")
    if not endpoint.credentials and not endpoint.unknown:
        return {"url": _url(endpoint, ""), **broker}, notes
    secret = f"{pool_name}-broker"
    login = ""
    if endpoint.credentials:
        login = "USERNAME:PASSWORD@" if any("username" in c for c in endpoint.credentials) else ":PASSWORD@"
    example = _url(endpoint, login)
    sources = "; ".join(endpoint.credentials + endpoint.unknown)
    notes.append(
        f"create Secret {secret} with key url holding the whole broker URL, like {example} "
        f"(kubectl create secret generic {secret} --from-literal=url='{example}'): {sources}"
    )
    return {"urlFrom": {"secretKeyRef": {"name": secret, "key": "url"}}, **broker}, notes


def _endpoint(trigger: RedisTrigger, container: Mapping[str, Any] | None, skipped: list[Skipped]) -> _Endpoint:
    meta = trigger.metadata
    endpoint = _Endpoint(db=meta.get("databaseIndex", "0"))
    if not endpoint.db.isdigit():
        raise ConversionError(f"{trigger.where}.metadata.databaseIndex: {endpoint.db!r} is not a database number")
    endpoint.tls = meta.get("enableTLS", "false").lower() == "true"
    endpoint.unsafe = meta.get("unsafeSsl", "false").lower() == "true"
    address = meta.get("address") or _from_env(meta.get("addressFromEnv"), container, "address", endpoint)
    if address:
        endpoint.host, _, endpoint.port = address.rpartition(":") if ":" in address else (address, "", "6379")
    else:
        endpoint.host = meta.get("host") or _from_env(meta.get("hostFromEnv"), container, "host", endpoint)
        endpoint.port = meta.get("port") or _from_env(meta.get("portFromEnv"), container, "port", endpoint)
    if not endpoint.host and not endpoint.unknown:
        raise ConversionError(f"{trigger.where}: the trigger names no Redis address (address, or host and port)")
    for part in ("username", "password"):
        variable = meta.get(f"{part}FromEnv")
        if variable:
            endpoint.credentials.append(f"the {part} is {_env_source(variable, container)}")
    return endpoint


def _from_env(variable: str | None, container: Mapping[str, Any] | None, what: str, endpoint: _Endpoint) -> str | None:
    """A literal value of the target container's variable; otherwise, a note of where the value is."""
    if not variable:
        return None
    found = env_value(container, variable) if container is not None else None
    if found is not None and found.value is not None:
        return found.value
    endpoint.unknown.append(f"the {what} is {_env_source(variable, container)}")
    return None


def _env_source(variable: str, container: Mapping[str, Any] | None) -> str:
    if container is None:
        return f"in the Deployment's variable {variable} (give --deployment FILE to look it up)"
    found = env_value(container, variable)
    if found is None:
        return f"in variable {variable}, which the worker container does not declare in env"
    if found.secret is not None:
        return f"in Secret {found.secret[0]}, key {found.secret[1]} (the Deployment's {variable})"
    if found.other is not None:
        return f"in the Deployment's {variable} ({found.other})"
    return f"the Deployment's {variable}"


def _authentication(
    trigger: RedisTrigger,
    authentications: Mapping[tuple[str, str], Mapping[str, Any]],
    container: Mapping[str, Any] | None,
    endpoint: _Endpoint,
    broker: dict[str, Any],
    skipped: list[Skipped],
) -> None:
    """What the trigger's TriggerAuthentication adds: TLS and a CA, credentials, address parts from Secrets."""
    assert trigger.authentication is not None
    kind, name = trigger.authentication
    auth = authentications.get((kind, name))
    where = f"{trigger.where}.authenticationRef"
    if auth is None:
        endpoint.unknown.append(f"{kind} {name} (not in the input) may hold the password or TLS settings")
        return
    spec = auth.get("spec") or {}
    for key in sorted(set(spec) - {"secretTargetRef", "env"}):
        reason = "the operator reads the broker URL and CA from Secrets only"
        skipped.append(Skipped(f"{kind} {name}: spec.{key}", reason))
    refs: list[tuple[str, str]] = []
    for ref in spec.get("secretTargetRef") or []:
        refs.append((str(ref.get("parameter")), f"in Secret {ref.get('name')}, key {ref.get('key')}"))
        if ref.get("parameter") == "ca":
            broker["caFrom"] = {"secretKeyRef": {"name": str(ref.get("name")), "key": str(ref.get("key"))}}
    for ref in spec.get("env") or []:
        refs.append((str(ref.get("parameter")), _env_source(str(ref.get("name")), container)))
    for parameter, source in refs:
        described = f"the {parameter} is {source} ({kind} {name})"
        if parameter in ("username", "password"):
            endpoint.credentials.append(described)
        elif parameter in ("host", "address", "port"):
            endpoint.unknown.append(described)
        elif parameter in ("tls", "ca"):
            endpoint.tls = True
        else:
            reason = "the broker's client certificates are not supported: only a CA (broker.caFrom)"
            skipped.append(Skipped(f"{where} ({kind} {name}) parameter {parameter}", reason))


def _workers_broker_url(container: Mapping[str, Any] | None) -> EnvValue | None:
    if container is None:
        return None
    for variable in BROKER_URL_VARIABLES:
        found = env_value(container, variable)
        if found is not None and (found.secret is not None or found.value is not None):
            return found
    return None


def _usable_url(url: str) -> bool:
    return urlsplit(url).scheme in ("redis", "rediss", "sentinel") and not _has_password(url)


def _has_password(url: str) -> bool:
    return any(re.search(pattern, url) for pattern in URL_PASSWORD_PATTERNS)


def _url(endpoint: _Endpoint, login: str) -> str:
    scheme = "rediss" if endpoint.tls else "redis"
    host = endpoint.host or "HOST"
    port = endpoint.port or "6379"
    query = "?ssl_cert_reqs=none" if endpoint.tls and endpoint.unsafe else ""
    return f"{scheme}://{login}{host}:{port}/{endpoint.db}{query}"


def _describe(endpoint: _Endpoint) -> str:
    if endpoint.host:
        return f"{endpoint.host}:{endpoint.port or 6379}, database {endpoint.db}"
    return "an address from the environment"


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
    celery_queues = lists + [q for q in others if _valid_queue(q)] if options.render else lists
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
        if _valid_queue(name) and name not in lists[1:]:
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
