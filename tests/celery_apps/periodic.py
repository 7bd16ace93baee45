"""A Celery app with a beat schedule, for the beat tests: every periodic run records itself in the broker's Redis.

``tick`` is sent every ``TEST_TICK_SECONDS`` (default 2) to the queue ``periodic``; ``report`` every hour on the
hour to ``reports`` (an entry's own queue); ``routed`` every minute to ``routed`` (through ``task_routes``);
``plain`` every 10 minutes to the default queue.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery
from celery.schedules import crontab

app = Celery("periodic")
app.conf.broker_url = "redis://127.0.0.1:1/0"  # never used as is: the tests always pass the real URL
if os.environ.get("TEST_GLOBAL_KEYPREFIX"):
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["TEST_GLOBAL_KEYPREFIX"]}
app.conf.task_routes = {"routed": {"queue": "routed"}}
app.conf.beat_schedule = {
    "tick": {
        "task": "tick",
        "schedule": float(os.environ.get("TEST_TICK_SECONDS", "2")),
        "options": {"queue": "periodic"},
    },
    "report": {"task": "report", "schedule": crontab(minute=0), "options": {"queue": "reports"}},
    "routed": {"task": "routed", "schedule": 60.0},
    "plain": {"task": "plain", "schedule": 600.0},
}

_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = redis.Redis.from_url(app.conf.broker_url, decode_responses=True)
    return client


@app.task(name="tick", bind=True)
def tick(self: Any) -> None:
    """Append ``{id, at}`` to ``test:ticks``: when each periodic run ran, and which message it was."""
    _redis().rpush("test:ticks", json.dumps({"id": self.request.id, "at": time.time()}))


@app.task(name="report")
def report() -> None:
    _redis().incr("test:reports")


@app.task(name="routed")
def routed() -> None:
    _redis().incr("test:routed")


@app.task(name="plain")
def plain() -> None:
    _redis().incr("test:plain")
