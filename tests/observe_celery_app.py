"""A Celery app for the observer's tests with real workers (``celery -A tests.observe_celery_app worker``).

- ``observe.hold`` blocks until the test releases it: each item pushed to ``observe:release`` lets one
  running task finish, so the test decides how many tasks are done.
- Worker reports are written from Celery's signals through :mod:`workerpool_operator.reports`, the format
  the worker entrypoint publishes: a stand-in so these tests do not depend on the entrypoint.

Configured by the environment: ``OBSERVE_BROKER_URL``, ``OBSERVE_QUEUE``, ``OBSERVE_WORKER`` (report
field), ``OBSERVE_ACKS_LATE`` (``1`` or ``0``), ``OBSERVE_CONCURRENCY``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis
from celery import Celery
from celery.signals import task_postrun, task_prerun, task_received, worker_ready

from workerpool_operator import reports
from workerpool_operator.observation import WorkerLoad

BROKER_URL = os.environ["OBSERVE_BROKER_URL"]
QUEUE = os.environ.get("OBSERVE_QUEUE", "work")
WORKER = os.environ.get("OBSERVE_WORKER", "worker-1")
CONCURRENCY = int(os.environ.get("OBSERVE_CONCURRENCY", "2"))
RELEASE_KEY = "observe:release"
HEARTBEAT_INTERVAL = 1.0

app = Celery("observe_celery_app", broker=BROKER_URL)
app.conf.task_acks_late = os.environ.get("OBSERVE_ACKS_LATE") == "1"
app.conf.broker_connection_retry_on_startup = True
app.conf.task_default_queue = QUEUE

_client = redis.Redis.from_url(BROKER_URL)
_lock = threading.Lock()
_counts = {"running": 0, "reserved": 0, "done": 0}


@app.task(name="observe.hold")
def hold() -> None:
    while _client.blpop([RELEASE_KEY], timeout=1) is None:
        pass


def _publish() -> None:
    with _lock:
        running, reserved, done = _counts["running"], _counts["reserved"], _counts["done"]
        load = WorkerLoad(WORKER, running, reserved, done, heartbeat=time.time(), concurrency=CONCURRENCY)
    key = reports.report_key(QUEUE)
    with _client.pipeline(transaction=False) as pipe:
        pipe.hset(key, WORKER, reports.encode_report(load))
        pipe.expire(key, int(reports.DEFAULT_TTL))
        pipe.execute()


def _change(**deltas: int) -> None:
    with _lock:
        for name, delta in deltas.items():
            _counts[name] += delta
    _publish()


@task_received.connect
def _received(**_: Any) -> None:
    _change(reserved=1)


@task_prerun.connect
def _started(**_: Any) -> None:
    _change(reserved=-1, running=1)


@task_postrun.connect
def _finished(**_: Any) -> None:
    _change(running=-1, done=1)


@worker_ready.connect
def _start_heartbeat(**_: Any) -> None:
    def beat() -> None:
        while True:
            _publish()
            time.sleep(HEARTBEAT_INTERVAL)

    threading.Thread(target=beat, name="report-heartbeat", daemon=True).start()
