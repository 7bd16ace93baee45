"""Worker processes as the scaling loop's backend: each replica is one ``workerpool-worker`` process.

The local counterpart of the Kubernetes Deployments: a replica is a process started through the same entrypoint
as the worker image, named ``<pool>-<queue>-<n>`` (the name its reports carry). Scaling down works like a
ReplicaSet with pod-deletion-cost: workers that are not ready yet go first, then the workers the engine names
(the idlest), then the newest. A removed worker gets SIGTERM and finishes its tasks (Celery's warm shutdown); it
no longer counts as a replica, and gets SIGKILL (its whole process group) only after the grace period, as a pod
would after ``terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from workerpool_operator.scaling_types import PoolKey

logger = logging.getLogger(__name__)

WORKER_MODULE = "workerpool_operator.worker.main"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How the workers of one queue run: the environment and arguments the Deployment's container gets."""

    queue: str
    env: Mapping[str, str]  # WORKERPOOL_* settings and the template's plain env values
    args: tuple[str, ...] = ()  # after `--`: more `celery worker` arguments (template.extraArgs)

    def environment(self, broker_url: str, name: str, state_dir: Path) -> dict[str, str]:
        """What one replica gets: the pod's settings, with its name, the local broker and its own state dir."""
        return {
            **self.env,
            "WORKERPOOL_WORKER_NAME": name,
            "WORKERPOOL_BROKER_URL": broker_url,
            "WORKERPOOL_STATE_DIR": str(state_dir),
        }


def inherited_environment() -> dict[str, str]:
    """This process's environment without worker settings, so a worker runs on the YAML's settings alone."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_") and k != "REMAP_SIGTERM"}


@dataclass(eq=False)
class LocalWorker:
    """One worker process."""

    name: str
    pool: PoolKey
    queue: str
    process: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path
    started_at: float
    terminating_since: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def terminating(self) -> bool:
        return self.terminating_since is not None

    @property
    def ready(self) -> bool:
        return (self.state_dir / "ready").exists()


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """A worker process that ended; ``expected`` when it was asked to stop."""

    name: str
    pool: PoolKey
    queue: str
    returncode: int
    expected: bool
    was_ready: bool
    lifetime: float
    last_log_line: str


def last_log_line(path: Path) -> str:
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 4096))
            lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class LocalProcessBackend:
    """Implements the scaling loop's ``WorkloadBackend`` with local worker processes."""

    def __init__(
        self,
        broker_url: str,
        workdir: Path,
        *,
        grace: float = 30.0,
        python: str = sys.executable,
        cwd: Path | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.workdir = workdir
        self.grace = grace
        self._python = python
        self._cwd = cwd
        self._settings: dict[tuple[PoolKey, str], WorkerSettings] = {}
        self._workers: list[LocalWorker] = []
        self._exits: list[WorkerExit] = []
        self._ready: set[str] = set()

    # --- configuration -------------------------------------------------------------------------------

    def configure(self, pool: PoolKey, settings: WorkerSettings) -> None:
        """Declare a queue (what ``current_replicas`` then reports as existing)."""
        self._settings[(pool, settings.queue)] = settings

    # --- WorkloadBackend -----------------------------------------------------------------------------

    async def current_replicas(self, pool: PoolKey, queue: str) -> int | None:
        self.reap()
        if (pool, queue) not in self._settings:
            return None
        return len(self.workers(pool, queue))

    async def scale(self, pool: PoolKey, queue: str, replicas: int, remove_first: Sequence[str]) -> None:
        settings = self._settings.get((pool, queue))
        if settings is None:
            raise LookupError(f"queue {queue!r} of pool {pool[1]!r} is not configured")
        self.reap()
        live = self.workers(pool, queue)
        if replicas > len(live):
            for _ in range(replicas - len(live)):
                self._start(pool, settings)
        elif replicas < len(live):
            for worker in self._removal_order(live, remove_first)[: len(live) - replicas]:
                self.terminate(worker)

    # --- processes -----------------------------------------------------------------------------------

    def workers(self, pool: PoolKey, queue: str, *, terminating: bool = False) -> list[LocalWorker]:
        """The queue's replicas (or, with ``terminating``, the workers finishing after a scale-down)."""
        return [w for w in self._workers if w.pool == pool and w.queue == queue and w.terminating == terminating]

    def all_workers(self) -> list[LocalWorker]:
        return list(self._workers)

    def _removal_order(self, live: list[LocalWorker], remove_first: Sequence[str]) -> list[LocalWorker]:
        rank = {name: i for i, name in enumerate(remove_first)}
        newest_first = sorted(live, key=lambda w: w.started_at, reverse=True)
        return sorted(newest_first, key=lambda w: (w.ready, rank.get(w.name, len(rank))))

    def _next_name(self, pool: PoolKey, queue: str) -> str:
        taken = {w.name for w in self._workers}
        n = 1
        while f"{pool[1]}-{queue}-{n}" in taken:
            n += 1
        return f"{pool[1]}-{queue}-{n}"

    def _start(self, pool: PoolKey, settings: WorkerSettings) -> LocalWorker:
        name = self._next_name(pool, settings.queue)
        state_dir = self.workdir / "workers" / name
        state_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("ready", "heartbeat"):
            (state_dir / stale).unlink(missing_ok=True)
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**inherited_environment(), "PYTHONUNBUFFERED": "1"}
        env.update(settings.environment(self.broker_url, name, state_dir))
        log: IO[bytes]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [self._python, "-m", WORKER_MODULE, *(["--", *settings.args] if settings.args else [])],
                env=env,
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C reaches only the runtime, which stops it
            )
        worker = LocalWorker(
            name=name,
            pool=pool,
            queue=settings.queue,
            process=process,
            state_dir=state_dir,
            log_path=log_path,
            started_at=time.monotonic(),
        )
        self._workers.append(worker)
        logger.info("started worker %s (pid %d)", name, process.pid)
        return worker

    def terminate(self, worker: LocalWorker) -> None:
        """SIGTERM: Celery's warm shutdown. The worker stops counting as a replica at once."""
        if worker.terminating:
            return
        worker.terminating_since = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        logger.info("stopping worker %s (pid %d)", worker.name, worker.pid)

    def reap(self) -> list[WorkerExit]:
        """Forget workers that exited; SIGKILL the ones past their grace period. Returns the new exits."""
        now = time.monotonic()
        exits: list[WorkerExit] = []
        for worker in list(self._workers):
            if worker.ready:
                self._ready.add(worker.name)
            code = worker.process.poll()
            if code is None:
                if worker.terminating_since is not None and now - worker.terminating_since > self.grace:
                    logger.warning("worker %s did not stop within %gs: killing it", worker.name, self.grace)
                    _signal_group(worker.pid, signal.SIGKILL)
                continue
            _signal_group(worker.pid, signal.SIGKILL)  # whatever it left in its process group
            self._workers.remove(worker)
            exits.append(
                WorkerExit(
                    name=worker.name,
                    pool=worker.pool,
                    queue=worker.queue,
                    returncode=code,
                    expected=worker.terminating,
                    was_ready=worker.name in self._ready,
                    lifetime=now - worker.started_at,
                    last_log_line=last_log_line(worker.log_path),
                )
            )
            self._ready.discard(worker.name)
        self._exits.extend(exits)
        return exits

    def take_exits(self) -> list[WorkerExit]:
        """Every exit seen since the last call."""
        self.reap()
        exits, self._exits = self._exits, []
        return exits

    async def shutdown(self, grace: float | None = None, poll: float = 0.1) -> list[WorkerExit]:
        """SIGTERM every worker, wait for their warm shutdown (bounded by ``grace``), kill what is left."""
        grace = self.grace if grace is None else grace
        for worker in self._workers:
            self.terminate(worker)
        deadline = time.monotonic() + grace
        while self._workers and time.monotonic() < deadline:
            self.reap()
            if self._workers:
                await asyncio.sleep(poll)
        self.kill_all()
        return self.take_exits()

    def kill_all(self) -> None:
        """SIGKILL every worker's process group and wait for them (last resort; also used on errors)."""
        for worker in self._workers:
            _signal_group(worker.pid, signal.SIGKILL)
        for worker in self._workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(5)
        self.reap()
