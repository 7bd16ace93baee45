"""The worker entrypoint as the image runs it: real worker processes, real redis-server, every pool type."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, RedisServer
from tests.worker_process import (
    APP,
    entrypoint_env,
    max_overlap,
    producer,
    running_worker,
    runs,
    wait_for,
)
from workerpool_operator.local.embedded_redis import free_port
from workerpool_operator.reports import decode_report, report_key

POOLS = ["prefork", "threads", "solo", "gevent", "eventlet"]
CONCURRENCY = {"prefork": 2, "threads": 3, "solo": 1, "gevent": 3, "eventlet": 3}


def queue_ids(client: Any, queue: str) -> list[str]:
    """Task ids of the messages waiting in a queue's Redis list."""
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)]


def probe(state_dir: Path, kind: str) -> int:
    env = {"PYTHONPATH": str(REPO), "WORKERPOOL_STATE_DIR": str(state_dir)}
    command = [sys.executable, "-m", "workerpool_operator.worker.main", "check", kind]
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode


def report(client: Any, queue: str, worker: str, prefix: str = "") -> Any:
    raw = client.hget(report_key(queue, prefix), worker)
    return decode_report(worker, raw) if raw is not None else None


@pytest.mark.parametrize("pool", POOLS)
def test_each_pool_runs_tasks_as_concurrently_as_configured(pool: str, redis_server: RedisServer, tmp_path: Path):
    n = CONCURRENCY[pool]
    client = redis_server.client()
    settings = {"workerpool_pool": pool, "workerpool_concurrency": str(n), "workerpool_queues": "work"}
    with running_worker(redis_server.url, tmp_path, settings) as worker:
        worker.wait_ready()
        app = producer(redis_server.url)
        sent = {app.send_task("record", args=("c", 0.6), queue="work").id for _ in range(2 * n)}
        wait_for(lambda: client.llen("test:runs:c") == 2 * n, 30, worker.output)
        done = runs(client, "c")
        assert {r["id"] for r in done} == sent
        assert max_overlap([(r["start"], r["end"]) for r in done]) == n
        if pool == "prefork":
            assert len({r["pid"] for r in done}) == n  # child processes, not the main one
        worker.terminate()
        assert worker.wait() == 0, worker.output()[-2000:]


@pytest.mark.parametrize("pool", POOLS)
def test_sigterm_finishes_running_tasks_and_gives_back_prefetched_ones(
    pool: str, redis_server: RedisServer, tmp_path: Path
):
    n = 1 if pool == "solo" else 2
    client = redis_server.client()
    settings = {
        "workerpool_pool": pool,
        "workerpool_concurrency": str(n),
        "workerpool_prefetch_multiplier": "2",
        "workerpool_queues": "work",
        "workerpool_report_interval": "0.2",
    }
    with running_worker(redis_server.url, tmp_path, settings) as worker:
        worker.wait_ready()
        assert probe(worker.state_dir, "ready") == 0
        app = producer(redis_server.url)
        sent = [app.send_task("record", args=("s", 2.5 if i < n else 0.05), queue="work").id for i in range(6)]
        wait_for(lambda: client.llen("test:started:s") == n, 20, worker.output)

        # The report shows what the worker holds: n running, and every prefetched message it has not started.
        def settled() -> Any:
            load = report(client, "work", "w1")
            held = client.hlen("unacked")
            if load is None or load.running != n:
                return None
            return load if pool == "solo" or load.reserved == held else None

        load = wait_for(settled, 10, lambda: f"{report(client, 'work', 'w1')} unacked={client.hlen('unacked')}")
        assert load.concurrency == n
        assert load.reserved <= client.hlen("unacked")
        if pool in ("prefork", "threads"):
            assert load.reserved == 4  # prefetch 2 x 2 unacknowledged messages, on top of the 2 running

        started = set(client.lrange("test:started:s", 0, -1))
        worker.terminate()
        wait_for(lambda: not (worker.state_dir / "ready").exists(), 2, "still ready after SIGTERM")
        assert worker.process is not None and worker.process.poll() is None  # still finishing its tasks
        assert probe(worker.state_dir, "ready") == 1
        assert worker.wait() == 0, worker.output()[-2000:]

    finished = {r["id"] for r in runs(client, "s")}
    waiting = queue_ids(client, "work")
    assert started <= finished  # the running tasks finished
    assert set(waiting) == set(sent) - finished  # everything else is back in the queue...
    assert sorted(waiting + list(finished)) == sorted(sent)  # ...once: nothing lost, nothing doubled
    assert len(waiting) >= 6 - 2 * n  # prefetched-but-unstarted ones came back too
    assert client.hlen("unacked") == 0
    assert not client.exists(report_key("work"))  # its report is gone
    assert not (worker.state_dir / "heartbeat").exists()


def test_reports_honour_the_key_prefix_prune_stale_workers_and_expire(redis_server: RedisServer, tmp_path: Path):
    client = redis_server.client()
    key = report_key("work", "pfx:")
    now = time.time()
    client.hset(key, "ghost", json.dumps({"running": 3, "heartbeat": now - 600}))
    client.hset(key, "junk", "not json")
    client.hset(key, "other", json.dumps({"running": 1, "heartbeat": now + 30}))
    settings = {
        "workerpool_pool": "solo",
        "workerpool_queues": "work",
        "workerpool_report_interval": "0.2",
        "workerpool_report_ttl": "5",
        "test_global_keyprefix": "pfx:",
    }
    with running_worker(redis_server.url, tmp_path, settings) as worker:
        worker.wait_ready()
        wait_for(lambda: report(client, "work", "w1", "pfx:"), 5, worker.output)
        assert set(client.hkeys(key)) == {"w1", "other"}
        assert 0 < client.ttl(key) <= 5
        app = producer(redis_server.url, {"global_keyprefix": "pfx:"})
        app.send_task("record", args=("k", 0.0), queue="work")
        load = wait_for(lambda: (r := report(client, "work", "w1", "pfx:")) and r.done == 1 and r, 10, worker.output)
        assert (load.running, load.reserved, load.concurrency) == (0, 0, 1)
        assert time.time() - load.heartbeat < 2
        worker.terminate()
        assert worker.wait() == 0
    assert set(client.hkeys(key)) == {"other"}
    assert not client.exists(report_key("work"))  # nothing written without the prefix


def test_acks_late_task_is_delivered_again_after_a_hard_kill(redis_server: RedisServer, tmp_path: Path):
    client = redis_server.client()
    settings = {"workerpool_pool": "threads", "workerpool_concurrency": "1", "workerpool_queues": "work"}
    settings["test_visibility_timeout"] = "2"
    with running_worker(redis_server.url, tmp_path, settings, name="a") as first:
        first.wait_ready()
        app = producer(redis_server.url)
        app.send_task("crash_once", args=("h", 60), queue="work")
        wait_for(lambda: client.get("test:attempts:h") == "1", 20, first.output)
        delivered = time.time()
        first.kill_all()
    assert client.llen("work") == 0 and client.hlen("unacked") == 1  # held by a dead worker, invisible

    with running_worker(redis_server.url, tmp_path, settings, name="b") as second:
        second.wait_ready()
        wait_for(lambda: runs(client, "h"), 30, second.output)
        assert time.time() - delivered >= 2  # redelivered by the visibility timeout, not before
        assert [r["attempt"] for r in runs(client, "h")] == [2]
        wait_for(lambda: client.hlen("unacked") == 0, 5, "the redelivered message was never acknowledged")
        second.terminate()
        assert second.wait() == 0
    assert client.llen("work") == 0


@pytest.mark.parametrize("pool", ["prefork", "gevent", "eventlet"])
def test_soft_shutdown_timeout_cancels_what_still_runs_and_requeues_acks_late_work(
    pool: str, redis_server: RedisServer, tmp_path: Path
):
    client = redis_server.client()
    settings = {
        "workerpool_pool": pool,
        "workerpool_concurrency": "1",
        "workerpool_queues": "work",
        "workerpool_soft_shutdown_timeout": "1.5",
    }
    with running_worker(redis_server.url, tmp_path, settings) as worker:
        worker.wait_ready()
        producer(redis_server.url).send_task("crash_once", args=("t", 60), queue="work")
        wait_for(lambda: client.get("test:attempts:t") == "1", 20, worker.output)
        stopped = time.monotonic()
        worker.terminate()
        assert worker.wait(30) == 0, worker.output()[-2000:]
        assert 1.5 <= time.monotonic() - stopped < 15  # the timeout, not the task's 60 s
    assert runs(client, "t") == []
    assert client.llen("work") == 1  # cancelled, and its unacknowledged message is back
    assert client.hlen("unacked") == 0
    assert not client.exists(report_key("work"))


def test_soft_shutdown_timeout_is_only_an_upper_bound(redis_server: RedisServer, tmp_path: Path):
    """Tasks that end before the timeout end the shutdown (Celery's own soft shutdown sleeps it all)."""
    client = redis_server.client()
    settings = {"workerpool_pool": "prefork", "workerpool_concurrency": "1", "workerpool_queues": "work"}
    settings["workerpool_soft_shutdown_timeout"] = "60"
    with running_worker(redis_server.url, tmp_path, settings) as worker:
        worker.wait_ready()
        producer(redis_server.url).send_task("record", args=("u", 1.0), queue="work")
        wait_for(lambda: client.llen("test:started:u") == 1, 20, worker.output)
        stopped = time.monotonic()
        worker.terminate()
        assert worker.wait(30) == 0, worker.output()[-2000:]
        assert time.monotonic() - stopped < 15
    assert len(runs(client, "u")) == 1


def test_bad_celery_argument_is_one_line(redis_server: RedisServer, tmp_path: Path):
    env = entrypoint_env(redis_server.url, tmp_path / "state", {"WORKERPOOL_EXTRA_ARGS": "--no-such-flag"})
    result = _run_entrypoint(env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "workerpool-worker: bad celery worker arguments: No such option '--no-such-flag'."
    ]
    assert not (tmp_path / "state" / "ready").exists() and not (tmp_path / "state" / "heartbeat").exists()


def _run_entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "workerpool_operator.worker.main", *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


BAD_CONFIGS = [
    pytest.param({"WORKERPOOL_POOL": "fibers"}, 2, "unknown pool 'fibers'", id="unknown-pool"),
    pytest.param({"WORKERPOOL_CONCURRENCY": "many"}, 2, "must be a whole number", id="bad-concurrency"),
    pytest.param({"WORKERPOOL_APP": ""}, 2, "no Celery app given", id="no-app"),
    pytest.param(
        {"WORKERPOOL_APP": "tests.celery_apps.missing:app"},
        3,
        "cannot import the Celery app 'tests.celery_apps.missing:app': ModuleNotFoundError",
        id="app-does-not-import",
    ),
    pytest.param({"WORKERPOOL_APP": "json:dumps"}, 3, "is not a Celery app", id="not-an-app"),
    pytest.param({"WORKERPOOL_BROKER_URL": "amqp://guest@localhost//"}, 4, "is not a Redis URL", id="not-redis"),
    pytest.param({"WORKERPOOL_BROKER_URL": "redis://127.0.0.1:port/0"}, 4, "is invalid: Port could not", id="bad-url"),
    pytest.param({"WORKERPOOL_BROKER_URL": "redis://127.0.0.1:{port}/0"}, 4, "cannot reach the broker", id="refused"),
    pytest.param(
        {"WORKERPOOL_BROKER_URL": "", "WORKERPOOL_BROKER_URL_FILE": "/nonexistent/url"},
        4,
        "cannot read the broker URL file /nonexistent/url",
        id="url-file-unreadable",
    ),
]


@pytest.mark.parametrize(("env", "code", "message"), BAD_CONFIGS)
def test_bad_configuration_exits_at_once_with_one_clear_line(
    env: dict[str, str], code: int, message: str, tmp_path: Path
):
    settings = {k: v.format(port=free_port()) for k, v in env.items()}
    full_env = entrypoint_env("redis://127.0.0.1:1/0", tmp_path / "state", settings)
    started = time.monotonic()
    result = _run_entrypoint(full_env)
    assert time.monotonic() - started < 20
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("workerpool-worker: ") and message in lines[0]
    assert "password" not in lines[0]


def test_broker_password_never_shown(tmp_path: Path):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = _run_entrypoint(entrypoint_env(url, tmp_path / "state"))
    assert result.returncode == 4
    assert "hunter2" not in result.stderr and "cannot reach the broker" in result.stderr


def test_unknown_option_is_one_line(tmp_path: Path):
    result = _run_entrypoint(entrypoint_env("redis://127.0.0.1:1/0", tmp_path / "state"), "--colour", "blue")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--colour" in result.stderr


def test_arguments_override_the_environment(redis_server: RedisServer, tmp_path: Path):
    """`--pool` and `--queues` given as arguments win over WORKERPOOL_POOL / WORKERPOOL_QUEUES."""
    client = redis_server.client()
    args = ("--pool", "solo", "--queues", "from-args", "--", "--without-mingle", "--without-gossip")
    env = {"workerpool_pool": "fibers", "workerpool_queues": "from-env"}
    with running_worker(redis_server.url, tmp_path, env, args=args) as worker:
        worker.wait_ready()
        producer(redis_server.url).send_task("record", args=("a", 0.0), queue="from-args")
        wait_for(lambda: runs(client, "a"), 20, worker.output)
        assert "(solo)" in worker.output()
        worker.terminate()
        assert worker.wait() == 0


def test_the_app_can_come_from_the_working_directory(redis_server: RedisServer, tmp_path: Path):
    """As in the image: user code in the working directory, not installed, found like `celery -A` finds it."""
    (tmp_path / "userapp.py").write_text(f"from {APP.split(':')[0]} import app\n")
    env = entrypoint_env(redis_server.url, tmp_path / "state", {"WORKERPOOL_APP": "userapp"})
    env["PYTHONPATH"] = str(REPO)  # the test tasks module; userapp itself only via the working directory
    command = [sys.executable, "-m", "workerpool_operator.worker.main", "--pool", "solo", "--", "--without-mingle"]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (tmp_path / "state" / "ready").exists() or process.poll() is not None, 30)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
    finally:
        process.terminate()
        assert process.wait(30) == 0
