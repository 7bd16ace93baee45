"""The WorkerPool model: the CRD's spec as typed, validated Python, and the one source of the CRD. Pure: no I/O.

crds/workerpool.yaml (and the chart's copy) are generated from this model by crd.py (`make crd`): the types,
bounds, enums and defaults below, each field's docstring as its description, and the Kubernetes keywords and
CEL rules declared beside the fields and validators they concern (crd_keywords.py). The API server rejects bad
input at apply time with those rules; this model applies the same defaults and the same rules, with the same
messages, so an object that bypassed validation (an old CRD, a local YAML file) is refused here just as
clearly. tests/test_crd.py proves the two agree; tests/test_crd_generated.py that the files are not stale.

A scaling setting is declared once, on ``ScalingSpec``: the per-queue ``ScalingOverride`` is derived from it
(every field optional), and a ``PolicyField`` marker names the engine's ``ScalingPolicy`` field it feeds, so
``policy_for`` needs no line of its own for it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    ValidationError,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from workerpool_operator.brokers import DEFAULT_PRIORITY_STEPS, DEFAULT_SEPARATOR, BrokerConfig
from workerpool_operator.crd_keywords import ATOMIC, Rule, UnderKey, list_map, matches, raw_object, rules
from workerpool_operator.engine import ScalingPolicy
from workerpool_operator.engine.schedules import Schedule, check_cron, check_timezone

__all__ = [
    "BeatSpec",
    "BrokerSpec",
    "CeleryPool",
    "FallbackSpec",
    "FlowerAuthSpec",
    "FlowerServiceSpec",
    "FlowerSpec",
    "OAuthProvider",
    "OAuthSpec",
    "PolicyField",
    "QueueSpec",
    "ScaleUpSpec",
    "ScalingOverride",
    "ScalingSpec",
    "ScheduleSpec",
    "SecretKeyRef",
    "SpecError",
    "TemplateSpec",
    "WorkerPool",
    "WorkerPoolSpec",
    "overrides_of",
    "policy_values",
]


class SpecError(ValueError):
    """A WorkerPool the operator cannot use. The message says what is wrong and where, for a person."""


# --- the rules the CRD states as CEL; same patterns, same messages --------------------------------------

MAX_QUEUES = 32
MAX_POOL_NAME = 63
MAX_PRIORITY_STEPS = 10
URL_PATTERN = "^(rediss?://[^; ]+|sentinel://[^; ]+(;sentinel://[^; ]+)*)$"
URL_PASSWORD_PATTERNS = ("(^|;)[a-z]+://[^/@;]*:[^/@;]*@", "[?&]password=")
APP_PATTERN = (
    "^[A-Za-z_][A-Za-z0-9_]*([.][A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*([.][A-Za-z_][A-Za-z0-9_]*)*)?$"
)
QUEUE_NAME_PATTERN = "^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
RESERVED_QUEUE_NAMES = ("unacked", "unacked_index", "unacked_mutex")  # kombu's own keys in the same database
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

MSG_POOL_NAME = "a WorkerPool's name must be at most 63 characters (it is used in label values)"
MSG_SEPARATOR = "a queue name must not contain the broker's priority separator"
MSG_URL_MISSING = "broker needs a URL: set urlFrom.secretKeyRef (preferred) or url"
MSG_URL_BOTH = "set either broker.url or broker.urlFrom, not both"
MSG_SENTINEL_MASTER_MISSING = "a sentinel:// URL needs broker.sentinelMaster (the name of the master)"
MSG_SENTINEL_MASTER_UNUSED = "broker.sentinelMaster only applies to a sentinel:// URL"
MSG_CA_UNUSED = "broker.caFrom only applies to a rediss:// (TLS) URL"
MSG_URL_SCHEME = "broker.url must be redis://, rediss:// or sentinel:// (several sentinels: separated by ';')"
MSG_URL_PASSWORD = "broker.url must not carry a password: put the URL in a Secret and use broker.urlFrom.secretKeyRef"
MSG_PRIORITY_STEPS = "broker.prioritySteps must start at 0 and be strictly ascending, like [0, 3, 6, 9]"
MSG_MIN_MAX = "minReplicas must not exceed maxReplicas"  # the CRD's; the model's message names the values
MSG_APP = "app must be a Python module path with an optional :attribute, like shop.celery:app"
MSG_SOLO = "the solo pool runs one task at a time: concurrency must be 1"
MSG_PREFORK = "the prefork pool runs one process per slot: concurrency must be at most 64 (add replicas instead)"
MSG_THREADS = "the threads pool allows a concurrency of at most 1000"
MSG_MAX_TASKS_PER_CHILD = "maxTasksPerChild only applies to the prefork pool"
MSG_QUEUE_NAME = (
    "a queue name must be lowercase letters, digits, '-', '_' or '.', and start and end with a letter or digit"
)
MSG_RESERVED_QUEUE = "unacked, unacked_index and unacked_mutex are kombu's own Redis keys, not queue names"
MSG_DUPLICATE_QUEUE = "duplicate queue name {name!r}: queue names must be unique"
BEAT_DEPLOYMENT_SUFFIX = "celery-beat"  # <pool>-celery-beat: beat's Deployment
FLOWER_DEPLOYMENT_SUFFIX = "flower"  # <pool>-flower: Flower's Deployment and Service
MSG_QUEUE_BEAT = "a queue named celery-beat would share its Deployment name with beat: rename the queue"
MSG_QUEUE_FLOWER = "a queue named flower would share its Deployment name with Flower: rename the queue"
MSG_SCHEDULER = "beat.scheduler must be a Python class path, like django_celery_beat.schedulers:DatabaseScheduler"
MSG_FLOWER_AUTH = "flower.auth needs exactly one of basicFrom or oauth"
MSG_FLOWER_STATE_VOLUME = "flower.stateVolume only applies with flower.persistent: true"
MSG_URL_PREFIX = "flower.urlPrefix must be path segments without leading or trailing '/', like flower or ops/flower"
URL_PREFIX_PATTERN = "^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$"
MAX_SCHEDULES = 8
CRON_PATTERN = r"^\S+( +\S+){4}$"
MSG_CRON = "cron must be five fields: minute hour day-of-month month day-of-week, like '0 * * * *'"


def min_max_message(min_replicas: int, max_replicas: int) -> str:
    return f"minReplicas ({min_replicas}) must not exceed maxReplicas ({max_replicas})"


# --- building blocks --------------------------------------------------------------------------------------

Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Seconds = Annotated[float, Strict()]  # strict float still takes an int: `periodSeconds: 10` is fine
Name = Annotated[str, Field(min_length=1, max_length=253)]
MAX_QUANTITY = 64


def _check_quantity(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= MAX_QUANTITY and re.search(QUANTITY_PATTERN, value):
        return value
    raise ValueError(f"{value!r} is not a Kubernetes quantity (like 2, 500m or 1Gi)")


Quantity = Annotated[
    int | str,
    PlainValidator(_check_quantity, json_schema_input_type=int | str),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": MAX_QUANTITY,
        }
    ),
]

# Kubernetes sub-objects (affinity, a volume, ...), copied as they are into the pod spec: plain dicts here.
RawObject = Annotated[dict[str, Any], WithJsonSchema(raw_object())]
EnvVar = Annotated[dict[str, Any], WithJsonSchema(raw_object({"name": 253}))]
Volume = Annotated[dict[str, Any], WithJsonSchema(raw_object({"name": 63}))]
VolumeMount = Annotated[dict[str, Any], WithJsonSchema(raw_object({"name": 63, "mountPath": 1024}))]
LocalObjectReference = Annotated[dict[str, Any], WithJsonSchema(raw_object({"name": 253}, preserve_unknown=False))]

_POLICY = ScalingPolicy()  # the engine's defaults are the product's defaults


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,  # a field's docstring is its description in the CRD
    )


@dataclass(frozen=True)
class PolicyField:
    """``Annotated`` metadata: this setting feeds the engine's ``ScalingPolicy.<name>`` (through ``convert``).

    ``policy_for`` builds a queue's ScalingPolicy from the marked fields of the queue and of its merged scaling;
    tests/test_spec.py checks that every ScalingPolicy field is fed exactly once, with the engine's default.
    """

    name: str
    convert: Callable[[Any], Any] | None = None


def policy_values(model: BaseModel) -> dict[str, Any]:
    """The values the marked fields of ``model`` (and of the models it holds) feed, by ScalingPolicy field."""
    values: dict[str, Any] = {}
    for name, marker in _policy_fields(type(model)):
        value = getattr(model, name)
        if marker is None:
            if value is not None:
                values |= policy_values(value)
        else:
            values[marker.name] = value if marker.convert is None else marker.convert(value)
    return values


@cache
def _policy_fields(model: type[BaseModel]) -> tuple[tuple[str, PolicyField | None], ...]:
    """A model's marked fields with their marker, and its fields that hold a model with marked fields (None)."""
    found: list[tuple[str, PolicyField | None]] = []
    for name, field in model.model_fields.items():
        marker = next((meta for meta in field.metadata if isinstance(meta, PolicyField)), None)
        if marker is not None:
            found.append((name, marker))
            continue
        kinds = [kind for kind in (field.annotation, *get_args(field.annotation)) if isinstance(kind, type)]
        if any(issubclass(kind, BaseModel) and _policy_fields(kind) for kind in kinds):  # X or X | None
            found.append((name, None))
    return tuple(found)


def overrides_of(model: type[_Model]) -> type[_Model]:
    """``model`` with every field optional and unset by default (None), nested models likewise.

    A queue's scaling overrides are the pool-wide settings, each optional: derived here, never written twice.
    The copies keep each field's bounds, description and CRD keywords, not its default and not its
    PolicyField (metadata inside ``X | None`` is not the field's own), so only the merged spec feeds the engine.
    """
    fields: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        kind = field.annotation
        annotation: Any
        if isinstance(kind, type) and issubclass(kind, _Model):
            annotation = overrides_of(kind)
        else:
            annotation = field.rebuild_annotation()
        description, extra = field.description, field.json_schema_extra
        fields[name] = (annotation | None, Field(default=None, description=description, json_schema_extra=extra))
    doc = f"{model.__name__} with every field optional: None keeps the pool-wide value."
    override = model.__name__.removesuffix("Spec") + "Override"
    return create_model(override, __base__=_Model, __doc__=doc, __module__=__name__, **fields)


class SecretKeyRef(_Model):
    """One key of a Secret in the WorkerPool's namespace."""

    name: Name
    """The Secret's name."""
    key: Name
    """The key in the Secret."""


def _unwrap_secret_key_ref(value: Any) -> Any:
    """`urlFrom: {secretKeyRef: {name, key}}` in YAML, a plain SecretKeyRef in Python."""
    if isinstance(value, Mapping):
        if set(value) != {"secretKeyRef"}:
            raise ValueError("must be {secretKeyRef: {name: ..., key: ...}}")
        return value["secretKeyRef"]
    return value


def _wrap_secret_key_ref(ref: SecretKeyRef) -> dict[str, Any]:
    return {"secretKeyRef": ref.model_dump()}


SecretRef = Annotated[
    SecretKeyRef,
    BeforeValidator(_unwrap_secret_key_ref),
    PlainSerializer(_wrap_secret_key_ref),
    UnderKey("secretKeyRef"),
]


class BrokerSpec(_Model):
    """The Redis broker and Celery's transport options that change key names."""

    url: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=2048,
                json_schema_extra=rules(
                    Rule(matches(URL_PATTERN), MSG_URL_SCHEME),
                    Rule(" && ".join(f"!{matches(p)}" for p in URL_PASSWORD_PATTERNS), MSG_URL_PASSWORD),
                ),
            ),
        ]
        | None
    ) = None
    """The broker URL, inline. It must not carry a password: keep such URLs in a Secret and use urlFrom."""
    url_from: SecretRef | None = None
    """Read the broker URL from a key of a Secret in the pool's namespace."""
    ca_from: SecretRef | None = None
    """For rediss://, a CA bundle (PEM) to trust, from a key of a Secret."""
    sentinel_master: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """For sentinel://, the name of the master (Celery's master_name transport option)."""
    global_keyprefix: Annotated[str, Field(max_length=253)] = ""
    """Celery's global_keyprefix transport option, prepended to every Redis key."""
    priority_steps: Annotated[
        list[Annotated[Int, Field(ge=0, le=255)]],
        Field(
            min_length=1,
            max_length=MAX_PRIORITY_STEPS,
            json_schema_extra=ATOMIC
            | rules(
                Rule(
                    f"self[0] == 0 && {list(range(1, MAX_PRIORITY_STEPS))}"
                    ".all(i, i >= size(self) || self[i - 1] < self[i])",
                    MSG_PRIORITY_STEPS,
                )
            ),
        ),
    ] = list(DEFAULT_PRIORITY_STEPS)
    """Celery's priority_steps transport option, ascending, starting at 0."""
    separator: Annotated[str, Field(min_length=1, max_length=8)] = DEFAULT_SEPARATOR
    """Celery's sep transport option, between a queue name and its priority step."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if not re.search(URL_PATTERN, url):
            raise ValueError(MSG_URL_SCHEME)
        if any(re.search(pattern, url) for pattern in URL_PASSWORD_PATTERNS):
            raise ValueError(MSG_URL_PASSWORD)
        return url

    @field_validator("priority_steps")
    @classmethod
    def _check_priority_steps(cls, steps: list[int]) -> list[int]:
        if steps[0] != 0 or any(a >= b for a, b in itertools.pairwise(steps)):
            raise ValueError(MSG_PRIORITY_STEPS)
        return steps

    model_config = ConfigDict(
        json_schema_extra=rules(
            Rule("has(self.url) || has(self.urlFrom)", MSG_URL_MISSING),
            Rule("!(has(self.url) && has(self.urlFrom))", MSG_URL_BOTH),
            Rule(
                "!has(self.url) || !self.url.startsWith('sentinel://') || has(self.sentinelMaster)",
                MSG_SENTINEL_MASTER_MISSING,
                ".sentinelMaster",
            ),
            Rule(
                "!has(self.sentinelMaster) || !has(self.url) || self.url.startsWith('sentinel://')",
                MSG_SENTINEL_MASTER_UNUSED,
                ".sentinelMaster",
            ),
            Rule("!has(self.caFrom) || !has(self.url) || self.url.startsWith('rediss://')", MSG_CA_UNUSED, ".caFrom"),
        )
    )

    @model_validator(mode="after")
    def _check_source(self) -> Self:
        if self.url is None and self.url_from is None:
            raise ValueError(MSG_URL_MISSING)
        if self.url is not None and self.url_from is not None:
            raise ValueError(MSG_URL_BOTH)
        if self.url is not None:
            _check_url_options(self.url, self.sentinel_master, has_ca=self.ca_from is not None)
        return self

    def to_config(self, url: str, ca_pem: str | None = None) -> BrokerConfig:
        """The settings for the observer, once the operator has read the URL (and CA) from their Secrets.

        Raises SpecError when the URL cannot be used with this spec (the Secret's content is only known now).
        """
        url = url.strip()  # a Secret made from a file often ends in a newline
        if not re.search(URL_PATTERN, url):
            raise SpecError(MSG_URL_SCHEME.replace("broker.url", "the broker URL"))
        try:
            _check_url_options(url, self.sentinel_master, has_ca=ca_pem is not None)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        return BrokerConfig(
            url=url,
            ca_pem=ca_pem,
            sentinel_master=self.sentinel_master,
            global_keyprefix=self.global_keyprefix,
            priority_steps=tuple(self.priority_steps),
            separator=self.separator,
        )


def _check_url_options(url: str, sentinel_master: str | None, *, has_ca: bool) -> None:
    sentinel = url.startswith("sentinel://")
    if sentinel and sentinel_master is None:
        raise ValueError(MSG_SENTINEL_MASTER_MISSING)
    if not sentinel and sentinel_master is not None:
        raise ValueError(MSG_SENTINEL_MASTER_UNUSED)
    if has_ca and not url.startswith("rediss://"):
        raise ValueError(MSG_CA_UNUSED)


class ResourceRequirements(_Model):
    """core/v1 ResourceRequirements: quantities as Kubernetes takes them (`500m`, `1Gi`, `2`)."""

    requests: Annotated[dict[str, Quantity], Field(max_length=16)] = {}
    limits: Annotated[dict[str, Quantity], Field(max_length=16)] = {}


Args = Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=32)]
Labels = Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)]
Annotations = Annotated[dict[str, Annotated[str, Field(max_length=8192)]], Field(max_length=64)]


class TemplateSpec(_Model):
    """The pod template every queue's Deployment shares. Kubernetes sub-objects stay plain dicts."""

    image: Annotated[str, Field(min_length=1, max_length=512)]
    """The worker image (it must run Celery with the project's code)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: Annotated[list[LocalObjectReference], Field(max_length=16)] = []
    command: Args | None = None
    """Replaces the worker command (default - the image's workerpool-worker entrypoint)."""
    extra_args: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=64)] = []
    """Extra arguments for the Celery worker, appended after the ones the operator sets."""
    env: Annotated[list[EnvVar], Field(max_length=256)] = []
    """Environment variables (core/v1 EnvVar)."""
    env_from: Annotated[list[RawObject], Field(max_length=32)] = []
    """Environment from ConfigMaps and Secrets (core/v1 EnvFromSource)."""
    resources: ResourceRequirements = ResourceRequirements()
    """The worker container's resources (requests, limits); a queue can override them."""
    node_selector: Labels = {}
    tolerations: Annotated[list[RawObject], Field(max_length=32)] = []
    """core/v1 Toleration."""
    affinity: RawObject | None = None
    """core/v1 Affinity."""
    topology_spread_constraints: Annotated[list[RawObject], Field(max_length=16)] = []
    """core/v1 TopologySpreadConstraint."""
    priority_class_name: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    service_account_name: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    pod_labels: Labels = {}
    """Extra labels on every worker pod."""
    pod_annotations: Annotations = {}
    """Extra annotations on every worker pod."""
    volumes: Annotated[list[Volume], Field(max_length=64)] = []
    """core/v1 Volume."""
    volume_mounts: Annotated[list[VolumeMount], Field(max_length=64)] = []
    """core/v1 VolumeMount of the worker container."""
    termination_grace_period_seconds: Annotated[Int, Field(ge=0, le=86400)] = 30
    """How long a worker may finish its running tasks after SIGTERM (warm shutdown)."""


# --- scaling ------------------------------------------------------------------------------------------------

PollInterval = Annotated[Seconds, Field(ge=0.5, le=300)]
Target = Annotated[Int, Field(ge=1, le=1_000_000)]
StepPods = Annotated[Int, Field(ge=1, le=1000)]
StepPercent = Annotated[Int, Field(ge=0, le=1000)]
StepPeriod = Annotated[Seconds, Field(ge=0, le=3600)]
Window = Annotated[Seconds, Field(ge=0, le=86400)]
Activation = Annotated[Int, Field(ge=1, le=1_000_000)]
FailureThreshold = Annotated[Int, Field(ge=1, le=1000)]
Replicas = Annotated[Int, Field(ge=0, le=1000)]
Startup = Annotated[Seconds, Field(ge=0, le=3600)]
TargetWait = Annotated[Seconds, Field(ge=1, le=86400)]
PolicyName = Literal["throughput", "demand"]

DEFAULT_POLL_INTERVAL = 2.0


class ScheduleSpec(_Model):
    """A cron window that holds a floor of replicas, started one start-up delay ahead."""

    cron: Annotated[str, Field(min_length=1, max_length=100, json_schema_extra={"pattern": CRON_PATTERN})]
    """Five fields, minute hour day-of-month month day-of-week, like "0 * * * *"."""
    duration_seconds: Annotated[Seconds, Field(ge=1, le=86400)]
    """How long each window lasts from the cron time."""
    replicas: Replicas
    """The fewest replicas during the window (never more than maxReplicas)."""
    time_zone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"
    """The IANA time zone the cron expression is read in."""

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, cron: str) -> str:
        if not re.search(CRON_PATTERN, cron):
            raise ValueError(MSG_CRON)
        problem = check_cron(cron)
        if problem is not None:
            raise ValueError(f"not a cron expression: {problem}")
        return cron

    @field_validator("time_zone")
    @classmethod
    def _check_time_zone(cls, name: str) -> str:
        problem = check_timezone(name)
        if problem is not None:
            raise ValueError(problem)
        return name

    def to_schedule(self) -> Schedule:
        return Schedule(self.cron, float(self.duration_seconds), self.replicas, self.time_zone)


def _to_schedules(specs: list[ScheduleSpec]) -> tuple[Schedule, ...]:
    return tuple(spec.to_schedule() for spec in specs)


Schedules = Annotated[list[ScheduleSpec], Field(max_length=MAX_SCHEDULES)]


class ScaleUpSpec(_Model):
    """A scale-up adds at most max(pods, percent% of the current replicas) per period_seconds."""

    pods: Annotated[StepPods, PolicyField("scale_up_pods")] = _POLICY.scale_up_pods
    percent: Annotated[StepPercent, PolicyField("scale_up_percent")] = _POLICY.scale_up_percent
    period_seconds: Annotated[StepPeriod, PolicyField("scale_up_period")] = _POLICY.scale_up_period


class FallbackSpec(_Model):
    """While the broker cannot be observed: after failure_threshold failed polls, hold `replicas`."""

    failure_threshold: Annotated[FailureThreshold, PolicyField("fallback_failure_threshold")] = (
        _POLICY.fallback_failure_threshold
    )
    """Failed polls in a row before the fallback applies."""
    replicas: Annotated[Replicas | None, PolicyField("fallback_replicas")] = _POLICY.fallback_replicas
    """Replicas held after that many failures; unset - keep the current count."""


class ScalingSpec(_Model):
    """Pool-wide scaling, every field defaulted (to the engine's ScalingPolicy defaults).

    A new setting: a field here (with its bounds, default and docstring, and a PolicyField naming the
    ScalingPolicy field it feeds), the engine's field and its use, a row in docs/workerpool.md; then `make crd`.
    """

    poll_interval_seconds: PollInterval = DEFAULT_POLL_INTERVAL
    """Seconds between two looks at the broker."""
    target_per_replica: Annotated[Target | None, PolicyField("target_per_replica")] = None
    """Tasks (waiting + in flight) one replica should carry. Default - the queue's concurrency."""
    scale_up: ScaleUpSpec = ScaleUpSpec()
    """A scale-up adds at most max(pods, percent% of the current replicas) per periodSeconds."""
    scale_down_stabilization_seconds: Annotated[Window, PolicyField("scale_down_window")] = _POLICY.scale_down_window
    """Scale down only to the highest recommendation of this window."""
    idle_seconds_before_zero: Annotated[Window, PolicyField("idle_before_zero")] = _POLICY.idle_before_zero
    """No backlog and nothing in flight for this long before scaling to zero, at most: with policy throughput an
    idle queue goes after one start-up delay, and at once when its tasks come further apart than that."""
    activation_backlog: Annotated[Activation, PolicyField("activation_backlog")] = _POLICY.activation_backlog
    """Waiting tasks that wake a queue scaled to zero."""
    fallback: FallbackSpec = FallbackSpec()
    """What to do while the broker cannot be observed."""
    paused: Annotated[Bool, PolicyField("paused")] = _POLICY.paused
    """Stop scaling (Deployments stay as they are)."""
    drain_timeout_seconds: Annotated[Window, PolicyField("drain_timeout")] = _POLICY.drain_timeout
    """A scale-down first drains the chosen workers (they take no new task and finish what they run) and removes
    each once it is idle; a worker still busy after this long is removed anyway. 0 - no draining (the chosen pods
    get SIGTERM at once)."""
    policy: Annotated[PolicyName, PolicyField("policy")] = "throughput"
    """throughput - sized from the measured task duration, arrival rate and pod start-up (falls back to demand
    until there is data); demand - ceil((backlog + in flight) / targetPerReplica) with the scaleUp step limit and
    the scale-down window."""
    target_wait_seconds: Annotated[TargetWait | None, PolicyField("target_wait")] = _POLICY.target_wait
    """The longest a task should wait before it starts (p95), in seconds. With policy throughput the engine keeps
    waits within it with the fewest replicas: a backlog waits while the workers there, or those it adds once
    ready, start every task in time, and tasks may gather while a queue is at zero. Unset - as soon as workers
    can be had. A target no longer than a start-up delay and a half changes nothing."""
    startup_seconds: Annotated[Startup, PolicyField("startup_seconds")] = _POLICY.startup_seconds
    """Seconds from a scale-up to the new worker's first report, used until the engine has measured it (policy
    throughput and schedules)."""
    schedules: Annotated[Schedules, PolicyField("schedules", _to_schedules)] = []
    """Cron windows that hold a floor of replicas, applied one start-up delay before each window opens. Set on a
    queue, the list replaces the pool-wide one."""

    def merged(self, override: ScalingOverride) -> ScalingSpec:
        """This pool-wide scaling with a queue's overrides laid over it, field by field."""
        merged = self.model_dump(by_alias=False)
        for key, value in override.model_dump(by_alias=False, exclude_none=True).items():
            merged[key] = {**merged[key], **value} if isinstance(value, dict) else value  # a list replaces
        return ScalingSpec.model_validate(merged)


if TYPE_CHECKING:

    class ScalingOverride(_Model):
        """ScalingSpec with every field optional (read a queue's scaling merged: WorkerPoolSpec.scaling_for)."""

else:
    ScalingOverride = overrides_of(ScalingSpec)


# --- queues -------------------------------------------------------------------------------------------------


class CeleryPool(StrEnum):
    """Celery's execution pools (`celery worker --pool`)."""

    PREFORK = "prefork"
    THREADS = "threads"
    SOLO = "solo"
    GEVENT = "gevent"
    EVENTLET = "eventlet"


# The most concurrency one worker pod may have, where the pool sets a tighter bound than the schema's.
POOL_CONCURRENCY_LIMITS: dict[CeleryPool, tuple[int, str]] = {
    CeleryPool.SOLO: (1, MSG_SOLO),
    CeleryPool.PREFORK: (64, MSG_PREFORK),
    CeleryPool.THREADS: (1000, MSG_THREADS),
}


class QueueSpec(_Model):
    """One Celery queue, served by one Deployment."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=63,
            json_schema_extra=rules(
                Rule(matches(QUEUE_NAME_PATTERN), MSG_QUEUE_NAME),
                Rule(f"!(self in {list(RESERVED_QUEUE_NAMES)})", MSG_RESERVED_QUEUE),
            ),
        ),
    ]
    """The Celery queue. Lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit."""
    pool: CeleryPool = CeleryPool.PREFORK
    """Celery's execution pool (celery worker --pool)."""
    concurrency: Annotated[Int, Field(ge=1, le=10000)] = 1
    """Tasks one worker pod runs at once (celery worker --concurrency)."""
    min_replicas: Annotated[Int, Field(ge=0, le=1000), PolicyField("min_replicas")] = _POLICY.min_replicas
    """The fewest worker pods; 0 lets an idle queue scale to zero."""
    max_replicas: Annotated[Int, Field(ge=1, le=1000), PolicyField("max_replicas")] = _POLICY.max_replicas
    """The most worker pods."""
    prefetch_multiplier: Annotated[Int, Field(ge=1, le=1000)] = 1
    """Celery's worker_prefetch_multiplier: messages reserved per slot. 1 leaves waiting tasks in the broker, where
    new replicas can take them."""
    max_tasks_per_child: Annotated[Int, Field(ge=1, le=1_000_000)] | None = None
    """Celery's worker_max_tasks_per_child (prefork only); unset means no limit."""
    resources: ResourceRequirements | None = None
    """Replaces template.resources for this queue's pods."""
    scaling: ScalingOverride = ScalingOverride()
    """Overrides of spec.scaling for this queue; unset fields keep the pool-wide value."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not re.search(QUEUE_NAME_PATTERN, name):
            raise ValueError(MSG_QUEUE_NAME)
        if name in RESERVED_QUEUE_NAMES:
            raise ValueError(MSG_RESERVED_QUEUE)
        return name

    model_config = ConfigDict(
        json_schema_extra=rules(
            Rule("self.minReplicas <= self.maxReplicas", MSG_MIN_MAX, ".minReplicas"),
            *(
                Rule(f"self.pool != '{pool.value}' || self.concurrency <= {limit}", message, ".concurrency")
                for pool, (limit, message) in POOL_CONCURRENCY_LIMITS.items()
            ),
            Rule("!has(self.maxTasksPerChild) || self.pool == 'prefork'", MSG_MAX_TASKS_PER_CHILD, ".maxTasksPerChild"),
        )
    )

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(min_max_message(self.min_replicas, self.max_replicas))
        limit = POOL_CONCURRENCY_LIMITS.get(self.pool)
        if limit is not None and self.concurrency > limit[0]:
            raise ValueError(limit[1])
        if self.max_tasks_per_child is not None and self.pool is not CeleryPool.PREFORK:
            raise ValueError(MSG_MAX_TASKS_PER_CHILD)
        return self


# --- beat and Flower: the pool's other workloads, never scaled ---------------------------------------------


class BeatSpec(_Model):
    """Celery beat for the pool's app: one Deployment, one pod at most, ever."""

    scheduler: (
        Annotated[
            str,
            Field(min_length=1, max_length=253, json_schema_extra=rules(Rule(matches(APP_PATTERN), MSG_SCHEDULER))),
        ]
        | None
    ) = None
    """Celery's beat scheduler class (celery beat --scheduler), for example
    django_celery_beat.schedulers:DatabaseScheduler. Default - the app's (a shelve file)."""
    schedule_volume: RawObject | None = None
    """A core/v1 volume source (without name), for example {persistentVolumeClaim: {claimName: shop-beat}}, where
    the default scheduler keeps its schedule file. Default - the pod's /tmp (kept across container restarts, lost
    with the pod)."""
    max_interval_seconds: Annotated[Int, Field(ge=1, le=300)] = 5
    """Most seconds between two looks at the schedule (celery beat --max-interval)."""
    resources: ResourceRequirements | None = None
    """The beat container's resources. Default - template.resources."""
    extra_args: Args = []
    """More celery beat arguments, after the ones the entrypoint builds."""

    @field_validator("scheduler")
    @classmethod
    def _check_scheduler(cls, scheduler: str | None) -> str | None:
        if scheduler is not None and not re.search(APP_PATTERN, scheduler):
            raise ValueError(MSG_SCHEDULER)
        return scheduler


class OAuthProvider(StrEnum):
    """Flower's OAuth2 login handlers."""

    GOOGLE = "google"
    GITHUB = "github"
    GITLAB = "gitlab"
    OKTA = "okta"


class OAuthSpec(_Model):
    """Flower's OAuth2 login: who may sign in, and the OAuth client, whose id and secret come from Secrets."""

    provider: OAuthProvider
    allowed_emails: Annotated[str, Field(min_length=1, max_length=1024)]
    """Who may sign in - an email, several separated by '|', or one pattern like .*@example.com."""
    redirect_uri: Annotated[str, Field(min_length=1, max_length=2048)]
    """The callback URL registered with the provider, ending in /login."""
    client_id_from: SecretRef
    client_secret_from: SecretRef


class FlowerAuthSpec(_Model):
    """Exactly one of: HTTP basic auth (``user:password`` pairs, comma-separated, in a Secret) or OAuth2."""

    basic_from: SecretRef | None = None
    """HTTP basic auth - user:password pairs, comma-separated, from a key of a Secret."""
    oauth: OAuthSpec | None = None
    """OAuth2 sign-in; the client's id and secret come from Secrets."""

    model_config = ConfigDict(json_schema_extra=rules(Rule("has(self.basicFrom) != has(self.oauth)", MSG_FLOWER_AUTH)))

    @model_validator(mode="after")
    def _check_one(self) -> Self:
        if (self.basic_from is None) == (self.oauth is None):
            raise ValueError(MSG_FLOWER_AUTH)
        return self


class FlowerServiceSpec(_Model):
    """The Service in front of Flower; an Ingress (or a port-forward) is the user's."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: Annotated[Int, Field(ge=1, le=65535)] = 5555
    annotations: Annotations = {}


class FlowerSpec(_Model):
    """Flower for the pool's app and broker: one Deployment and a Service."""

    auth: FlowerAuthSpec
    """Who may use Flower - exactly one of basicFrom and oauth. No password in the spec."""
    task_events: Bool = False
    """The pool's workers send task events (celery worker -E), so Flower shows tasks. Off by default: events cost a
    broker message per task state. Flower never switches events on by itself."""
    purge_offline_workers_seconds: Annotated[Int, Field(ge=0, le=86400)] = 600
    """Flower forgets workers offline for this long (worker pods come and go); 0 - never."""
    persistent: Bool = False
    """Flower saves what it saw (every minute and at shutdown) and reads it back on start."""
    state_volume: RawObject | None = None
    """With persistent - a core/v1 volume source (without name) for Flower's state file. Default - the pod's /tmp
    (lost with the pod)."""
    url_prefix: (
        Annotated[
            str,
            Field(
                min_length=1, max_length=253, json_schema_extra=rules(Rule(matches(URL_PREFIX_PATTERN), MSG_URL_PREFIX))
            ),
        ]
        | None
    ) = None
    """Serve Flower under this path (behind an Ingress with a path), like flower."""
    resources: ResourceRequirements | None = None
    """The Flower container's resources. Default - template.resources."""
    service: FlowerServiceSpec = FlowerServiceSpec()
    """The Service in front of Flower. An Ingress is yours to add."""
    env: Annotated[list[EnvVar], Field(max_length=32)] = []
    """More environment variables for Flower (core/v1 EnvVar), for example FLOWER_* settings."""
    extra_args: Args = []
    """More Flower arguments, like --max_tasks=10000."""

    @field_validator("url_prefix")
    @classmethod
    def _check_url_prefix(cls, prefix: str | None) -> str | None:
        if prefix is not None and not re.search(URL_PREFIX_PATTERN, prefix):
            raise ValueError(MSG_URL_PREFIX)
        return prefix

    model_config = ConfigDict(
        json_schema_extra=rules(
            Rule("!has(self.stateVolume) || self.persistent", MSG_FLOWER_STATE_VOLUME, ".stateVolume")
        )
    )

    @model_validator(mode="after")
    def _check_state_volume(self) -> Self:
        if self.state_volume is not None and not self.persistent:
            raise ValueError(MSG_FLOWER_STATE_VOLUME)
        return self


# --- the whole spec and the resource ------------------------------------------------------------------------


class WorkerPoolSpec(_Model):
    """What the user wants: a broker, an app, a pod template, queues and how they scale; beat and Flower."""

    broker: BrokerSpec
    """The Redis broker: redis://, rediss:// (TLS) or Celery's sentinel:// form, given inline (url) or, preferred,
    from a Secret (urlFrom). Exactly one of them."""
    app: Annotated[
        str, Field(min_length=1, max_length=253, json_schema_extra=rules(Rule(matches(APP_PATTERN), MSG_APP)))
    ]
    """What `celery -A` receives, for example shop.celery:app."""
    template: TemplateSpec
    """The pod template shared by every queue's Deployment."""
    queues: Annotated[list[QueueSpec], Field(min_length=1, max_length=MAX_QUEUES, json_schema_extra=list_map("name"))]
    """One Deployment per queue."""
    scaling: ScalingSpec = ScalingSpec()
    """How every queue scales, unless the queue overrides it."""
    beat: BeatSpec | None = None
    """Celery beat for the app: one Deployment with replicas 1 and strategy Recreate, so two beats never run at
    once. Leave it out for no beat."""
    flower: FlowerSpec | None = None
    """Flower for the app and broker: a Deployment (one pod) and a Service. Leave it out for no Flower."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            Rule("self.queues.all(q, !q.name.contains(self.broker.separator))", MSG_SEPARATOR, ".queues"),
            Rule(
                f"!has(self.beat) || !self.queues.exists(q, q.name == '{BEAT_DEPLOYMENT_SUFFIX}')",
                MSG_QUEUE_BEAT,
                ".queues",
            ),
            Rule(
                f"!has(self.flower) || !self.queues.exists(q, q.name == '{FLOWER_DEPLOYMENT_SUFFIX}')",
                MSG_QUEUE_FLOWER,
                ".queues",
            ),
        )
    )

    @field_validator("app")
    @classmethod
    def _check_app(cls, app: str) -> str:
        if not re.search(APP_PATTERN, app):
            raise ValueError(MSG_APP)
        return app

    @model_validator(mode="after")
    def _check_queues(self) -> Self:
        seen: set[str] = set()
        for queue in self.queues:
            if queue.name in seen:
                raise ValueError(MSG_DUPLICATE_QUEUE.format(name=queue.name))
            seen.add(queue.name)
            if self.broker.separator in queue.name:
                raise ValueError(MSG_SEPARATOR)
        if self.beat is not None and BEAT_DEPLOYMENT_SUFFIX in seen:
            raise ValueError(MSG_QUEUE_BEAT)
        if self.flower is not None and FLOWER_DEPLOYMENT_SUFFIX in seen:
            raise ValueError(MSG_QUEUE_FLOWER)
        return self

    def queue(self, name: str) -> QueueSpec:
        for queue in self.queues:
            if queue.name == name:
                return queue
        raise KeyError(f"no queue {name!r} in this WorkerPool (queues: {', '.join(q.name for q in self.queues)})")

    def scaling_for(self, queue_name: str) -> ScalingSpec:
        """Pool-wide scaling merged with the queue's overrides."""
        return self.scaling.merged(self.queue(queue_name).scaling)

    def policy_for(self, queue_name: str) -> ScalingPolicy:
        """The engine's policy for one queue: what the PolicyField-marked fields of the queue (min and max) and of
        its merged scaling feed; the target defaults to the queue's concurrency."""
        queue = self.queue(queue_name)
        values = policy_values(queue) | policy_values(self.scaling_for(queue_name))
        values["target_per_replica"] = values["target_per_replica"] or queue.concurrency
        return ScalingPolicy(**values)

    def poll_interval_for(self, queue_name: str) -> float:
        """Seconds between two looks at this queue's broker."""
        return float(self.scaling_for(queue_name).poll_interval_seconds)


class WorkerPool(_Model):
    """A WorkerPool resource as the operator uses it: identity from metadata, and the parsed spec."""

    name: str
    namespace: str = "default"
    generation: int = 0
    uid: str | None = None
    spec: WorkerPoolSpec

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> WorkerPool:
        """Parse a WorkerPool object (as the API returns it, or as a user wrote it) with defaults applied.

        Raises SpecError with one line per problem, each naming the field (`spec.queues[0].concurrency: ...`).
        """
        if not isinstance(obj, Mapping):
            raise SpecError(f"a WorkerPool must be a mapping, not {type(obj).__name__}")
        metadata = obj.get("metadata") or {}
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        if not isinstance(name, str) or not name:
            raise SpecError("metadata.name: a WorkerPool needs a name")
        if len(name) > MAX_POOL_NAME:
            raise SpecError(f"metadata.name: {MSG_POOL_NAME}")
        if obj.get("spec") is None:
            raise SpecError("spec: a WorkerPool needs a spec (broker, app, template, queues)")
        try:
            spec = WorkerPoolSpec.model_validate(obj["spec"])
        except ValidationError as exc:
            raise SpecError(_describe(exc, root="spec")) from None
        return cls(
            name=name,
            namespace=metadata.get("namespace") or "default",
            generation=int(metadata.get("generation") or 0),
            uid=metadata.get("uid"),
            spec=spec,
        )


def _describe(exc: ValidationError, root: str) -> str:
    """pydantic's errors as `path: message` lines, paths spelled as in the YAML (`spec.queues[0].name`)."""
    lines = []
    for error in exc.errors(include_url=False):
        path = root
        for part in error["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check its spelling against docs/workerpool.md)"
        elif error["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{path}: {message}")
    return "\n".join(dict.fromkeys(lines))
