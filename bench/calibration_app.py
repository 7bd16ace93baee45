"""The calibration's Celery app: the demo's tasks, behind a pod-like start-up delay.

A worker on this machine is ready 2 to 3 s after it is started; a pod takes 10 s or more (scheduling, the image,
the container). So that the calibration replays the start-ups the simulator is used for, each worker process
sleeps at import for a delay drawn from ``CALIBRATION_STARTUP`` (``uniform:LOW,HIGH`` seconds, or one number),
which the bench sets in its own environment and the local runtime passes on to its workers.
"""

from __future__ import annotations

import os
import random
import time

from workerpool_operator.local.demo_app import app

__all__ = ["app"]

APP = "bench.calibration_app:app"
STARTUP_VARIABLE = "CALIBRATION_STARTUP"


def startup_delay(spec: str, rng: random.Random) -> float:
    """Seconds for ``uniform:LOW,HIGH`` or a plain number; 0 for an empty spec."""
    if not spec:
        return 0.0
    kind, _, values = spec.partition(":")
    if kind == "uniform":
        low, high = (float(v) for v in values.split(","))
        return rng.uniform(low, high)
    return float(spec)


time.sleep(startup_delay(os.environ.get(STARTUP_VARIABLE, ""), random.Random()))
