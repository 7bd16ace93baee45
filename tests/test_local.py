"""The local runtime end to end: real redis-server, real worker processes, the operator's own loop and engine."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.conftest import REPO, RedisServer
from workerpool_operator import exit_codes
from workerpool_operator.local import demo_app
from workerpool_operator.local.demo import run_demo
from workerpool_operator.local.loadgen import LoadPlan, Phase
from workerpool_operator.local.runtime import LocalRuntime, load_pool, plan_pool
from workerpool_operator.scaling_types import PoolResult

# Small and quick: thread pools (no forking), two slots per worker, short windows.
POOL_YAML = """
apiVersion: workerpool.dev/v1alpha1
kind: WorkerPool
metadata: {name: t}
spec:
  broker: {url: "redis://redis:6379/0"}
  app: workerpool_operator.local.demo_app:app
  template: {image: "worker:test", terminationGracePeriodSeconds: 20}
  queues:
    - {name: keep, pool: threads, concurrency: 2, minReplicas: 1, maxReplicas: 3}
    - {name: idle, pool: threads, concurrency: 2, minReplicas: 0, maxReplicas: 3}
  scaling:
    pollIntervalSeconds: 0.5
    scaleUp: {pods: 4, periodSeconds: 0}
    scaleDownStabilizationSeconds: 2
    idleSecondsBeforeZero: 2
    drainTimeoutSeconds: 0  # the local runtime does not drain workers yet: remove the idlest at once
"""


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    path = tmp_path / "workerpool.yaml"
    path.write_text(POOL_YAML)
    return path


def producer(url: str) -> Celery:
    app = Celery("test-producer", broker=url)
    app.conf.broker_connection_retry_on_startup = False
    return app


def send_sleeps(url: str, queue: str, count: int, seconds: float) -> list[str]:
    app = producer(url)
    with app.producer_or_acquire() as pub:
        ids = [
            app.send_task(demo_app.IO_TASK, args=[seconds, time.time()], queue=queue, producer=pub).id
            for _ in range(count)
        ]
    app.close()
    return ids


def completions(client: redis.Redis) -> dict[str, int]:
    return {str(k): int(v) for k, v in client.hgetall(demo_app.COMPLETIONS_KEY).items()}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (workers live in sessions of their own, but are still children)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {pid for pid in found if alive(pid)}


async def wait_for(predicate, within: float, step: float = 0.1) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within}s")
        await asyncio.sleep(step)


@pytest.fixture(autouse=True)
def temporary_files_in_the_test_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every folder the runtime makes (its worker logs stay after a run, by design) goes under the test's own
    folder, in this process and in the commands it starts: nothing is left in the system's temporary folder."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    yield temporary


# --- end to end, in process -----------------------------------------------------------------------------------


async def test_burst_scales_up_then_back_to_minimum_and_zero_every_task_once(
    redis_server: RedisServer, pool_file: Path
) -> None:
    pool = plan_pool(load_pool(pool_file), redis_server.url)
    client = redis_server.client()
    results: list[PoolResult] = []

    async def record(result: PoolResult) -> None:
        results.append(result)

    runtime = LocalRuntime(pool, redis_server.url, title="test", live=False, out=io.StringIO(), on_result=record)
    stop = asyncio.Event()
    replicas = {q: (lambda q=q: len(runtime.backend.workers(pool.key, q))) for q in ("keep", "idle")}
    async with runtime:
        loop = asyncio.create_task(runtime.run(stop))
        try:
            # At rest: the minimum, and nothing for the queue allowed to sleep.
            await wait_for(lambda: replicas["keep"]() == 1 and len(results) >= 2, within=10)
            assert replicas["idle"]() == 0

            polls_before = len(results)
            sent = {q: send_sleeps(redis_server.url, q, 12, 0.4) for q in ("keep", "idle")}
            # 12 tasks, 2 per worker: 6 wanted, capped at 3; the step limit allows it in one decision.
            await wait_for(lambda: replicas["keep"]() == 3 and replicas["idle"]() == 3, within=10)
            assert len(results) - polls_before <= 4, "not within a few polls"  # counted in polls, not seconds

            ids = sent["keep"] + sent["idle"]
            await wait_for(lambda: len(completions(client)) == len(ids), within=30)
            await wait_for(lambda: replicas["keep"]() == 1 and replicas["idle"]() == 0, within=20)
        finally:
            stop.set()
            await loop
    # Shut down on leaving: every worker gone.
    assert runtime.backend.all_workers() == []

    done = completions(client)
    assert sorted(done) == sorted(ids)
    assert set(done.values()) == {1}, "a task completed more than once"
    events = [message for _, message in runtime.dashboard.all_events]
    assert any(m.startswith("idle: scale up 0 → 3") for m in events), events
    assert any(m.startswith("keep: scale up 1 → 3") for m in events), events
    assert any(re.match(r"idle: scale down \d+ → 0 ", m) for m in events), events
    assert any(re.match(r"keep: scale down \d+ → 1 ", m) for m in events), events
    assert runtime.dashboard.queues["keep"].peak_workers == 3


# --- the command: signals, orphans, errors ----------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "workerpool_operator.cli", *args],
        cwd=REPO,
        env=env or os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def reap() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_sigint_during_load_stops_cleanly_loses_nothing_and_leaves_no_process(
    redis_server: RedisServer, pool_file: Path, reap: list[subprocess.Popen[str]]
) -> None:
    client = redis_server.client()
    ids = send_sleeps(redis_server.url, "idle", 30, 1.0)
    process = cli("local", "-f", str(pool_file), "--redis", redis_server.url, "--no-live", "--grace", "20")
    reap.append(process)

    deadline = time.monotonic() + 20
    while len(completions(client)) < 4:  # workers are up and busy
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the workers never completed a task"
        time.sleep(0.1)
    workers = descendants(process.pid)
    assert len(workers) >= 2  # the `keep` queue's minimum and the busy queue's workers

    os.kill(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopped" in out

    assert not [pid for pid in workers if alive(pid)], "worker processes outlived the runtime"
    done = completions(client)
    assert set(done.values()) == {1}
    waiting = client.llen("idle")
    assert not client.hlen("unacked"), "messages left unacknowledged in Redis"
    assert len(done) + waiting == len(ids), (len(done), waiting)
    assert set(done) <= set(ids)
    assert waiting > 0  # the stop came during the load: the rest went back to the queue


def test_sigterm_stops_the_embedded_redis_and_every_worker(pool_file: Path, reap: list[subprocess.Popen[str]]) -> None:
    process = cli("local", "-f", str(pool_file), "--no-live")
    reap.append(process)
    deadline = time.monotonic() + 20
    while True:  # the embedded redis-server and the `keep` queue's minimum worker
        children = descendants(process.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in children if alive(pid)}
        if "redis-server" in names and len(children) >= 2:
            break
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, names
        time.sleep(0.2)
    time.sleep(1.0)
    children = descendants(process.pid)

    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert not [pid for pid in children if alive(pid)]
    assert "broker redis://127.0.0.1:" in out


def failed_local_run(path: Path, code: int, env: dict[str, str] | None = None) -> list[str]:
    """``workerpool-operator local -f path`` to its end: it must fail with ``code``, saying why on one stderr line."""
    result = subprocess.run(
        [sys.executable, "-m", "workerpool_operator.cli", "local", "-f", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("kind: WorkerPool\nspec: [unclosed\n", "is not valid YAML (line 3"),
        ("apiVersion: v1\nkind: ConfigMap\n", "holds no WorkerPool"),
        (POOL_YAML.replace("concurrency: 2, minReplicas: 1", "concurrency: 0, minReplicas: 1"), "concurrency"),
        (POOL_YAML.replace("minReplicas: 1, maxReplicas: 3", "minReplicas: 5, maxReplicas: 3"), "minReplicas (5)"),
        (POOL_YAML.replace("pool: threads", "pool: fibers", 1), "spec.queues[0].pool"),
    ],
    ids=["syntax", "no-workerpool", "concurrency-0", "min-over-max", "bad-pool"],
)
def test_broken_yaml_is_one_clear_line_and_a_failure(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    lines = failed_local_run(path, exit_codes.BAD_INPUT)
    assert lines[0].startswith("workerpool-operator local: ")
    assert expected in lines[0]
    assert str(path) in lines[0]


def test_missing_redis_server_says_how_to_install_it(pool_file: Path, tmp_path: Path) -> None:
    lines = failed_local_run(
        pool_file, exit_codes.UNAVAILABLE, env={**os.environ, "PATH": str(tmp_path)}
    )  # no redis-server on PATH
    assert "redis-server is not installed" in lines[0]
    assert "apt-get install redis-server" in lines[0]


# --- the demo ---------------------------------------------------------------------------------------------------


async def test_demo_scales_both_queues_up_and_to_zero_and_counts_every_task(
    redis_server: RedisServer, tmp_path: Path, temporary_files_in_the_test_folder: Path
) -> None:
    plan = LoadPlan(
        (
            Phase("cpu", demo_app.CPU_TASK, 8, 0.0, 0.0, 20_000, 40_000),
            Phase("io", demo_app.IO_TASK, 80, 0.0, 2.0, 0.2, 0.6),
        )
    )
    out = io.StringIO()
    png = tmp_path / "demo.png"
    summary = await run_demo(duration=60, plot=png, redis_url=redis_server.url, live=True, out=out, plan=plan)

    assert summary.ok, out.getvalue()
    by_queue = {q.queue: q for q in summary.queues}
    assert by_queue["cpu"].sent == by_queue["cpu"].completed == 8
    assert by_queue["io"].sent == by_queue["io"].completed == 80
    assert by_queue["io"].peak_workers >= 2  # 80 tasks, 25 per worker
    assert by_queue["cpu"].peak_workers >= 1
    assert all(q.final_workers == 0 for q in summary.queues), summary  # back to zero before the end
    assert summary.elapsed < 60
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    text = out.getvalue()
    assert "every task completed exactly once: 88 of 88" in text
    assert "queue" in text and "workers" in text  # the live view was drawn
    # The logs are where the first screen said, and they stay there: the last line says so.
    (kept,) = re.findall(r"^worker logs: (\S+)$", text, re.MULTILINE)
    logs = summary.logs
    assert logs is not None and kept == str(logs) and logs.is_relative_to(temporary_files_in_the_test_folder)
    files = list(logs.iterdir())
    assert files and all(f.suffix == ".log" for f in files), files
    assert [p.name for p in logs.parent.iterdir()] == ["logs"], "the state files went, the logs stayed"


async def test_scale_down_stops_the_idlest_worker_and_lets_the_busy_one_finish(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "one.yaml"
    path.write_text(
        POOL_YAML.replace("    - {name: keep, pool: threads, concurrency: 2, minReplicas: 1, maxReplicas: 3}\n", "")
        .replace("concurrency: 2, minReplicas: 0, maxReplicas: 3", "concurrency: 1, minReplicas: 0, maxReplicas: 2")
        .replace("scaleDownStabilizationSeconds: 2", "scaleDownStabilizationSeconds: 0")
    )
    pool = plan_pool(load_pool(path), redis_server.url)
    client = redis_server.client()
    scale_downs: list[tuple[dict[str, int], tuple[str, ...], set[str], set[str]]] = []
    runtime: LocalRuntime

    async def record(result: PoolResult) -> None:
        for qr in result.queues:
            if qr.decision is not None and qr.scaled_from is not None and qr.decision.desired_replicas < qr.scaled_from:
                loads = {w.worker: w.in_flight for w in qr.observation.workers}
                stopped = {w.name for w in runtime.backend.workers(pool.key, "idle", terminating=True)}
                running = {w.name for w in runtime.backend.workers(pool.key, "idle")}
                scale_downs.append((loads, qr.decision.remove_first, stopped, running | stopped))

    runtime = LocalRuntime(pool, redis_server.url, title="test", live=False, out=io.StringIO(), on_result=record)
    stop = asyncio.Event()
    async with runtime:
        loop = asyncio.create_task(runtime.run(stop))
        try:
            ids = send_sleeps(redis_server.url, "idle", 2, 4.0)  # two workers wanted; one may hold both
            await wait_for(lambda: len(runtime.backend.workers(pool.key, "idle")) == 2, within=5)
            await wait_for(lambda: bool(scale_downs), within=20)
            await wait_for(lambda: len(completions(client)) == 2, within=20)
        finally:
            stop.set()
            await loop
    loads, remove_first, stopped, names = scale_downs[0]
    # The engine's idlest goes first; a worker still starting (no report yet) goes before it, as an
    # unready pod does under a ReplicaSet. The busy worker is never the one stopped.
    assert len(stopped) == 1 and stopped <= set(remove_first) | (names - set(loads)), (stopped, remove_first, loads)
    (name,) = stopped
    assert loads.get(name, 0) <= min(loads.values(), default=0), (loads, name)  # the idlest went first
    assert sorted(completions(client)) == sorted(ids)
    assert set(completions(client).values()) == {1}


def test_workers_that_cannot_start_end_the_run_with_their_reason(
    tmp_path: Path, reap: list[subprocess.Popen[str]], temporary_files_in_the_test_folder: Path
) -> None:
    path = tmp_path / "badapp.yaml"
    path.write_text(POOL_YAML.replace("workerpool_operator.local.demo_app:app", "nosuch.module:app"))
    process = cli("local", "-f", str(path), "--no-live")
    reap.append(process)
    _, err = process.communicate(timeout=60)
    assert process.returncode == exit_codes.FAILED
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "workers of queue 'keep' cannot start" in lines[0]
    assert "No module named 'nosuch'" in lines[0]
    assert f"(log: {temporary_files_in_the_test_folder}/workerpool-t-" in lines[0]  # not left in the system's /tmp
