"""A Celery app for the worker tests: tasks record what happened into the broker's Redis.

The worker entrypoint sets the broker (``WORKERPOOL_BROKER_URL``); the tasks write to the same Redis,
in keys under ``test:``. Transport options come from the environment so a test can shorten the
visibility timeout or set a global key prefix for the worker it starts.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

app = Celery("recorder")
app.conf.broker_url = "redis://127.0.0.1:1/0"  # never used as is: the tests always pass the real URL
_options: dict[str, Any] = {}
if os.environ.get("TEST_VISIBILITY_TIMEOUT"):
    _options |= {
        "visibility_timeout": float(os.environ["TEST_VISIBILITY_TIMEOUT"]),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
if os.environ.get("TEST_VISIBILITY_TIMEOUT_ONLY"):  # kombu's restore sweep as the entrypoint sets it
    _options["visibility_timeout"] = float(os.environ["TEST_VISIBILITY_TIMEOUT_ONLY"])
if os.environ.get("TEST_GLOBAL_KEYPREFIX"):
    _options["global_keyprefix"] = os.environ["TEST_GLOBAL_KEYPREFIX"]
app.conf.broker_transport_options = _options
if os.environ.get("TEST_ACKS_LATE"):  # a running task holds its prefetch slot: a worker takes no more than it runs
    app.conf.task_acks_late = True

_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    """One client (with its connection pool) per process, shared by its threads or greenlets."""
    client = _clients.get(os.getpid())
    if client is None:
        tls = app.conf.broker_use_ssl  # set by the entrypoint for a rediss:// broker with a CA file
        options: dict[str, Any] = tls if isinstance(tls, dict) else {}
        client = _clients[os.getpid()] = redis.Redis.from_url(app.conf.broker_url, decode_responses=True, **options)
    return client


@app.task(name="record", bind=True)
def record(self: Any, tag: str, seconds: float = 0.0) -> None:
    """Sleep ``seconds``; append ``{id, start, end, pid}`` to ``test:runs:<tag>``."""
    client = _redis()
    start = time.time()
    client.rpush(f"test:started:{tag}", self.request.id)
    time.sleep(seconds)
    run = {"id": self.request.id, "start": start, "end": time.time(), "pid": os.getpid()}
    client.rpush(f"test:runs:{tag}", json.dumps(run))


@app.task(name="crash_once", acks_late=True)
def crash_once(tag: str, seconds: float) -> None:
    """acks_late: the first delivery hangs ``seconds`` (the test kills the worker); later ones finish."""
    client = _redis()
    attempt = client.incr(f"test:attempts:{tag}")
    client.rpush(f"test:started:{tag}", attempt)
    if attempt == 1:
        time.sleep(seconds)
    client.rpush(f"test:runs:{tag}", json.dumps({"attempt": attempt, "end": time.time()}))


@app.task(name="count")
def count() -> None:
    """The trivial task of the benchmark: one INCR."""
    _redis().incr("test:count")
