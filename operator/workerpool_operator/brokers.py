"""Broker connection settings and Celery's Redis key names. Pure: no connections here.

(Contract in docs/architecture.md; URL parsing lands with the observation issue.)
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
DEFAULT_SEPARATOR = "\x06\x16"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything needed to reach one broker and name its keys. Hashable: one connection pool per value."""

    url: str  # redis://, rediss:// or sentinel:// (Celery's form, ';'-separated for several sentinels)
    ca_pem: str | None = None  # CA bundle for rediss:// (from a Secret)
    sentinel_master: str | None = None  # master name for sentinel:// (Celery's `master_name`)
    global_keyprefix: str = ""
    priority_steps: tuple[int, ...] = DEFAULT_PRIORITY_STEPS
    separator: str = DEFAULT_SEPARATOR
    socket_timeout: float = 2.0
