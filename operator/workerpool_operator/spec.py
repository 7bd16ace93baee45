"""The WorkerPool model: the CRD's spec as typed, validated Python. Pure: no I/O.

The CRD (crds/workerpool.yaml) rejects bad input at apply time; this model applies the same defaults and
the same rules, with the same messages, so an object that bypassed validation (an old CRD, a local YAML
file) is refused here just as clearly. tests/test_crd.py proves the two agree.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from workerpool_operator.brokers import DEFAULT_PRIORITY_STEPS, DEFAULT_SEPARATOR, BrokerConfig
from workerpool_operator.engine import ScalingPolicy
from workerpool_operator.engine.schedules import Schedule, check_cron, check_timezone

__all__ = [
    "BeatSpec",
    "BrokerSpec",
    "CeleryPool",
    "FallbackOverride",
    "FallbackSpec",
    "FlowerAuthSpec",
    "FlowerServiceSpec",
    "FlowerSpec",
    "OAuthProvider",
    "OAuthSpec",
    "QueueSpec",
    "ScaleUpOverride",
    "ScaleUpSpec",
    "ScalingOverride",
    "ScalingSpec",
    "ScheduleSpec",
    "SecretKeyRef",
    "SpecError",
    "TemplateSpec",
    "WorkerPool",
    "WorkerPoolSpec",
]


class SpecError(ValueError):
    """A WorkerPool the operator cannot use. The message says what is wrong and where, for a person."""


# --- the rules the CRD states as CEL; same patterns, same messages --------------------------------------

MAX_QUEUES = 32
MAX_POOL_NAME = 63
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


def _check_quantity(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= 64 and re.search(QUANTITY_PATTERN, value):
        return value
    raise ValueError(f"{value!r} is not a Kubernetes quantity (like 2, 500m or 1Gi)")


Quantity = Annotated[int | str, PlainValidator(_check_quantity, json_schema_input_type=int | str)]
RawObject = dict[str, Any]  # a Kubernetes sub-object (affinity, a volume, ...), copied as is into the pod spec

_POLICY = ScalingPolicy()  # the engine's defaults are the product's defaults


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
    )


class SecretKeyRef(_Model):
    """One key of a Secret in the WorkerPool's namespace."""

    name: Name
    key: Name


def _unwrap_secret_key_ref(value: Any) -> Any:
    """`urlFrom: {secretKeyRef: {name, key}}` in YAML, a plain SecretKeyRef in Python."""
    if isinstance(value, Mapping):
        if set(value) != {"secretKeyRef"}:
            raise ValueError("must be {secretKeyRef: {name: ..., key: ...}}")
        return value["secretKeyRef"]
    return value


def _wrap_secret_key_ref(ref: SecretKeyRef | None) -> dict[str, Any] | None:
    return None if ref is None else {"secretKeyRef": ref.model_dump()}


class BrokerSpec(_Model):
    """The Redis broker and Celery's transport options that change key names."""

    url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    url_from: SecretKeyRef | None = None
    ca_from: SecretKeyRef | None = None
    sentinel_master: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    global_keyprefix: Annotated[str, Field(max_length=253)] = ""
    priority_steps: Annotated[list[Annotated[Int, Field(ge=0, le=255)]], Field(min_length=1, max_length=10)] = list(
        DEFAULT_PRIORITY_STEPS
    )
    separator: Annotated[str, Field(min_length=1, max_length=8)] = DEFAULT_SEPARATOR

    _unwrap = field_validator("url_from", "ca_from", mode="before")(_unwrap_secret_key_ref)

    @field_serializer("url_from", "ca_from")
    def _wrap(self, ref: SecretKeyRef | None) -> dict[str, Any] | None:
        return _wrap_secret_key_ref(ref)

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


class TemplateSpec(_Model):
    """The pod template every queue's Deployment shares. Kubernetes sub-objects stay plain dicts."""

    image: Annotated[str, Field(min_length=1, max_length=512)]
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: Annotated[list[RawObject], Field(max_length=16)] = []
    command: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=32)] | None = None
    extra_args: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=64)] = []
    env: Annotated[list[RawObject], Field(max_length=256)] = []
    env_from: Annotated[list[RawObject], Field(max_length=32)] = []
    resources: ResourceRequirements = ResourceRequirements()
    node_selector: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)] = {}
    tolerations: Annotated[list[RawObject], Field(max_length=32)] = []
    affinity: RawObject | None = None
    topology_spread_constraints: Annotated[list[RawObject], Field(max_length=16)] = []
    priority_class_name: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    service_account_name: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    pod_labels: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)] = {}
    pod_annotations: Annotated[dict[str, Annotated[str, Field(max_length=8192)]], Field(max_length=64)] = {}
    volumes: Annotated[list[RawObject], Field(max_length=64)] = []
    volume_mounts: Annotated[list[RawObject], Field(max_length=64)] = []
    termination_grace_period_seconds: Annotated[Int, Field(ge=0, le=86400)] = 30


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
PolicyName = Literal["throughput", "demand"]

DEFAULT_POLL_INTERVAL = 2.0


class ScheduleSpec(_Model):
    """A cron window that holds a floor of replicas, started one start-up delay ahead."""

    cron: Annotated[str, Field(min_length=1, max_length=100)]
    duration_seconds: Annotated[Seconds, Field(ge=1, le=86400)]
    replicas: Replicas
    time_zone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"

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


Schedules = Annotated[list[ScheduleSpec], Field(max_length=MAX_SCHEDULES)]


class ScaleUpSpec(_Model):
    """A scale-up adds at most max(pods, percent% of the current replicas) per period_seconds."""

    pods: StepPods = _POLICY.scale_up_pods
    percent: StepPercent = _POLICY.scale_up_percent
    period_seconds: StepPeriod = _POLICY.scale_up_period


class FallbackSpec(_Model):
    """While the broker cannot be observed: after failure_threshold failed polls, hold `replicas`
    (None: keep the current count)."""

    failure_threshold: FailureThreshold = _POLICY.fallback_failure_threshold
    replicas: Replicas | None = _POLICY.fallback_replicas


class ScalingSpec(_Model):
    """Pool-wide scaling, every field defaulted (to the engine's ScalingPolicy defaults)."""

    poll_interval_seconds: PollInterval = DEFAULT_POLL_INTERVAL
    target_per_replica: Target | None = None  # None: the queue's concurrency
    scale_up: ScaleUpSpec = ScaleUpSpec()
    scale_down_stabilization_seconds: Window = _POLICY.scale_down_window
    idle_seconds_before_zero: Window = _POLICY.idle_before_zero
    activation_backlog: Activation = _POLICY.activation_backlog
    fallback: FallbackSpec = FallbackSpec()
    paused: Bool = _POLICY.paused
    drain_timeout_seconds: Window = _POLICY.drain_timeout
    policy: PolicyName = "throughput"
    startup_seconds: Startup = _POLICY.startup_seconds
    schedules: Schedules = []

    def merged(self, override: ScalingOverride) -> ScalingSpec:
        """This pool-wide scaling with a queue's overrides laid over it, field by field."""
        merged = self.model_dump(by_alias=False)
        for key, value in override.model_dump(by_alias=False, exclude_none=True).items():
            merged[key] = {**merged[key], **value} if isinstance(value, dict) else value  # a list replaces
        return ScalingSpec.model_validate(merged)


class ScaleUpOverride(_Model):
    pods: StepPods | None = None
    percent: StepPercent | None = None
    period_seconds: StepPeriod | None = None


class FallbackOverride(_Model):
    failure_threshold: FailureThreshold | None = None
    replicas: Replicas | None = None


class ScalingOverride(_Model):
    """A queue's overrides of the pool-wide scaling: None keeps the pool-wide value."""

    poll_interval_seconds: PollInterval | None = None
    target_per_replica: Target | None = None
    scale_up: ScaleUpOverride | None = None
    scale_down_stabilization_seconds: Window | None = None
    idle_seconds_before_zero: Window | None = None
    activation_backlog: Activation | None = None
    fallback: FallbackOverride | None = None
    paused: Bool | None = None
    drain_timeout_seconds: Window | None = None
    policy: PolicyName | None = None
    startup_seconds: Startup | None = None
    schedules: Schedules | None = None


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

    name: Annotated[str, Field(min_length=1, max_length=63)]
    pool: CeleryPool = CeleryPool.PREFORK
    concurrency: Annotated[Int, Field(ge=1, le=10000)] = 1
    min_replicas: Annotated[Int, Field(ge=0, le=1000)] = 0
    max_replicas: Annotated[Int, Field(ge=1, le=1000)] = 10
    prefetch_multiplier: Annotated[Int, Field(ge=1, le=1000)] = 1
    max_tasks_per_child: Annotated[Int, Field(ge=1, le=1_000_000)] | None = None
    resources: ResourceRequirements | None = None  # None: template.resources
    scaling: ScalingOverride = ScalingOverride()

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not re.search(QUEUE_NAME_PATTERN, name):
            raise ValueError(MSG_QUEUE_NAME)
        if name in RESERVED_QUEUE_NAMES:
            raise ValueError(MSG_RESERVED_QUEUE)
        return name

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

Args = Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=32)]


class BeatSpec(_Model):
    """Celery beat for the pool's app: one Deployment, one pod at most, ever."""

    scheduler: Annotated[str, Field(min_length=1, max_length=253)] | None = None  # None: the app's (shelve file)
    schedule_volume: RawObject | None = None  # a volume source for the schedule file; None: the pod's /tmp
    max_interval_seconds: Annotated[Int, Field(ge=1, le=300)] = 5
    resources: ResourceRequirements | None = None  # None: template.resources
    extra_args: Args = []

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
    redirect_uri: Annotated[str, Field(min_length=1, max_length=2048)]
    client_id_from: SecretKeyRef
    client_secret_from: SecretKeyRef

    _unwrap = field_validator("client_id_from", "client_secret_from", mode="before")(_unwrap_secret_key_ref)

    @field_serializer("client_id_from", "client_secret_from")
    def _wrap(self, ref: SecretKeyRef | None) -> dict[str, Any] | None:
        return _wrap_secret_key_ref(ref)


class FlowerAuthSpec(_Model):
    """Exactly one of: HTTP basic auth (``user:password`` pairs, comma-separated, in a Secret) or OAuth2."""

    basic_from: SecretKeyRef | None = None
    oauth: OAuthSpec | None = None

    _unwrap = field_validator("basic_from", mode="before")(_unwrap_secret_key_ref)

    @field_serializer("basic_from")
    def _wrap(self, ref: SecretKeyRef | None) -> dict[str, Any] | None:
        return _wrap_secret_key_ref(ref)

    @model_validator(mode="after")
    def _check_one(self) -> Self:
        if (self.basic_from is None) == (self.oauth is None):
            raise ValueError(MSG_FLOWER_AUTH)
        return self


class FlowerServiceSpec(_Model):
    """The Service in front of Flower; an Ingress (or a port-forward) is the user's."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: Annotated[Int, Field(ge=1, le=65535)] = 5555
    annotations: Annotated[dict[str, Annotated[str, Field(max_length=8192)]], Field(max_length=64)] = {}


class FlowerSpec(_Model):
    """Flower for the pool's app and broker: one Deployment and a Service."""

    auth: FlowerAuthSpec
    task_events: Bool = False
    purge_offline_workers_seconds: Annotated[Int, Field(ge=0, le=86400)] = 600
    persistent: Bool = False
    state_volume: RawObject | None = None
    url_prefix: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    resources: ResourceRequirements | None = None  # None: template.resources
    service: FlowerServiceSpec = FlowerServiceSpec()
    env: Annotated[list[RawObject], Field(max_length=32)] = []
    extra_args: Args = []

    @field_validator("url_prefix")
    @classmethod
    def _check_url_prefix(cls, prefix: str | None) -> str | None:
        if prefix is not None and not re.search(URL_PREFIX_PATTERN, prefix):
            raise ValueError(MSG_URL_PREFIX)
        return prefix

    @model_validator(mode="after")
    def _check_state_volume(self) -> Self:
        if self.state_volume is not None and not self.persistent:
            raise ValueError(MSG_FLOWER_STATE_VOLUME)
        return self


# --- the whole spec and the resource ------------------------------------------------------------------------


class WorkerPoolSpec(_Model):
    """What the user wants: a broker, an app, a pod template, queues and how they scale; beat and Flower."""

    broker: BrokerSpec
    app: Annotated[str, Field(min_length=1, max_length=253)]
    template: TemplateSpec
    queues: Annotated[list[QueueSpec], Field(min_length=1, max_length=MAX_QUEUES)]
    scaling: ScalingSpec = ScalingSpec()
    beat: BeatSpec | None = None
    flower: FlowerSpec | None = None

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
        """The engine's policy for one queue: min/max from the queue, target defaulting to its concurrency."""
        queue = self.queue(queue_name)
        scaling = self.scaling.merged(queue.scaling)
        return ScalingPolicy(
            min_replicas=queue.min_replicas,
            max_replicas=queue.max_replicas,
            target_per_replica=scaling.target_per_replica or queue.concurrency,
            scale_up_pods=scaling.scale_up.pods,
            scale_up_percent=scaling.scale_up.percent,
            scale_up_period=float(scaling.scale_up.period_seconds),
            scale_down_window=float(scaling.scale_down_stabilization_seconds),
            idle_before_zero=float(scaling.idle_seconds_before_zero),
            activation_backlog=scaling.activation_backlog,
            fallback_failure_threshold=scaling.fallback.failure_threshold,
            fallback_replicas=scaling.fallback.replicas,
            paused=scaling.paused,
            drain_timeout=float(scaling.drain_timeout_seconds),
            policy=scaling.policy,
            startup_seconds=float(scaling.startup_seconds),
            schedules=tuple(schedule.to_schedule() for schedule in scaling.schedules),
        )

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
