"""An example Celery app for the worker image. The broker URL comes from the environment.

In a WorkerPool, the operator passes the broker as WORKERPOOL_BROKER_URL, which overrides broker_url.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("myapp", broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))
app.conf.task_acks_late = True  # a task cut short by a hard kill runs again elsewhere
app.conf.worker_prefetch_multiplier = 1


@app.task
def add(x: int, y: int) -> int:
    return x + y
