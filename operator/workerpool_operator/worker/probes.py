"""Readiness and liveness as files, so a Kubernetes probe is a file stat instead of `celery inspect ping`.

* ``<state dir>/ready`` exists while the worker consumes (created on ``worker_ready``, removed when
  shutdown starts and at start-up, since an emptyDir outlives a container restart), or while beat runs its
  schedule (it holds the beat lock);
* ``<state dir>/heartbeat`` has its mtime refreshed every report interval while the worker runs, and on every
  pass of beat over its schedule (also while it waits for the lock).

``workerpool-worker check ready|alive`` reads them. This module imports no Celery and no Redis, so
the probe command starts in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

READY_FILE = "ready"
HEARTBEAT_FILE = "heartbeat"


class ProbeFiles:
    """The two probe files of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.ready = state_dir / READY_FILE
        self.heartbeat = state_dir / HEARTBEAT_FILE

    def reset(self) -> None:
        """Start clean: make the directory, forget what a previous container left behind."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ready.unlink(missing_ok=True)
        self.heartbeat.unlink(missing_ok=True)

    def beat(self) -> None:
        _touch(self.heartbeat)

    def mark_ready(self) -> None:
        _touch(self.ready)

    def mark_not_ready(self) -> None:
        self.ready.unlink(missing_ok=True)

    def clear(self) -> None:
        self.ready.unlink(missing_ok=True)
        self.heartbeat.unlink(missing_ok=True)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:
        path.touch()


def heartbeat_age(files: ProbeFiles, now: float | None = None) -> float | None:
    """Seconds since the last heartbeat, ``None`` when there is none."""
    try:
        mtime = files.heartbeat.stat().st_mtime
    except OSError:
        return None
    return max(0.0, (time.time() if now is None else now) - mtime)


def check(kind: str, files: ProbeFiles, max_age: float, now: float | None = None) -> tuple[bool, str]:
    """``(ok, one line of explanation)`` for ``kind`` ``alive`` or ``ready``.

    Alive: the heartbeat is at most ``max_age`` seconds old. Ready: alive, and the worker consumes.
    """
    age = heartbeat_age(files, now)
    if age is None:
        return False, f"not alive: no heartbeat file {files.heartbeat}"
    if age > max_age:
        return False, f"not alive: last heartbeat {age:.1f} s ago (max {max_age:g} s)"
    if kind == "alive":
        return True, f"alive: last heartbeat {age:.1f} s ago"
    if not files.ready.exists():
        return False, "not ready: not serving (starting, waiting for the beat lock, or shutting down)"
    return True, f"ready: consuming, last heartbeat {age:.1f} s ago"
