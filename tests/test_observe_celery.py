"""Real Celery workers hold tasks: backlog + in-flight still equals what is not finished.

The matrix runs ``tests/observe_celery_app.py`` workers as subprocesses (threads pool, concurrency 2),
with prefetch on (multiplier 4) or off (``--disable-prefetch``) and ``acks_late`` on or off; their
reports are written from Celery signals in the format of :mod:`workerpool_operator.reports`. The last
test runs what the image runs instead: the ``workerpool-worker`` entrypoint, prefork, its own reports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.conftest import REPO, RedisServer
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.observation import QueueObservation
from workerpool_operator.observe import Observer

QUEUE = "work"
SENT = 20
CONCURRENCY = 2


def start_worker(broker_url: str, logfile: Path, *, prefetch: bool, acks_late: bool) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "C_FORCE_ROOT": "1",
        "OBSERVE_BROKER_URL": broker_url,
        "OBSERVE_QUEUE": QUEUE,
        "OBSERVE_WORKER": "worker-1",
        "OBSERVE_ACKS_LATE": "1" if acks_late else "0",
        "OBSERVE_CONCURRENCY": str(CONCURRENCY),
    }
    args = [sys.executable, "-m", "celery", "-A", "tests.observe_celery_app", "worker", "-Q", QUEUE]
    args += ["-P", "threads", "-c", str(CONCURRENCY), "-n", "worker-1@%h", "-l", "WARNING"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--logfile", str(logfile)]
    args += ["--prefetch-multiplier", "4"] if prefetch else ["--disable-prefetch"]
    return subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True)


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:  # held tasks never finish: no warm shutdown, kill the whole group
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


async def settled(
    observer: Observer, config: BrokerConfig, process: subprocess.Popen[bytes], done: int, within: float = 30.0
) -> QueueObservation:
    """The queue once the worker is busy, has finished ``done`` tasks, and nothing moved for a while."""
    deadline = time.monotonic() + within
    previous: tuple[object, ...] | None = None
    while True:
        assert process.poll() is None, "the Celery worker exited: see its log"
        observation = (await observer.observe({config: [QUEUE]}, timeout=5))[config]
        assert observation.ok, observation.error
        queue = observation.queues[QUEUE]
        loads = [(w.running, w.reserved, w.done) for w in queue.workers]
        state = (queue.backlog, queue.in_flight, *loads)
        busy = len(loads) == 1 and loads[0][0] == CONCURRENCY and loads[0][2] == done
        if busy and state == previous:
            return queue
        previous = state if busy else None
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker never settled: last {queue}")
        await asyncio.sleep(0.7)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("acks_late", [False, True], ids=["acks-early", "acks-late"])
@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
async def test_backlog_plus_in_flight_is_what_is_not_finished(
    redis_server: RedisServer,
    workers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    prefetch: bool,
    acks_late: bool,
) -> None:
    app = Celery("producer", broker=redis_server.url, set_as_current=False)
    for number in range(SENT):
        app.send_task("observe.hold", queue=QUEUE, priority=number % 10)
    app.close()
    process = start_worker(redis_server.url, tmp_path / "worker.log", prefetch=prefetch, acks_late=acks_late)
    workers.append(process)
    config = BrokerConfig(url=redis_server.url)

    async with Observer() as observer:
        holding = await settled(observer, config, process, done=0)
        (load,) = holding.workers
        assert holding.backlog + holding.in_flight == SENT
        assert holding.backlog < SENT  # the worker really took messages off the lists...
        assert holding.in_flight == load.running + load.reserved >= CONCURRENCY  # ...and we count them
        if prefetch:
            assert load.reserved > 0  # prefetched, waiting inside the worker
        else:
            assert load.reserved == 0

        redis_server.client().rpush("observe:release", *range(3))  # three tasks may finish
        after = await settled(observer, config, process, done=3)
        assert after.backlog + after.in_flight == SENT - 3
        assert after.in_flight >= CONCURRENCY


@pytest.mark.timeout(90)
async def test_with_the_worker_entrypoint_and_a_key_prefix(redis_server: RedisServer, tmp_path: Path) -> None:
    """The same sum with what the image runs: ``workerpool-worker``, prefork, its own reports."""
    from tests.worker_process import producer, running_worker

    options = {"global_keyprefix": "pfx:"}
    app = producer(redis_server.url, options)
    for number in range(SENT):
        app.send_task("record", args=("held", 60.0), queue=QUEUE, priority=number % 10)
    app.close()
    settings = {
        "workerpool_pool": "prefork",
        "workerpool_concurrency": str(CONCURRENCY),
        "workerpool_queues": QUEUE,
        "workerpool_report_interval": "0.3",
        "test_global_keyprefix": "pfx:",
    }
    config = BrokerConfig(url=redis_server.url, global_keyprefix="pfx:")
    with running_worker(redis_server.url, tmp_path, settings) as worker:
        assert worker.process is not None
        async with Observer() as observer:
            holding = await settled(observer, config, worker.process, done=0)
    (load,) = holding.workers
    assert load.worker == "w1"
    assert holding.backlog + holding.in_flight == SENT
    assert 0 < holding.backlog < SENT
    assert holding.in_flight == load.running + load.reserved > CONCURRENCY  # running and prefetched
