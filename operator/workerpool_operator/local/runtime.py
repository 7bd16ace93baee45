"""``workerpool-operator local``: one WorkerPool on this machine, scaled by the operator's own loop.

The wiring: parse the YAML with the operator's spec model, start (or take) a Redis, run the operator's
observer, engine and :class:`ScalingLoop` over a :class:`LocalProcessBackend`, and show what happens. On
Ctrl-C or SIGTERM: stop scaling, SIGTERM every worker, wait (bounded) for their warm shutdown, kill what is
left, stop the embedded Redis. Every failure the user can fix is a :class:`LocalError`: one line, and the
command's exit code (workerpool_operator.exit_codes: 2 for a bad file, 3 without redis-server, 1 for workers
that cannot start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from workerpool_operator import exit_codes
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.local.backend import LocalProcessBackend, WorkerExit, WorkerSettings, inherited_environment
from workerpool_operator.local.components import ComponentSettings, LocalComponents, local_env, plan_components
from workerpool_operator.local.embedded_redis import EmbeddedRedis, RedisUnavailable
from workerpool_operator.local.view import Dashboard, QueueInfo, View, make_view
from workerpool_operator.scaling_loop import ScalingLoop
from workerpool_operator.scaling_types import PoolKey, PoolResult, QueuePlan
from workerpool_operator.spec import SpecError, WorkerPool
from workerpool_operator.worker_env import worker_args, worker_environment

logger = logging.getLogger(__name__)

LOCAL_NAMESPACE = "local"
START_FAILURES = 3  # workers of one queue failing before they are ready, in a row, before the runtime gives up


class LocalError(Exception):
    """Something the user can fix; ``str()`` is the one line printed, ``code`` the exit code."""

    def __init__(self, message: str, code: int = exit_codes.FAILED) -> None:
        super().__init__(message)
        self.code = code


# --- the WorkerPool file ------------------------------------------------------------------------------------


def load_pool(path: Path) -> WorkerPool:
    """Read and validate one WorkerPool from a YAML file (the first WorkerPool document in it)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise LocalError(f"cannot read {path}: {error.strerror or error}", exit_codes.BAD_INPUT) from None
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise LocalError(f"{path} is not valid YAML{where}: {problem}", exit_codes.BAD_INPUT) from None
    pools = [doc for doc in documents if isinstance(doc, Mapping) and doc.get("kind") == "WorkerPool"]
    if not pools:
        raise LocalError(f"{path} holds no WorkerPool (a document with `kind: WorkerPool`)", exit_codes.BAD_INPUT)
    try:
        return WorkerPool.from_object(pools[0])
    except SpecError as error:
        problems = str(error).splitlines()
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise LocalError(f"{path}: invalid WorkerPool: {problems[0]}{more}", exit_codes.BAD_INPUT) from None


@dataclass(frozen=True, slots=True)
class LocalPool:
    """Everything the local runtime needs about one WorkerPool, resolved against a broker URL."""

    key: PoolKey
    broker: BrokerConfig
    plans: dict[str, QueuePlan]
    workers: dict[str, WorkerSettings]
    queues: list[QueueInfo]
    grace: float
    unset_env: tuple[str, ...] = ()  # template env taken from Secrets or fields: not set locally
    components: tuple[ComponentSettings, ...] = ()  # beat and Flower, never scaled
    flower_missing: bool = False  # spec.flower, but Flower is not installed here
    beat_app: str | None = None  # spec.app when beat runs here (its forecast is read with the queues)


def plan_pool(pool: WorkerPool, broker_url: str, loglevel: str | None = None) -> LocalPool:
    """Map the spec onto the local runtime: the operator's policy per queue, and each worker's settings from
    the same environment and arguments a pod gets (so a local worker runs exactly as a pod would)."""
    spec = pool.spec
    try:
        broker = spec.broker.to_config(broker_url)
    except SpecError as error:
        raise LocalError(f"the broker URL cannot be used with this WorkerPool: {error}", exit_codes.BAD_INPUT) from None
    plans: dict[str, QueuePlan] = {}
    workers: dict[str, WorkerSettings] = {}
    infos: list[QueueInfo] = []
    skipped: set[str] = set()
    for queue in spec.queues:
        plans[queue.name] = spec.plan_for(queue.name)
        env = local_env(worker_environment(pool, queue), skipped)
        # Celery's soft shutdown sleeps its whole timeout whenever a task is running at SIGTERM, so every
        # stop of a busy worker would take the grace period: locally, a plain warm shutdown (running tasks
        # finish, prefetched ones go back to the queue), bounded by the grace period as a pod's is.
        env["WORKERPOOL_SOFT_SHUTDOWN_TIMEOUT"] = "0"
        if loglevel:
            env["WORKERPOOL_LOGLEVEL"] = loglevel
        args = tuple(worker_args(pool))
        workers[queue.name] = WorkerSettings(queue=queue.name, env=env, args=args[1:] if args[:1] == ("--",) else args)
        infos.append(
            QueueInfo(
                queue=queue.name,
                pool=str(queue.pool.value),
                concurrency=queue.concurrency,
                min_replicas=queue.min_replicas,
                max_replicas=queue.max_replicas,
            )
        )
    components = tuple(plan_components(pool, skipped, loglevel))
    return LocalPool(
        key=(LOCAL_NAMESPACE, pool.name),
        broker=broker,
        plans=plans,
        workers=workers,
        queues=infos,
        grace=float(spec.grace_seconds),
        unset_env=tuple(sorted(skipped)),
        components=components,
        flower_missing=spec.flower is not None and not any(c.name == "flower" for c in components),
        beat_app=spec.app if any(c.name == "beat" for c in components) else None,
    )


@contextlib.contextmanager
def redis_for(url: str | None) -> Iterator[tuple[str, str]]:
    """``(url, description)`` of the Redis to use: the given one, or an embedded one for the duration."""
    if url:
        yield url, "your Redis"
        return
    try:
        embedded = EmbeddedRedis().start()
    except RedisUnavailable as error:
        raise LocalError(str(error), exit_codes.UNAVAILABLE) from None
    try:
        yield embedded.url, "embedded redis-server"
    finally:
        embedded.stop()


# --- the runtime --------------------------------------------------------------------------------------------


class LocalRuntime:
    """The pool running: workers, observer, loop and view. Use ``async with``, then :meth:`run`."""

    def __init__(
        self,
        pool: LocalPool,
        broker_url: str,
        *,
        title: str,
        live: bool | None = None,
        out: TextIO | None = None,
        grace: float | None = None,
        workdir: Path | None = None,
        on_result: Callable[[PoolResult], Awaitable[None]] | None = None,
    ) -> None:
        from workerpool_operator.observe import DrainWriter, Observer

        self.pool = pool
        self.grace = pool.grace if grace is None else grace
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"workerpool-{pool.key[1]}-"))
        self.backend = LocalProcessBackend(broker_url, self.workdir, grace=self.grace)
        for settings in pool.workers.values():
            self.backend.configure(pool.key, settings)
        self.components = LocalComponents(broker_url, self.workdir)
        self.observer = Observer()
        self.loop = ScalingLoop(self.backend, self._report, self.observer, DrainWriter(self.observer.connections))
        self.observer.enable_wakeups(self.loop.wake)
        self.dashboard = Dashboard(title, pool.queues)
        self.dashboard.notes = [
            f"broker {pool.broker.redacted_url} · worker logs in {self.workdir / 'logs'}",
            "Ctrl-C stops: workers finish their tasks first (press it again to kill them at once)",
        ]
        if pool.unset_env:
            self.dashboard.notes.append(
                f"not set locally (from Secrets or fields in a cluster): {', '.join(pool.unset_env)}"
            )
        for component in pool.components:
            where = f" at {component.url} (no sign-in locally)" if component.url else ""
            self.dashboard.notes.append(f"{component.name} runs beside the workers{where}")
        shadow = [queue for queue, plan in pool.plans.items() if plan.shadow]
        if shadow:
            self.dashboard.notes.append(
                f"scaling.mode Shadow for {', '.join(shadow)}: decided and shown (desired), never scaled"
            )
        if pool.flower_missing:
            self.dashboard.notes.append("spec.flower: Flower is not installed here (pip install flower), not started")
        self._live = live
        self._out = out
        self.view: View | None = None
        self.failure: str | None = None  # set when the runtime had to give up (workers cannot start)
        self._start_failures: dict[str, int] = {}
        self._on_result = on_result
        self._stop: asyncio.Event | None = None

    async def __aenter__(self) -> LocalRuntime:
        self.view = make_view(self.dashboard, live=self._live, out=self._out)
        for component in self.pool.components:
            self.components.start(component, inherited_environment())
        self.loop.register(self.pool.key, self.pool.broker, self.pool.plans, beat_app=self.pool.beat_app)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    async def _report(self, result: PoolResult) -> None:
        events = self.dashboard.update(result, self._replicas)
        events += self._worker_exits()
        events += [self.dashboard.event(line) for line in self.components.exited()]
        if self.view is not None:
            self.view.show(events)
        if self._on_result is not None:
            await self._on_result(result)

    def _replicas(self, queue: str) -> tuple[int, int]:
        key = self.pool.key
        return len(self.backend.workers(key, queue)), len(self.backend.workers(key, queue, terminating=True))

    def _worker_exits(self) -> list[tuple[float, str]]:
        events = []
        for exit_ in self.backend.take_exits():
            if exit_.expected and exit_.returncode == 0:
                continue
            events.append(self.dashboard.event(_describe_exit(exit_)))
            if exit_.expected:
                continue
            if exit_.was_ready:
                self._start_failures[exit_.queue] = 0
                continue
            failures = self._start_failures.get(exit_.queue, 0) + 1
            self._start_failures[exit_.queue] = failures
            if failures >= START_FAILURES and self.failure is None:
                line = exit_.last_log_line or f"exit code {exit_.returncode}"
                self.failure = f"workers of queue {exit_.queue!r} cannot start: {line} (log: {self.workdir / 'logs'})"
                if self._stop is not None:
                    self._stop.set()
        return events

    async def run(self, stop: asyncio.Event) -> None:
        """Scale until ``stop`` is set (or the workers cannot start)."""
        self._stop = stop
        await self.loop.run(stop)

    async def shutdown(self, force: asyncio.Event | None = None) -> None:
        """Stop every worker gracefully (bounded), then everything else. Safe to call twice."""
        workers = self.backend.all_workers()
        if workers and self.view is not None:
            self.view.show(
                [
                    self.dashboard.event(
                        f"stopping {len(workers)} worker(s): they finish their tasks first (up to {self.grace:g}s)"
                    )
                ]
            )
        stopping = asyncio.ensure_future(asyncio.to_thread(self.components.stop, self.grace))
        shutdown = asyncio.ensure_future(self.backend.shutdown(self.grace))
        waiters: list[asyncio.Future[Any]] = [shutdown]
        if force is not None:
            waiters.append(asyncio.ensure_future(force.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters[1:]:
                waiter.cancel()
            if not shutdown.done():
                shutdown.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await shutdown
            self.backend.kill_all()
            await stopping
            await self.observer.aclose()
            # The logs stay where the first screen said they are; the workers' state files go with them.
            if self._own_workdir:
                for child in self.workdir.iterdir() if self.workdir.is_dir() else ():
                    if child.is_dir() and child.name != "logs":
                        shutil.rmtree(child, ignore_errors=True)
                    elif not child.is_dir():
                        child.unlink(missing_ok=True)
            self.dashboard.notes = []
            if self.view is not None:
                for exit_ in self.backend.take_exits():
                    if not (exit_.expected and exit_.returncode == 0):
                        self.dashboard.event(_describe_exit(exit_))
                self.view.show([self.dashboard.event(f"stopped; worker logs kept in {self.workdir / 'logs'}")])
                self.view.close()
                self.view = None


def _describe_exit(exit_: WorkerExit) -> str:
    if exit_.expected and exit_.returncode < 0:
        return f"worker {exit_.name} was killed after the grace period"
    what = f"worker {exit_.name} exited with code {exit_.returncode}"
    return f"{what}: {exit_.last_log_line}" if exit_.last_log_line else what


# --- signals -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, force: asyncio.Event) -> Iterator[None]:
    """First Ctrl-C / SIGTERM sets ``stop``; the next one sets ``force``."""
    loop = asyncio.get_running_loop()

    def handle() -> None:
        if stop.is_set():
            force.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handle)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_local(
    path: Path,
    redis_url: str | None,
    *,
    live: bool | None = None,
    out: TextIO | None = None,
    grace: float | None = None,
    loglevel: str | None = None,
) -> int:
    """The ``local`` command: run the pool until Ctrl-C. Raises :class:`LocalError` for what the user can fix."""
    workerpool = load_pool(path)
    with redis_for(redis_url) as (url, description):
        pool = plan_pool(workerpool, url, loglevel)
        stop, force = asyncio.Event(), asyncio.Event()
        title = f"WorkerPool {workerpool.name} · {len(pool.queues)} queue(s) · {description}"
        with stop_on_signals(stop, force):
            runtime = LocalRuntime(pool, url, title=title, live=live, out=out, grace=grace)
            async with runtime:
                try:
                    await runtime.run(stop)
                finally:
                    await runtime.shutdown(force)
        if runtime.failure:
            raise LocalError(runtime.failure)
    return 0


def main(args: Any) -> int:
    """Entry from the CLI (``args`` from argparse)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(
            run_local(Path(args.file), args.redis, live=args.live, grace=args.grace, loglevel=args.loglevel)
        )
    except LocalError as error:
        import sys

        print(f"workerpool-operator local: {error}", file=sys.stderr)
        return error.code
