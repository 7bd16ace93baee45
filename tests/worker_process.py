"""Start real workers through the ``workerpool-worker`` entrypoint, and send them tasks (test helpers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from tests.conftest import REPO

APP = "tests.celery_apps.recorder:app"
FAST_START = ("--", "--without-mingle", "--without-gossip")


def entrypoint_env(broker_url: str, state_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKERPOOL_", "TEST_", "REMAP_SIGTERM"))}
    env |= {
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "C_FORCE_ROOT": "1",  # tests may run as root; the image runs as a numeric non-root user
        "WORKERPOOL_APP": APP,
        "WORKERPOOL_BROKER_URL": broker_url,
        "WORKERPOOL_STATE_DIR": str(state_dir),
        "WORKERPOOL_LOGLEVEL": "info",
    }
    return env | dict(extra or {})


@dataclass
class WorkerProcess:
    """One ``python -m workerpool_operator.worker.main`` process in a session of its own."""

    env: dict[str, str]
    args: tuple[str, ...] = FAST_START
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> WorkerProcess:
        assert self.log is not None
        self._log_handle = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workerpool_operator.worker.main", *self.args],
            env=self.env,
            cwd=REPO,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def state_dir(self) -> Path:
        return Path(self.env["WORKERPOOL_STATE_DIR"])

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(
            lambda: (self.state_dir / "ready").exists(),
            timeout,
            lambda: f"worker not ready; exit={self.process and self.process.poll()}\n{self.output()[-3000:]}",
        )

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def kill_all(self) -> None:
        """SIGKILL the worker and every process it started (a pod killed hard)."""
        assert self.process is not None
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"worker did not exit in {timeout} s\n{self.output()[-3000:]}") from None

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill_all()
        if hasattr(self, "_log_handle"):
            self._log_handle.close()


@contextmanager
def running_worker(
    broker_url: str,
    tmp_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    name: str = "w1",
    args: tuple[str, ...] = FAST_START,
) -> Iterator[WorkerProcess]:
    """A worker with ``env`` (lower-case keys allowed) on top of :func:`entrypoint_env`; killed on exit."""
    state = tmp_path / f"state-{name}"
    extra = {"WORKERPOOL_WORKER_NAME": name} | {k.upper(): v for k, v in (env or {}).items()}
    worker = WorkerProcess(entrypoint_env(broker_url, state, extra), args=args, log=tmp_path / f"{name}.log")
    worker.start()
    try:
        yield worker
    finally:
        worker.close()


def wait_for(condition: Callable[[], Any], timeout: float, explain: Callable[[], str] | str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(explain() if callable(explain) else explain or "condition not met in time")
        time.sleep(0.05)


def producer(
    broker_url: str, transport_options: Mapping[str, Any] | None = None, use_ssl: Mapping[str, Any] | None = None
) -> Celery:
    """A separate Celery app that only sends tasks by name, as a real producer would."""
    app = Celery("producer", broker=broker_url, set_as_current=False)
    app.conf.broker_transport_options = dict(transport_options or {})
    if use_ssl is not None:
        app.conf.broker_use_ssl = dict(use_ssl)
    return app


def runs(client: Any, tag: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(f"test:runs:{tag}", 0, -1)]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals running at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best
