"""``workerpool-worker beat`` for real: real beat processes, real workers, a real redis-server.

The app (tests/celery_apps/periodic.py) sends ``tick`` to the queue ``periodic`` every 2 s; a worker started
through the entrypoint runs each tick and records when. Two beats of the same app on the same broker: one sends,
the other waits for the lock; a clean stop hands over at once, a killed beat after its lock's TTL.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.worker_process import WorkerProcess, entrypoint_env, running_worker, wait_for
from workerpool_operator.beat_forecast import decode_forecast, forecast_key, lock_key
from workerpool_operator.worker.config import EX_NO_SCHEDULE

APP = "tests.celery_apps.periodic:app"
FAST_BEAT = {
    "WORKERPOOL_APP": APP,
    "WORKERPOOL_BEAT_MAX_INTERVAL": "1",
    "WORKERPOOL_BEAT_LOCK_TTL": "6",  # a killed beat's lock frees after 6 s
}


@contextmanager
def beat(redis_server: RedisServer, tmp_path: Path, name: str, **env: str) -> Iterator[WorkerProcess]:
    """A beat process through the entrypoint, with its own state directory and schedule file."""
    extra = {
        **FAST_BEAT,
        "WORKERPOOL_WORKER_NAME": name,
        "WORKERPOOL_BEAT_SCHEDULE_FILE": str(tmp_path / f"{name}-schedule"),
        **env,
    }
    process = WorkerProcess(
        entrypoint_env(redis_server.url, tmp_path / f"state-{name}", extra),
        args=("beat",),
        log=tmp_path / f"{name}.log",
    )
    process.start()
    try:
        yield process
    finally:
        process.close()


def ready(process: WorkerProcess) -> bool:
    return (process.state_dir / "ready").exists()


def ticks(redis_server: RedisServer) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in redis_server.client().lrange("test:ticks", 0, -1)]


def ticks_between(redis_server: RedisServer, start: float, end: float) -> list[float]:
    return sorted(t["at"] for t in ticks(redis_server) if start <= t["at"] < end)


def assert_on_schedule_and_once(times: list[float], window: float) -> None:
    """Every 2 s, once: about window / 2 runs (two beats would make twice as many), 2 s apart."""
    expected = window / 2
    assert expected - 2 <= len(times) <= expected + 1, f"{len(times)} runs in {window:g} s: {times}"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 1.6 <= statistics.median(gaps) <= 2.4, gaps
    assert max(gaps) < 4.5, f"a fire time was skipped: {gaps}"


@pytest.fixture
def periodic_worker(redis_server: RedisServer, tmp_path: Path) -> Iterator[WorkerProcess]:
    env = {"WORKERPOOL_APP": APP, "WORKERPOOL_QUEUES": "periodic", "WORKERPOOL_POOL": "solo"}
    with running_worker(redis_server.url, tmp_path, env, name="worker") as worker:
        worker.wait_ready()
        yield worker


def test_a_periodic_task_every_2_s_runs_on_schedule_and_once_with_two_beats_running(
    redis_server: RedisServer, tmp_path: Path, periodic_worker: WorkerProcess
) -> None:
    with beat(redis_server, tmp_path, "beat-a") as first, beat(redis_server, tmp_path, "beat-b") as second:
        wait_for(lambda: ready(first) or ready(second), 30, lambda: first.output()[-2000:] + second.output()[-2000:])
        running, waiting = (first, second) if ready(first) else (second, first)
        wait_for(lambda: "waiting for it to stop" in waiting.output(), 15, waiting.output)
        start = time.time()
        time.sleep(14)
        end = time.time()
        assert ready(running) and not ready(waiting)
        assert (waiting.state_dir / "heartbeat").exists(), "a waiting beat stays alive for its liveness probe"
        holder = str(redis_server.client().get(lock_key(APP)))
        assert holder.startswith(running.env["WORKERPOOL_WORKER_NAME"] + "/")
    assert_on_schedule_and_once(ticks_between(redis_server, start + 1, end - 1), end - start - 2)
    ids = [t["id"] for t in ticks(redis_server)]
    assert len(ids) == len(set(ids))


def test_a_stopped_beat_hands_over_at_once_and_a_killed_one_after_its_lock_expires(
    redis_server: RedisServer, tmp_path: Path, periodic_worker: WorkerProcess
) -> None:
    with ExitStack() as stack:
        first = stack.enter_context(beat(redis_server, tmp_path, "beat-a"))
        wait_for(lambda: ready(first), 30, first.output)
        second = stack.enter_context(beat(redis_server, tmp_path, "beat-b"))
        wait_for(lambda: "waiting for it to stop" in second.output(), 30, second.output)

        # A rollout: SIGTERM saves the schedule and releases the lock; the next beat starts within a heartbeat.
        first.terminate()
        assert first.wait(20) == 0
        stopped = time.time()
        wait_for(lambda: ready(second), 10, second.output)
        assert time.time() - stopped < 4, "a clean stop should not wait out the lock's TTL"

        # A lost node: the beat dies without releasing anything; the next one waits for the lock's TTL (6 s).
        third = stack.enter_context(beat(redis_server, tmp_path, "beat-c"))
        wait_for(lambda: "waiting for it to stop" in third.output(), 30, third.output)
        second.kill_all()
        killed = time.time()
        wait_for(lambda: ready(third), 20, third.output)
        took_over = time.time() - killed
        assert 2 <= took_over <= 12, f"took over after {took_over:.1f} s (lock TTL 6 s)"
        time.sleep(5)
    times = sorted(t["at"] for t in ticks(redis_server))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) > 0.5, f"two beats sent the same fire: {gaps}"
    ids = [t["id"] for t in ticks(redis_server)]
    assert len(ids) == len(set(ids))


def test_beat_for_an_app_without_a_schedule_exits_5_with_one_line(redis_server: RedisServer, tmp_path: Path) -> None:
    with beat(redis_server, tmp_path, "beat", WORKERPOOL_APP="tests.celery_apps.recorder:app") as process:
        assert process.wait(30) == EX_NO_SCHEDULE
        lines = [line for line in process.output().splitlines() if line.strip()]
    assert lines[-1].startswith("workerpool-worker: the app tests.celery_apps.recorder:app has no beat_schedule")
    assert "scheduler" in lines[-1]
    assert redis_server.client().get(lock_key("tests.celery_apps.recorder:app")) is None


def test_beat_with_a_scheduler_named_runs_an_app_without_a_schedule(redis_server: RedisServer, tmp_path: Path) -> None:
    """A database scheduler keeps the schedule elsewhere: an empty beat_schedule is no error then."""
    scheduler = {
        "WORKERPOOL_APP": "tests.celery_apps.recorder:app",
        "WORKERPOOL_BEAT_SCHEDULER": "celery.beat:Scheduler",
    }
    with beat(redis_server, tmp_path, "beat", **scheduler) as process:
        wait_for(lambda: ready(process), 30, process.output)


def test_beat_publishes_its_forecast_with_each_tasks_queue(redis_server: RedisServer, tmp_path: Path) -> None:
    with beat(redis_server, tmp_path, "beat-a") as process:
        wait_for(lambda: ready(process), 30, process.output)
        raw = wait_for(lambda: redis_server.client().get(forecast_key(APP)), 15, process.output)
        ttl = redis_server.client().ttl(forecast_key(APP))
        now = time.time()
        forecast = decode_forecast(raw)
        assert forecast is not None and forecast.beat == "beat-a"
        entries = {e.name: e for e in forecast.entries}
        assert {name: e.queue for name, e in entries.items()} == {
            "tick": "periodic",  # the entry's options
            "report": "reports",
            "routed": "routed",  # task_routes
            "plain": "celery",  # the default queue
            "celery.backend_cleanup": "celery",  # beat's own daily entry (the app has no result expiry)
        }
        tick = entries["tick"]
        assert len(tick.fires) == 20 and tick.until == tick.fires[-1]  # cut short: complete up to its last fire
        assert all(1.9 < b - a < 2.1 for a, b in zip(tick.fires, tick.fires[1:], strict=False))
        report = entries["report"]
        assert report.fires and all(round(t) % 3600 == 0 for t in report.fires)  # on the hour
        assert report.until == pytest.approx(forecast.published + 3600)
        assert [t for t, _ in forecast.fires_by_queue(now, 3600)["reports"]] == list(report.fires)
        assert 0 < ttl <= 60
        process.terminate()
        assert process.wait(20) == 0
    assert redis_server.client().get(forecast_key(APP)) is None, "a stopped beat leaves no forecast behind"
    assert redis_server.client().get(lock_key(APP)) is None, "nor its lock"
