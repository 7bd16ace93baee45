"""The operator's own settings, from its environment (``workerpool-operator run`` and the Helm chart set them).

| variable | default | meaning |
|---|---|---|
| ``WORKERPOOL_OPERATOR_LEASE`` | unset | ``<namespace>/<name>`` of the election's Lease; unset: no election |
| ``WORKERPOOL_OPERATOR_LEASE_DURATION`` | 8 | seconds without a renewal before a standby takes over |
| ``WORKERPOOL_OPERATOR_RENEW_DEADLINE`` | 6 | seconds the leader keeps writing without a successful renewal |
| ``WORKERPOOL_OPERATOR_RETRY_PERIOD`` | 2 | seconds between two attempts to acquire or renew the Lease |
| ``WORKERPOOL_OPERATOR_STATUS_REFRESH`` | 30 | seconds between two status writes that only move figures |
| ``WORKERPOOL_OPERATOR_RETRY_DELAY`` | 10 | seconds before a pool that could not be served is tried again |
| ``WORKERPOOL_OPERATOR_SECRET_RECHECK`` | 300 | seconds between two reads of a served pool's Secrets |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from workerpool_operator.kube.leader import LeaseConfig

LEASE_ENV = "WORKERPOOL_OPERATOR_LEASE"
_DEFAULT_LEASE = LeaseConfig("default", "workerpool-operator", "defaults")


def env_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """A non-negative number of seconds from the environment; a bad value is a clear error."""
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, not {value}")
    return value


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    lease: tuple[str, str] | None = None  # (namespace, name)
    lease_duration: float = _DEFAULT_LEASE.lease_duration
    renew_deadline: float = _DEFAULT_LEASE.renew_deadline
    retry_period: float = _DEFAULT_LEASE.retry_period
    status_refresh: float = 30.0
    retry_delay: float = 10.0
    secret_recheck: float = 300.0

    def lease_config(self, identity: str) -> LeaseConfig:
        """The election's settings for this replica (``lease`` must be set)."""
        assert self.lease is not None
        namespace, name = self.lease
        return LeaseConfig(namespace, name, identity, self.lease_duration, self.renew_deadline, self.retry_period)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ
        lease = None
        if env.get(LEASE_ENV):
            namespace, _, name = env[LEASE_ENV].partition("/")
            if not namespace or not name:
                raise ValueError(f"{LEASE_ENV} must be <namespace>/<name>, not {env[LEASE_ENV]!r}")
            lease = (namespace, name)
        defaults = cls()
        return cls(
            lease=lease,
            lease_duration=env_seconds(env, "WORKERPOOL_OPERATOR_LEASE_DURATION", defaults.lease_duration),
            renew_deadline=env_seconds(env, "WORKERPOOL_OPERATOR_RENEW_DEADLINE", defaults.renew_deadline),
            retry_period=env_seconds(env, "WORKERPOOL_OPERATOR_RETRY_PERIOD", defaults.retry_period),
            status_refresh=env_seconds(env, "WORKERPOOL_OPERATOR_STATUS_REFRESH", defaults.status_refresh),
            retry_delay=env_seconds(env, "WORKERPOOL_OPERATOR_RETRY_DELAY", defaults.retry_delay),
            secret_recheck=env_seconds(env, "WORKERPOOL_OPERATOR_SECRET_RECHECK", defaults.secret_recheck),
        )
