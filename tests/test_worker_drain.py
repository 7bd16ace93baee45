"""The worker's side of the drain protocol, with real workers and a real Redis: a drain request over the broker stops
new tasks and lets running ones finish; taking it back resumes; a hard-killed worker's acks_late task comes back
while only the workers already running are up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.worker_process import producer, running_worker, runs, wait_for
from workerpool_operator import drain_requests as drain
from workerpool_operator import reports
from workerpool_operator.worker.draining import Drainer
from workerpool_operator.worker.runner import restore_promptly


def report(client, queue: str, worker: str):  # type: ignore[no-untyped-def]
    raw = client.hget(reports.report_key(queue), worker)
    return None if raw is None else reports.decode_report(worker, raw)


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_drain_request_stops_new_tasks_and_running_ones_finish(
    pool: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    settings = {"workerpool_pool": pool, "workerpool_concurrency": "2", "workerpool_queues": "work"}
    with running_worker(redis_server.url, tmp_path, settings, name="w1") as worker:
        worker.wait_ready()
        app = producer(redis_server.url)
        for _ in range(2):
            app.send_task("record", args=("long", 4.0), queue="work")
        wait_for(lambda: client.llen("test:started:long") == 2, 20, worker.output)

        asked = time.time()
        client.hset(drain.drain_key("work"), "w1", drain.encode_request(asked))
        wait_for(lambda: (r := report(client, "work", "w1")) and r.draining, 15, worker.output)
        load = report(client, "work", "w1")
        assert load is not None and load.running == 2, "running tasks go on"
        assert load.started > 0 and load.started <= asked

        for _ in range(2):
            app.send_task("record", args=("later", 0.0), queue="work")
        wait_for(lambda: len(runs(client, "long")) == 2, 20, worker.output)
        time.sleep(2.0)  # a worker that still consumed would have taken the later tasks by now
        assert client.llen("work") == 2 and not runs(client, "later"), "a draining worker takes no new task"
        idle = wait_for(lambda: (r := report(client, "work", "w1")) and r.running == 0 and r, 10, worker.output)
        assert idle.draining and idle.reserved == 0, "idle and draining: the operator may remove it now"

        client.hdel(drain.drain_key("work"), "w1")  # demand is back: un-drained
        wait_for(lambda: len(runs(client, "later")) == 2, 20, worker.output)
        again = report(client, "work", "w1")
        assert again is not None and not again.draining


def test_a_lapsed_request_resumes_the_worker(redis_server: RedisServer, tmp_path: Path) -> None:
    """The key expires (the operator that wrote it is gone): the worker takes tasks again."""
    client = redis_server.client()
    settings = {"workerpool_pool": "threads", "workerpool_concurrency": "1", "workerpool_queues": "work"}
    with running_worker(redis_server.url, tmp_path, settings, name="w1") as worker:
        worker.wait_ready()
        key = drain.drain_key("work")
        client.hset(key, "w1", drain.encode_request(time.time()))
        client.expire(key, 3)
        wait_for(lambda: (r := report(client, "work", "w1")) and r.draining, 15, worker.output)
        producer(redis_server.url).send_task("record", args=("after", 0.0), queue="work")
        wait_for(lambda: runs(client, "after"), 20, worker.output)
        assert not report(client, "work", "w1").draining  # type: ignore[union-attr]


def test_a_hard_killed_workers_acks_late_task_comes_back_to_the_workers_already_running(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Only the visibility timeout is set (kombu's restore sweep left at its defaults by the app): the entrypoint
    makes the running workers sweep, so the task runs again without waiting for a worker to start."""
    client = redis_server.client()
    visibility = 5.0
    settings = {"workerpool_pool": "threads", "workerpool_concurrency": "1", "workerpool_queues": "work"}
    settings["test_visibility_timeout_only"] = str(visibility)
    with running_worker(redis_server.url, tmp_path, settings, name="a") as first:
        first.wait_ready()
        producer(redis_server.url).send_task("crash_once", args=("k", 120), queue="work")
        wait_for(lambda: client.get("test:attempts:k") == "1", 20, first.output)
        delivered = time.time()
        with running_worker(redis_server.url, tmp_path, settings, name="b") as second:
            second.wait_ready()
            first.kill_all()  # a node lost: no warm shutdown, the message stays in kombu's unacked hash
            assert client.hlen("unacked") == 1
            wait_for(lambda: runs(client, "k"), visibility + 30, second.output)
            took = time.time() - delivered
    assert [r["attempt"] for r in runs(client, "k")] == [2]
    assert visibility <= took <= visibility + 30, took


def test_restore_promptly_keeps_what_the_user_set() -> None:
    assert restore_promptly(None) == {"unacked_restore_interval": 10, "unacked_restore_throttle": 1}
    assert restore_promptly({"visibility_timeout": 8}) == {
        "visibility_timeout": 8,
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
    }
    mine = {"visibility_timeout": 8, "unacked_restore_interval": 30, "unacked_restore_throttle": 5}
    assert restore_promptly(mine) == mine


class Control:
    def __init__(self, confirms: bool = True) -> None:
        self.confirms = confirms
        self.calls: list[tuple[str, str]] = []

    def cancel(self, queue: str) -> bool:
        self.calls.append(("cancel", queue))
        return self.confirms

    def add(self, queue: str) -> bool:
        self.calls.append(("add", queue))
        return self.confirms


def test_the_drainer_switches_only_what_changed_and_retries_what_was_not_confirmed() -> None:
    control = Control()
    drainer = Drainer(control)
    assert drainer.apply({"a", "b"}) and drainer.draining == {"a", "b"}
    assert not drainer.apply({"a", "b"}), "nothing new"
    assert drainer.apply({"b"}) and drainer.draining == {"b"}
    assert control.calls == [("cancel", "a"), ("cancel", "b"), ("add", "a")]
    control.confirms = False
    assert not drainer.apply({"b", "c"}) and drainer.draining == {"b"}, "unconfirmed: not counted as draining"
    control.confirms = True
    assert drainer.apply({"b", "c"}) and drainer.draining == {"b", "c"}


@pytest.mark.parametrize(("pool", "hands_back"), [("threads", True), ("prefork", False)])
def test_a_draining_worker_hands_back_what_it_prefetched(
    pool: str, hands_back: bool, redis_server: RedisServer, tmp_path: Path
) -> None:
    """One slot busy with a long task, one task prefetched behind it. threads: the drain sends the prefetched one
    back to the queue and runs nothing more. prefork: the task already sits in the child's pipe (worker/handback.py
    says why), so it runs there after the long one. Either way each task runs exactly once."""
    client = redis_server.client()
    settings = {"workerpool_pool": pool, "workerpool_concurrency": "1", "workerpool_queues": "work"}
    settings["workerpool_prefetch_multiplier"] = "1"  # the CRD's default: one task reserved beyond the running one
    with running_worker(redis_server.url, tmp_path, settings, name="w1") as worker:
        worker.wait_ready()
        app = producer(redis_server.url)
        app.send_task("record", args=("first", 4.0), queue="work")
        wait_for(lambda: client.llen("test:started:first") == 1, 20, worker.output)
        for _ in range(2):
            app.send_task("record", args=("behind", 0.0), queue="work")
        wait_for(lambda: (r := report(client, "work", "w1")) and r.reserved == 1, 15, worker.output)
        assert client.llen("work") == 1, "one prefetched, one still in the queue"

        client.hset(drain.drain_key("work"), "w1", drain.encode_request(time.time()))
        wait_for(lambda: (r := report(client, "work", "w1")) and r.draining, 15, worker.output)
        wait_for(lambda: runs(client, "first"), 20, worker.output)
        time.sleep(1.5)
        if hands_back:
            assert client.llen("work") == 2, "the prefetched task is back in the queue"
            assert not runs(client, "behind"), "a draining worker runs nothing it handed back"
        else:
            assert client.llen("work") == 1, "nothing more taken from the queue while draining"
            assert len(runs(client, "behind")) == 1, "the task in the child's pipe ran after the long one"

        client.hdel(drain.drain_key("work"), "w1")
        wait_for(lambda: len(runs(client, "behind")) == 2, 20, worker.output)
        ids = [r["id"] for r in runs(client, "behind")]
        assert len(set(ids)) == 2, "each task ran once"
