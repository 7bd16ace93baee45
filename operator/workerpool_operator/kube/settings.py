"""The operator's settings: one typed object per process, built once and handed to the parts that need it.

``workerpool-operator run`` builds it from its flags and the ``WORKERPOOL_OPERATOR_*`` environment (a flag given
wins over its variable, the variable over the default), checks it, and runs kopf in the same process with it in
kopf's memo. ``kopf run -m workerpool_operator.kube.handlers`` (the tests' entry, and a developer's) has no flags
of ours: :func:`workerpool_operator.kube.handlers.start` builds the object from the environment alone. Nothing
else reads the environment for the operator: the handlers, the metrics endpoint and the leader election take
their values from this object.

Why not the environment round trip the first versions made (flags turned into variables, ``execvp`` of
``kopf run``, every part parsing its variables again): four parsers of one configuration, and a table that
listed seven of its nine variables. Here the table in docs/operations.md ("Operator settings") is checked
against this model by a test.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from workerpool_operator.kube.leader import LeaseConfig
from workerpool_operator.kube.metrics import DEFAULT_PORT

ENV_PREFIX = "WORKERPOOL_OPERATOR_"
POD_NAMESPACE_ENV = "POD_NAMESPACE"  # `run`'s default Lease namespace (the chart sets it to the pod's)
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class OperatorSettings(BaseSettings):
    """Every setting of the operator process. Field descriptions are the documentation's ``meaning`` column."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", env_ignore_empty=True)

    namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="namespaces to serve (comma-separated in the variable); empty: every namespace. With a list, "
        "kopf scans no namespaces or CRDs (the chart's namespaced mode grants nothing cluster-wide)",
    )
    lease: str | None = Field(
        default=None,
        description="`<namespace>/<name>` of the leader-election Lease; unset: no election, this process writes "
        "alone. `run` sets it from its flags: `$POD_NAMESPACE/workerpool-operator` unless `--standalone`",
    )
    lease_duration: Seconds = Field(default=8.0, description="seconds without a renewal before a standby takes over")
    renew_deadline: Seconds = Field(
        default=6.0, description="seconds the leader keeps writing without a successful renewal"
    )
    retry_period: Seconds = Field(default=2.0, description="seconds between two attempts to acquire or renew the Lease")
    liveness: str | None = Field(
        default=None, description="kopf's health endpoint, e.g. `http://0.0.0.0:8080/healthz`; unset: none"
    )
    log_format: Literal["plain", "full", "json"] = Field(
        default="plain", description="`plain`, `full` (with timestamps) or `json` (one object per line)"
    )
    verbose: bool = Field(default=False, description="debug logging: every handler run and API request")
    metrics_port: int = Field(
        default=DEFAULT_PORT, ge=0, le=65535, description="port of `/metrics`; `0` turns the endpoint off"
    )
    status_refresh: Seconds = Field(
        default=30.0, description="seconds between status writes that only move the backlog and in-flight figures"
    )
    retry_delay: Seconds = Field(
        default=10.0,
        description="seconds before a pool that could not be served (missing Secret, refused Deployment) is tried "
        "again",
    )
    secret_recheck: Seconds = Field(
        default=300.0, description="seconds between two reads of a served pool's broker Secrets (rotation, deletion)"
    )
    protect_busy_after: Seconds = Field(
        default=60.0,
        description="seconds a worker runs tasks, poll after poll, before its pod is marked "
        '`karpenter.sh/do-not-disrupt` and `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"` (removed once '
        "it is idle); `0` marks none",
    )
    wakeups: bool = Field(
        default=True,
        description="ask each broker to say when a polled queue changes (Redis client tracking, see Wake-ups), so "
        "a burst is acted on at once instead of at the next poll; `false`: poll only",
    )
    crd_wait: Seconds = Field(
        default=15.0,
        description="`run` only: seconds to wait at start for the API server to serve WorkerPools before exiting "
        "with code 3 (see Install: the operator before its CRD)",
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("lease")
    @classmethod
    def _namespace_and_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        namespace, _, name = value.partition("/")
        if not namespace or not name or "/" in name:
            raise ValueError(f"must be <namespace>/<name>, not {value!r}")
        return value

    @model_validator(mode="after")
    def _election_timings(self) -> OperatorSettings:
        LeaseConfig("", "", "", self.lease_duration, self.renew_deadline, self.retry_period)  # its rule, or ValueError
        return self

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def lease_config(self, identity: str) -> LeaseConfig | None:
        """The election's settings for this replica, or ``None`` without a Lease (no election)."""
        if self.lease is None:
            return None
        namespace, name = self.lease.split("/", 1)
        return LeaseConfig(namespace, name, identity, self.lease_duration, self.renew_deadline, self.retry_period)


class SettingsError(ValueError):
    """A setting that cannot be used; ``str()`` is one line naming the variable or flag and what is wrong."""


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(**given: object) -> OperatorSettings:
    """The settings from ``given`` (flags, already named like the fields), then the environment, then the
    defaults. Raises :class:`SettingsError` with one line for the first problem."""
    try:
        return OperatorSettings(**given)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(describe(error, given)) from None


def describe(error: ValidationError, given: dict[str, object]) -> str:
    """One line for the first problem, naming the flag or the variable it came from."""
    first = error.errors(include_url=False)[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    message = str(first["msg"]).removeprefix("Value error, ")
    if not field:
        return message
    source = f"--{field.replace('_', '-')}" if field in given else env_name(field)
    value = given.get(field, first.get("input"))
    return f"{source}: {message} (got {value!r})"
