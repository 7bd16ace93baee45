"""KEDA's ``redis`` (list) triggers of a ScaledObject, read and checked for ``from-keda``. Pure.

A ScaledObject may hold several triggers. The WorkerPool takes the ``redis`` ones on one broker (one pool has one
broker): each one's ``listName`` becomes a Celery queue of the group, its ``listLength`` and
``activationListLength`` the target and the activation. Triggers of other types, on another broker, or whose
list is not a queue name a WorkerPool accepts are listed with the reason (keda_import.py prints them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workerpool_operator.deployment_import import ConversionError, Skipped
from workerpool_operator.spec import MAX_CELERY_QUEUES, QUEUE_NAME_PATTERN, RESERVED_QUEUE_NAMES

__all__ = ["CONNECTION_KEYS", "RedisTrigger", "redis_triggers", "valid_queue"]

REDIS_TRIGGER = "redis"
DEFAULT_LIST_LENGTH = 5  # the Redis Lists scaler's default
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


def redis_triggers(spec: Mapping[str, Any], skipped: list[Skipped]) -> list[RedisTrigger]:
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
    if not valid_queue(list_name):
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


def valid_queue(name: str) -> bool:
    return (
        len(name) <= MAX_QUEUE_NAME and bool(re.search(QUEUE_NAME_PATTERN, name)) and name not in RESERVED_QUEUE_NAMES
    )
