"""The demo's Celery app: CPU-bound tasks for a prefork queue, I/O-bound tasks for a gevent queue.

Every task records its own completion in Redis (the broker's database), so the demo and the tests count
exactly-once completion and the time each task waited, from what the tasks themselves wrote:

- ``demo:completions``: HASH task id -> times the task completed (exactly once means every value is 1)
- ``demo:waits:<queue>``: LIST of seconds each task waited between being sent and starting

The worker processes import this module through the worker entrypoint (``-A`` gets ``APP``).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import redis
from celery import Celery

APP = "workerpool_operator.local.demo_app:app"
CPU_TASK = "demo.crunch"
IO_TASK = "demo.fetch"
COMPLETIONS_KEY = "demo:completions"
WAITS_KEY = "demo:waits:{queue}"

app = Celery("demo")
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)

_clients: dict[int, redis.Redis] = {}  # one client per process: prefork children must not share sockets


def _client() -> redis.Redis:
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        url = str(app.conf.broker_url or os.environ.get("WORKERPOOL_BROKER_URL") or "redis://127.0.0.1:6379/0")
        client = _clients[pid] = redis.Redis.from_url(url)
    return client


def _record(request: Any, sent_at: float, started_at: float) -> None:
    queue = (request.delivery_info or {}).get("routing_key") or "unknown"
    pipe = _client().pipeline(transaction=True)
    pipe.hincrby(COMPLETIONS_KEY, request.id or "?", 1)
    pipe.rpush(WAITS_KEY.format(queue=queue), f"{max(0.0, started_at - sent_at):.3f}")
    pipe.execute()


@app.task(name=CPU_TASK, bind=True)
def crunch(self: Any, rounds: int, sent_at: float) -> str:
    """CPU-bound: ``rounds`` chained SHA-256 hashes."""
    started_at = time.time()
    digest = b"workerpool"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    _record(self.request, sent_at, started_at)
    return digest.hex()[:12]


@app.task(name=IO_TASK, bind=True)
def fetch(self: Any, seconds: float, sent_at: float) -> float:
    """I/O-bound: waits ``seconds`` (a cooperative sleep under gevent), like a slow HTTP call."""
    started_at = time.time()
    time.sleep(seconds)
    _record(self.request, sent_at, started_at)
    return seconds
