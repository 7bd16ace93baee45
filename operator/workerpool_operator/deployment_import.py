"""What a worker Deployment tells ``from-keda``: its Celery command line, environment and pod template. Pure.

A team moving from KEDA has a Deployment that runs ``celery -A shop.celery:app worker -Q emails -c 8 ...``
(directly, through ``sh -c``, or through the project's ``workerpool-worker`` entrypoint configured by
``WORKERPOOL_*`` variables). Its command tells the WorkerPool's ``app``, the queues the workers consume, their
pool and concurrency; its environment may hold the broker URL (or the variables a KEDA trigger reads the
address and password from); its pod spec becomes ``spec.template`` when the user asks for a rendered pool.
Everything here reads plain dicts as ``yaml.safe_load`` gives them; what cannot be carried over is returned
with the reason, never dropped silently.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BROKER_URL_VARIABLES",
    "CeleryCommand",
    "ConversionError",
    "EnvValue",
    "Skipped",
    "celery_command",
    "env_value",
    "template_from",
    "worker_container",
]


class ConversionError(ValueError):
    """Input ``from-keda`` cannot convert at all (not a ScaledObject, a bad number, ...); the message says why."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something of the input that the WorkerPool does not carry, and why."""

    field: str  # where in the input, e.g. spec.advanced.horizontalPodAutoscalerConfig
    reason: str


# The variables a Celery deployment commonly keeps its broker URL in, in the order they are looked at.
BROKER_URL_VARIABLES = ("WORKERPOOL_BROKER_URL", "CELERY_BROKER_URL", "BROKER_URL", "CELERY_BROKER", "REDIS_URL")
POOL_ALIASES = {"prefork": "prefork", "processes": "prefork", "threads": "threads", "solo": "solo"}
POOL_ALIASES |= {"gevent": "gevent", "eventlet": "eventlet"}
SHELL_SEPARATORS = {"&&", "||", ";", "|", "&"}
# Worker options that take no value (everything else written `--opt value` takes the next token).
VALUELESS = {
    "-E",
    "--task-events",
    "-B",
    "--beat",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
    "--purge",
    "--discard",
    "-D",
    "--detach",
}
# Options the operator's entrypoint sets itself, or that the WorkerPool says elsewhere: not passed on.
DROPPED = {
    "-n": "the entrypoint names each worker after its pod",
    "--hostname": "the entrypoint names each worker after its pod",
    "-l": "the worker's log level is WORKERPOOL_LOGLEVEL (template.env), info by default",
    "--loglevel": "the worker's log level is WORKERPOOL_LOGLEVEL (template.env), info by default",
    "-E": "task events: set flower.taskEvents, or WORKERPOOL_TASK_EVENTS=1 in template.env",
    "--task-events": "task events: set flower.taskEvents, or WORKERPOOL_TASK_EVENTS=1 in template.env",
    "-B": "beat inside a worker runs once per replica: use spec.beat (one beat, ever)",
    "--beat": "beat inside a worker runs once per replica: use spec.beat (one beat, ever)",
    "--autoscale": "Celery's autoscale resizes one worker's pool; the WorkerPool scales pods",
    "-D": "a pod's worker runs in the foreground",
    "--detach": "a pod's worker runs in the foreground",
}


@dataclass(frozen=True, slots=True)
class CeleryCommand:
    """What a worker container's command line (or the entrypoint's ``WORKERPOOL_*`` variables) says."""

    app: str | None = None
    queues: tuple[str, ...] = ()
    pool: str | None = None
    concurrency: int | None = None
    prefetch_multiplier: int | None = None
    max_tasks_per_child: int | None = None
    task_events: bool = False
    extra_args: tuple[str, ...] = ()  # worker options passed on as template.extraArgs
    dropped: tuple[Skipped, ...] = ()


@dataclass(frozen=True, slots=True)
class EnvValue:
    """One environment variable of a container: a literal value, a Secret's key, or something else."""

    name: str
    value: str | None = None
    secret: tuple[str, str] | None = None  # (Secret name, key)
    other: str | None = None  # valueFrom of another kind (configMapKeyRef, fieldRef, ...)


def worker_container(deployment: Mapping[str, Any], name: str | None = None) -> Mapping[str, Any]:
    """The container KEDA reads the environment of: ``name`` (envSourceContainerName), else the first."""
    containers = _pod_spec(deployment).get("containers") or []
    if not isinstance(containers, list) or not containers or not all(isinstance(c, Mapping) for c in containers):
        raise ConversionError(f"Deployment {_name(deployment)}: spec.template.spec.containers is empty")
    if name is None:
        first: Mapping[str, Any] = containers[0]
        return first
    for container in containers:
        if container.get("name") == name:
            return container  # type: ignore[no-any-return]
    raise ConversionError(f"Deployment {_name(deployment)} has no container {name!r} (envSourceContainerName)")


def env_value(container: Mapping[str, Any], name: str) -> EnvValue | None:
    """Variable ``name`` as the container declares it (``env`` only: ``envFrom`` holds no names to look up)."""
    for entry in container.get("env") or []:
        if not isinstance(entry, Mapping) or entry.get("name") != name:
            continue
        if "value" in entry:
            return EnvValue(name, value=str(entry["value"]))
        source = entry.get("valueFrom") or {}
        ref = source.get("secretKeyRef") if isinstance(source, Mapping) else None
        if isinstance(ref, Mapping) and ref.get("name") and ref.get("key"):
            return EnvValue(name, secret=(str(ref["name"]), str(ref["key"])))
        kinds = ", ".join(sorted(source)) if isinstance(source, Mapping) else "valueFrom"
        return EnvValue(name, other=kinds or "valueFrom")
    return None


def celery_command(container: Mapping[str, Any]) -> CeleryCommand | None:
    """The Celery worker the container runs: from ``celery ... worker ...`` in its command and args (shell
    strings included), else from the entrypoint's ``WORKERPOOL_*`` variables; ``None`` when neither says."""
    tokens = _tokens([*(container.get("command") or []), *(container.get("args") or [])])
    parsed = _from_command_line(tokens)
    if parsed is not None:
        return parsed
    return _from_entrypoint_env(container)


def _tokens(words: Sequence[object]) -> list[str]:
    """The words of a command, with shell strings (``sh -c "cd /app && celery ..."``) split as a shell would."""
    tokens: list[str] = []
    for word in words:
        text = str(word)
        if any(c.isspace() or c in ";&|" for c in text):
            lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            try:
                tokens += list(lexer)
            except ValueError:  # unbalanced quotes: keep the word
                tokens.append(text)
        else:
            tokens.append(text)
    return tokens


def _from_command_line(tokens: Sequence[str]) -> CeleryCommand | None:
    # `celery`, `/usr/local/bin/celery` or `python -m celery`
    start = next((i for i, word in enumerate(tokens) if word.rsplit("/", 1)[-1] == "celery"), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(tokens)) if tokens[i] in SHELL_SEPARATORS), len(tokens))
    words = list(tokens[start + 1 : end])
    app: str | None = None
    position = 0
    while position < len(words) and words[position] != "worker":  # celery's global options come first
        option, value, position = _option(words, position)
        if option in ("-A", "--app"):
            app = value
    if position >= len(words):
        return None  # celery beat, flower, inspect, ...: not a worker
    return _worker_options(words[position + 1 :], app)


def _option(words: Sequence[str], position: int) -> tuple[str, str | None, int]:
    """(option, value, next position) at ``position``: ``--opt=value``, ``-Avalue``, ``--opt value`` or a flag."""
    word = words[position]
    if word.startswith("--") and "=" in word:
        option, _, value = word.partition("=")
        return option, value, position + 1
    if word.startswith("-") and not word.startswith("--") and len(word) > 2:
        return word[:2], word[2:], position + 1
    if word.startswith("-") and word not in VALUELESS and position + 1 < len(words):
        following = words[position + 1]
        if not following.startswith("-") and following != "worker":
            return word, following, position + 2
    return word, None, position + 1


def _worker_options(words: Sequence[str], app: str | None) -> CeleryCommand:
    found: dict[str, Any] = {"app": app}
    extra: list[str] = []
    dropped: list[Skipped] = []
    position = 0
    while position < len(words):
        start = position
        option, value, position = _option(words, position)
        if option in ("-A", "--app"):
            found["app"] = value
        elif option in ("-Q", "--queues"):
            found["queues"] = tuple(q.strip() for q in (value or "").split(",") if q.strip())
        elif option in ("-c", "--concurrency"):
            found["concurrency"] = _count(option, value)
        elif option in ("-P", "--pool"):
            found["pool"] = value
        elif option == "--prefetch-multiplier":
            found["prefetch_multiplier"] = _count(option, value)
        elif option == "--max-tasks-per-child":
            found["max_tasks_per_child"] = _count(option, value)
        elif option in DROPPED:
            found["task_events"] = found.get("task_events", False) or option in ("-E", "--task-events")
            dropped.append(Skipped(f"celery worker {' '.join(words[start:position])}", DROPPED[option]))
        else:
            extra += words[start:position]
    pool = found.get("pool")
    if pool is not None and pool not in POOL_ALIASES:
        dropped.append(Skipped(f"celery worker --pool {pool}", "not a pool the WorkerPool runs (prefork by default)"))
    return CeleryCommand(
        app=found.get("app"),
        queues=found.get("queues", ()),
        pool=POOL_ALIASES.get(pool) if pool is not None else None,
        concurrency=found.get("concurrency"),
        prefetch_multiplier=found.get("prefetch_multiplier"),
        max_tasks_per_child=found.get("max_tasks_per_child"),
        task_events=found.get("task_events", False),
        extra_args=tuple(extra),
        dropped=tuple(dropped),
    )


def _count(option: str, value: str | None) -> int:
    try:
        number = int(value or "")
    except ValueError:
        raise ConversionError(f"celery worker {option} {value}: not a whole number") from None
    if number < 1:
        raise ConversionError(f"celery worker {option} {value}: must be at least 1")
    return number


def _from_entrypoint_env(container: Mapping[str, Any]) -> CeleryCommand | None:
    def literal(name: str) -> str | None:
        found = env_value(container, name)
        return found.value if found is not None else None

    app = literal("WORKERPOOL_APP")
    if app is None:
        return None
    queues = tuple(q.strip() for q in (literal("WORKERPOOL_QUEUES") or "").split(",") if q.strip())
    concurrency, prefetch = literal("WORKERPOOL_CONCURRENCY"), literal("WORKERPOOL_PREFETCH_MULTIPLIER")
    pool = literal("WORKERPOOL_POOL")
    return CeleryCommand(
        app=app,
        queues=queues,
        pool=POOL_ALIASES.get(pool) if pool is not None else None,
        concurrency=_count("--concurrency", concurrency) if concurrency is not None else None,
        prefetch_multiplier=_count("--prefetch-multiplier", prefetch) if prefetch is not None else None,
        task_events=literal("WORKERPOOL_TASK_EVENTS") in ("1", "true", "yes"),
    )


# --- the pod template ---------------------------------------------------------------------------------------

# Pod spec fields spec.template carries as they are (pod field -> template field).
POD_FIELDS = {
    "nodeSelector": "nodeSelector",
    "tolerations": "tolerations",
    "affinity": "affinity",
    "topologySpreadConstraints": "topologySpreadConstraints",
    "priorityClassName": "priorityClassName",
    "serviceAccountName": "serviceAccountName",
    "imagePullSecrets": "imagePullSecrets",
    "volumes": "volumes",
    "terminationGracePeriodSeconds": "terminationGracePeriodSeconds",
}
CONTAINER_FIELDS = {"image": "image", "imagePullPolicy": "imagePullPolicy", "env": "env", "envFrom": "envFrom"}
CONTAINER_FIELDS |= {"resources": "resources", "volumeMounts": "volumeMounts"}
# What the operator sets on its own containers and pods: the Deployment's values are not carried over.
OWN_FIELDS = {
    "command": "the operator runs the image's workerpool-worker entrypoint (the Celery options are read above)",
    "args": "the operator runs the image's workerpool-worker entrypoint (the Celery options are read above)",
    "livenessProbe": "the operator sets the entrypoint's own probes",
    "readinessProbe": "the operator sets the entrypoint's own probes",
    "startupProbe": "the operator sets the entrypoint's own probes",
    "securityContext": "the operator sets a restricted security context",
    "name": "the operator names its containers",
}


@dataclass(frozen=True, slots=True)
class Template:
    """``spec.template`` made from a Deployment, with what it left out."""

    template: dict[str, Any]
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = field(default=())


def template_from(deployment: Mapping[str, Any], container: Mapping[str, Any], command: CeleryCommand) -> Template:
    """The WorkerPool's ``spec.template`` for the Deployment's worker container and pod."""
    pod = _pod_spec(deployment)
    where = "spec.template.spec"
    template: dict[str, Any] = {}
    skipped: list[Skipped] = []
    for source, target in CONTAINER_FIELDS.items():
        if container.get(source) not in (None, [], {}):
            template[target] = container[source]
    if "image" not in template:
        raise ConversionError(f"Deployment {_name(deployment)}: the worker container has no image")
    for source, reason in OWN_FIELDS.items():
        if source in container and source != "name":
            skipped.append(Skipped(f"{where}.containers[{container.get('name')}].{source}", reason))
    for key in sorted(set(container) - set(CONTAINER_FIELDS) - set(OWN_FIELDS)):
        skipped.append(Skipped(f"{where}.containers[{container.get('name')}].{key}", "no WorkerPool field for it"))
    for source, target in POD_FIELDS.items():
        if pod.get(source) not in (None, [], {}):
            template[target] = pod[source]
    for key in sorted(set(pod) - set(POD_FIELDS) - {"containers"}):
        skipped.append(Skipped(f"{where}.{key}", "no WorkerPool field for it"))
    others = [c.get("name") for c in pod.get("containers") or [] if c is not container]
    if others:
        skipped.append(Skipped(f"{where}.containers {others}", "a WorkerPool's pods run one worker container"))
    labels, label_skips = _pod_labels(deployment)
    skipped += label_skips
    if labels:
        template["podLabels"] = labels
    metadata = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    annotations = metadata.get("annotations")
    if annotations:
        template["podAnnotations"] = dict(annotations)
    if command.extra_args:
        template["extraArgs"] = list(command.extra_args)
    notes = (
        f"spec.template comes from Deployment {_name(deployment)}: its image must be built on the worker image "
        "(worker-image/README.md), whose entrypoint, workerpool-worker, the operator runs instead of the "
        "Deployment's command",
    )
    return Template(template=template, skipped=tuple(skipped), notes=notes)


def _pod_labels(deployment: Mapping[str, Any]) -> tuple[dict[str, str], list[Skipped]]:
    """The pod labels to carry: all but those the old Deployment selects its pods by (the new pods must not
    look like the old Deployment's to its Services and ReplicaSets)."""
    spec = deployment.get("spec") or {}
    labels = dict(((spec.get("template") or {}).get("metadata") or {}).get("labels") or {})
    selector = ((spec.get("selector") or {}).get("matchLabels")) or {}
    kept = {k: str(v) for k, v in labels.items() if k not in selector}
    skipped = [
        Skipped(
            f"spec.template.metadata.labels.{key}",
            "the old Deployment selects its pods by it: the operator's pods must not look like them",
        )
        for key in sorted(set(labels) & set(selector))
    ]
    return kept, skipped


def _pod_spec(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec")
    if not isinstance(spec, Mapping):
        raise ConversionError(f"Deployment {_name(deployment)} has no spec.template.spec")
    return spec


def _name(deployment: Mapping[str, Any]) -> str:
    return str((deployment.get("metadata") or {}).get("name") or "(unnamed)")
