"""``record``: a trace from a live broker, from Celery's task events or estimated from the worker reports.

The real tests start a redis-server, two workers through the project's entrypoint (with and without task
events), run ``workerpool-operator record`` as a process, send a burst of known tasks (each sleeps a known
time), and check the trace: the count within 2 %, the run times within 10 % of what the tasks slept, and
``simulate`` replaying the file. The pure parts (arrival curve, event folding, the estimate, the CSV) are tested
on small hand-made inputs whose answers are known.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, RedisServer
from tests.worker_process import WorkerProcess, producer, running_worker, wait_for
from workerpool_operator.record.arrivals import arrival_times
from workerpool_operator.record.outcome import Captured, RecordError, outcome, queue_names
from workerpool_operator.record.report_estimate import Sample, WorkerSample, estimate_tasks
from workerpool_operator.record.task_events import EventLog, event_tasks
from workerpool_operator.record.trace_csv import format_trace, parse_seconds
from workerpool_operator.sim.trace import parse_trace

QUEUE = "rec"
BURST = 160  # tasks
SLEEP = 1.0  # seconds each: 160 task-seconds on 2 workers x 4 threads, about 20 s
POOL_YAML = """\
apiVersion: workerpool.dev/v1alpha1
kind: WorkerPool
metadata: {name: recorded}
spec:
  broker: {url: "redis://127.0.0.1:6379/0"}
  app: tests.celery_apps.recorder:app
  template: {image: "example/worker:1"}
  queues:
    - {name: rec, pool: threads, concurrency: 4, maxReplicas: 4}
"""


# --- the arrival curve ----------------------------------------------------------------------------------------


def test_tasks_waiting_at_the_start_arrive_at_the_start() -> None:
    """Ten tasks wait when the recording starts; one worker takes one a second."""
    received = [100.0 + k for k in range(1, 11)]
    samples = [(100.0 + t / 2, max(0, 10 - int(t / 2))) for t in range(0, 24)]
    assert arrival_times(received, samples, start=100.0) == [100.0] * 10


def test_a_burst_is_put_back_where_the_backlog_rose() -> None:
    """Six tasks land between the polls at 104.5 and 105.0; a worker takes one a second from 106 on."""
    received = [106.0, 107.0, 108.0, 109.0, 110.0, 111.0]
    samples = [(100.0 + t / 2, 0) for t in range(10)]  # up to 104.5: empty
    samples += [(105.0 + t / 2, 6 - sum(1 for r in received if r <= 105.0 + t / 2)) for t in range(16)]
    arrived = arrival_times(received, samples, start=100.0)
    assert all(104.5 <= a <= 105.0 for a in arrived), arrived
    assert arrived == sorted(arrived)


def test_tasks_taken_at_once_arrive_when_received() -> None:
    """A task a second, each taken at once: the backlog stays 0, the arrival is within a poll of the receive."""
    received = [100.3 + k for k in range(10)]
    samples = [(100.0 + t / 2, 0) for t in range(24)]
    for own, arrived in zip(received, arrival_times(received, samples, start=100.0), strict=True):
        assert own - 0.5 <= arrived <= own


def test_no_arrival_before_the_start_or_after_its_receive() -> None:
    received = [5.0, 5.0, 9.0]
    assert arrival_times(received, [], start=3.0) == received
    assert arrival_times(received, [(6.0, 40)], start=3.0) == [3.0, 3.0, 3.0]


# --- task events ------------------------------------------------------------------------------------------------


def event(kind: str, uuid: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "uuid": uuid, "local_received": at, "timestamp": at, **fields}


def test_events_become_tasks_of_the_chosen_queues() -> None:
    log = EventLog()
    for uuid, host, at in (("a", "celery@w1", 10.0), ("b", "celery@w2", 11.0), ("c", "celery@w3", 12.0)):
        log.add(event("task-received", uuid, at, hostname=host))
        log.add(event("task-started", uuid, at + 0.1, hostname=host))
    log.add(event("task-succeeded", "a", 12.0, runtime=1.9))
    log.add(event("task-failed", "b", 11.6))  # no runtime: started to failed, 0.5 s
    log.add(event("task-succeeded", "zzz", 12.0, runtime=3.0))  # received before the recording
    log.add(event("task-sent", "d", 12.5, queue="emails"))
    log.add(event("task-received", "d", 14.0, hostname="celery@w4"))
    log.add(event("task-received", "e", 14.0, hostname="celery@w5"))  # no task-sent, queues unknown
    workers = {"celery@w1": {"emails"}, "celery@w2": {"emails", "other"}, "celery@w3": {"other"}}
    made = event_tasks(log, ["emails"], workers, [(10.0, 0)], start=10.0)
    assert made.tasks == [(0.0, 1.9), (1.0, 0.5), (2.5, 1.2)]  # d: sent at 12.5, never finished: the mean
    assert made.exact_arrivals == 1
    text = " ".join(made.notes)
    assert "1 worker(s) that never said" in text  # celery@w5 (celery@w4's task counts through its task-sent)
    assert "also consume queues not recorded" in text  # celery@w2
    assert "1 event(s) of tasks received before the recording" in text
    assert "had not finished" in text


def test_a_retry_is_a_task_of_its_own_and_revoked_ones_are_not_work() -> None:
    log = EventLog()
    log.add(event("task-received", "r", 1.0, hostname="h"))
    log.add(event("task-started", "r", 1.0))
    log.add(event("task-retried", "r", 3.0))
    log.add(event("task-received", "r", 4.0, hostname="h"))
    log.add(event("task-started", "r", 4.0))
    log.add(event("task-succeeded", "r", 5.0, runtime=1.0))
    log.add(event("task-received", "x", 4.5, hostname="h"))
    log.add(event("task-revoked", "x", 4.6))
    made = event_tasks(log, ["q"], {}, [], start=0.0)
    assert made.tasks == [(1.0, 2.0), (4.0, 1.0)]
    assert any("every task event counted" in note for note in made.notes)


# --- the estimate from the reports ------------------------------------------------------------------------------


def reports_of_a_known_run(
    tasks: int, seconds: float, slots: int, poll: float = 0.5, every: float = 2.0
) -> list[Sample]:
    """The polls of one worker of ``slots`` slots running ``tasks`` tasks of ``seconds``, all queued at t=1,
    reporting every ``every`` seconds (a report is as old as the last multiple of ``every``)."""
    samples = []
    t = 0.0
    while t < 1.0 + tasks * seconds / slots + 6.0:

        def state(at: float) -> tuple[int, int, int]:  # (backlog, running, done) at ``at``
            if at < 1.0:
                return 0, 0, 0
            done = min(tasks, int((at - 1.0) / seconds) * slots)
            running = min(slots, tasks - done)
            return tasks - done - running, running, done

        backlog, _, _ = state(t)
        reported = (t // every) * every
        _, running, done = state(reported)
        worker = WorkerSample(running=running, done=done, heartbeat=reported, started=-100.0)
        samples.append(Sample(t, backlog, {"w1": worker}))
        t += poll
    return samples


def test_the_estimate_counts_every_task_and_their_mean_run_time() -> None:
    samples = reports_of_a_known_run(tasks=80, seconds=2.0, slots=4)
    estimate = estimate_tasks(samples, start=0.0)
    assert len(estimate.tasks) == 80
    assert estimate.done == 80
    assert estimate.mean_seconds is not None and abs(estimate.mean_seconds - 2.0) / 2.0 < 0.1
    arrivals = [a for a, _ in estimate.tasks]
    assert min(arrivals) >= 0.5 and max(arrivals) <= 3.0  # the burst at t=1, seen within a report interval


def test_a_restarted_worker_and_a_worker_started_later_count_from_zero() -> None:
    early = WorkerSample(done=50, heartbeat=10.0, started=-100.0)
    samples = [
        Sample(10.0, 0, {"old": early}),
        Sample(
            12.0,
            0,
            {"old": WorkerSample(done=53, heartbeat=12.0), "new": WorkerSample(done=2, heartbeat=12.0, started=11.0)},
        ),
        Sample(
            14.0,
            0,
            {"old": WorkerSample(done=1, heartbeat=14.0), "new": WorkerSample(done=2, heartbeat=14.0, started=11.0)},
        ),
    ]
    estimate = estimate_tasks(samples, start=10.0)
    assert len(estimate.tasks) == 3 + 2 + 1


def test_no_finished_task_no_estimate() -> None:
    samples = [Sample(0.0, 5, {}), Sample(1.0, 7, {})]
    assert estimate_tasks(samples, start=0.0).tasks == []


# --- the outcome and the file --------------------------------------------------------------------------------


def test_parse_seconds() -> None:
    assert [parse_seconds(t) for t in ("90", "90s", "10m", "1.5h", "1d", ".5")] == [90, 90, 600, 5400, 86400, 0.5]
    for bad in ("", "0", "-3", "10x", "m"):
        with pytest.raises(ValueError):
            parse_seconds(bad)


def test_the_file_is_a_trace_the_simulator_reads() -> None:
    text = format_trace([(2.0, 0.0004), (0.5, 1.25)], ["made by a test; a long line " * 8, "second"])
    assert text.splitlines()[0].startswith("# made by a test")
    trace = parse_trace(text, "recorded")
    assert trace.tasks == ((0.5, 1.25), (2.0, 0.0))


def test_auto_takes_events_when_there_are_any_else_the_estimate() -> None:
    samples = reports_of_a_known_run(tasks=16, seconds=1.0, slots=4)
    captured = Captured("redis://h:6379/0", ("q",), 0.0, 20.0, 0.5, 20.0, samples=samples)
    from_reports = outcome(captured)
    assert from_reports.source == "reports" and len(from_reports.tasks) == 16
    assert "an estimate" in from_reports.header[1]
    for k in range(16):
        captured.log.add(event("task-received", str(k), 1.0 + k / 4, hostname="h"))
        captured.log.add(event("task-succeeded", str(k), 2.0 + k / 4, runtime=1.0))
    from_events = outcome(captured)
    assert from_events.source == "events" and len(from_events.tasks) == 16
    assert from_events.header[1].startswith("source: Celery's task events")
    assert outcome(captured, "reports").source == "reports"
    captured.log = EventLog()
    captured.events_problem = "the event stream failed: refused"
    with pytest.raises(RecordError, match="refused"):
        outcome(captured, "events")


def test_queue_names() -> None:
    assert queue_names(["a", "b", "a"], ["x"]) == ("a", "b")
    assert queue_names([], ["x", "y"]) == ("x", "y")
    assert queue_names([], []) == ("celery",)


# --- against real Redis and real Celery workers ---------------------------------------------------------------


@contextmanager
def two_workers(redis_server: RedisServer, tmp_path: Path, *, events: bool) -> Iterator[list[WorkerProcess]]:
    settings = {
        "WORKERPOOL_QUEUES": QUEUE,
        "WORKERPOOL_POOL": "threads",
        "WORKERPOOL_CONCURRENCY": "4",
        "WORKERPOOL_PREFETCH_MULTIPLIER": "1",
        "WORKERPOOL_TASK_EVENTS": "1" if events else "0",
    }
    args = ("--", "--without-mingle") if events else ("--", "--without-mingle", "--without-gossip")
    with ExitStack() as stack:
        workers = [
            stack.enter_context(running_worker(redis_server.url, tmp_path, settings, name=name, args=args))
            for name in ("w1", "w2")
        ]
        for worker in workers:
            worker.wait_ready()
        yield workers


class Recorder:
    """``workerpool-operator record`` as a process, its stderr in a file."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.err = tmp_path / "record.err"
        self.out = tmp_path / "trace.csv"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")} | {"PYTHONUNBUFFERED": "1"}
        self.started = time.time()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workerpool_operator.cli", "record", *args, "-o", str(self.out)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.err.open("wb"),
        )

    def said(self, text: str) -> bool:
        return text in self.err.read_text()

    def finish(self, timeout: float) -> str:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        assert code == 0, self.err.read_text()
        return self.out.read_text()


def send_burst(redis_server: RedisServer, tag: str, count: int = BURST, seconds: float = SLEEP) -> None:
    app = producer(redis_server.url)
    with app.connection_for_write() as connection:
        for _ in range(count):
            app.send_task("record", args=[tag, seconds], queue=QUEUE, connection=connection)


def replays(tmp_path: Path, trace: Path) -> str:
    pool = tmp_path / "pool.yaml"
    pool.write_text(POOL_YAML)
    result = subprocess.run(
        [sys.executable, "-m", "workerpool_operator.cli", "simulate", "-f", str(pool), "--trace", str(trace)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def rows(text: str) -> list[tuple[float, float]]:
    return list(parse_trace(text, "recorded").tasks)


def test_record_from_task_events(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    with two_workers(redis_server, tmp_path, events=True):
        recorder = Recorder(tmp_path, "--redis", redis_server.url, "-q", QUEUE, "--duration", "40")
        wait_for(lambda: recorder.said("listening to Celery's events"), 20, lambda: recorder.err.read_text())
        time.sleep(1.0)  # a first `inspect active_queues` has its answers
        send_burst(redis_server, "events")
        sent = time.time() - recorder.started  # the recording started later than the process: an upper bound
        wait_for(lambda: client.llen("test:runs:events") >= BURST, 60, "the burst did not finish")
        text = recorder.finish(timeout=60)
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("source: Celery's task events" in line for line in header), header
    tasks = rows(text)
    assert abs(len(tasks) - BURST) <= 0.02 * BURST, len(tasks)
    durations = [d for _, d in tasks]
    assert all(abs(d - SLEEP) <= 0.1 * SLEEP for d in durations), (min(durations), max(durations))
    arrivals = [a for a, _ in tasks]
    # Received over about 20 s, but all sent within a tenth of a second: the backlog puts them back into the poll
    # interval (0.5 s) in which the burst landed (two, if a poll fell inside it; more if the machine is slow).
    assert max(arrivals) - min(arrivals) <= 1.5, (min(arrivals), max(arrivals))
    assert max(arrivals) <= sent + 1.0
    out = replays(tmp_path, recorder.out)
    assert f"{len(tasks)} of {len(tasks)}" in out


def test_record_estimated_from_worker_reports(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    with two_workers(redis_server, tmp_path, events=False):
        recorder = Recorder(tmp_path, "--redis", redis_server.url, "-q", QUEUE, "--duration", "40")
        wait_for(lambda: recorder.said("record: rec on"), 20, lambda: recorder.err.read_text())
        time.sleep(1.5)  # a few polls of the idle queue
        send_burst(redis_server, "reports")
        wait_for(lambda: client.llen("test:runs:reports") >= BURST, 60, "the burst did not finish")
        text = recorder.finish(timeout=60)
    header = " ".join(" ".join(line.lstrip("# ").split()) for line in text.splitlines() if line.startswith("#"))
    assert "an estimate" in header and "no task events for these queues" in header, header
    tasks = rows(text)
    assert abs(len(tasks) - BURST) <= 0.02 * BURST, len(tasks)
    mean = statistics.fmean(d for _, d in tasks)
    assert abs(mean - SLEEP) <= 0.1 * SLEEP, mean
    arrivals = [a for a, _ in tasks]
    # Received over about 20 s; seen within a report interval (2 s) and a poll, with room for a slow machine.
    assert max(arrivals) - min(arrivals) < 5.0, (min(arrivals), max(arrivals))
    out = replays(tmp_path, recorder.out)
    assert f"{len(tasks)} of {len(tasks)}" in out


def test_ctrl_c_writes_what_it_has(redis_server: RedisServer, tmp_path: Path) -> None:
    """Recording a WorkerPool file's queues, its broker URL from the Secret in the same file."""
    pool = tmp_path / "pool.yaml"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b"}, "stringData": {"url": redis_server.url}}
    spec = yaml.safe_load(POOL_YAML)
    spec["spec"]["broker"] = {"urlFrom": {"secretKeyRef": {"name": "b", "key": "url"}}}
    pool.write_text(yaml.safe_dump_all([secret, spec]))
    with two_workers(redis_server, tmp_path, events=True):
        recorder = Recorder(tmp_path, "-f", str(pool), "--duration", "1h")
        wait_for(lambda: recorder.said("listening to Celery's events"), 20, lambda: recorder.err.read_text())
        time.sleep(1.0)
        send_burst(redis_server, "ctrl-c", count=8, seconds=0.2)
        wait_for(lambda: redis_server.client().llen("test:runs:ctrl-c") >= 8, 30, "the tasks did not run")
        time.sleep(1.0)
        recorder.process.send_signal(signal.SIGINT)
        text = recorder.finish(timeout=30)
    assert "stopped by the user" in text and f"queue(s) {QUEUE} on redis://" in text
    assert re.search(r"record: (1:00:00|59:5\d) left, 0 tasks seen in events", recorder.err.read_text())
    assert len(rows(text)) == 8
    assert recorder.said("wrote 8 tasks from Celery task events")


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for args, message in (
        (["--redis", "amqp://x", "--duration", "5"], "unsupported broker URL"),
        (["--redis", "redis://127.0.0.1:1/0", "--duration", "soon"], "not a duration"),
        (["-f", str(tmp_path / "missing.yaml"), "--duration", "5"], "cannot read"),
        (["--duration", "5"], "give the broker"),
        (["-f", str(pool_with_secret_elsewhere(tmp_path)), "--duration", "5"], "give it with --redis URL"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "workerpool_operator.cli", "record", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def pool_with_secret_elsewhere(tmp_path: Path) -> Path:
    pool = yaml.safe_load(POOL_YAML)
    pool["spec"]["broker"] = {"urlFrom": {"secretKeyRef": {"name": "elsewhere", "key": "url"}}}
    path = tmp_path / "elsewhere.yaml"
    path.write_text(yaml.safe_dump(pool))
    return path


def test_nothing_seen_writes_nothing_and_exits_1(redis_server: RedisServer, tmp_path: Path) -> None:
    """-f for the queues, --redis for the URL the file keeps in a Secret; no worker, no task: exit 1."""
    path = pool_with_secret_elsewhere(tmp_path)
    out = tmp_path / "nothing.csv"
    args = ["record", "-f", str(path), "--redis", redis_server.url, "--duration", "2", "-o", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "workerpool_operator.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"record: rec on {redis_server.url}" in result.stderr
    assert "no task events and no worker reports for rec" in result.stderr
    assert not out.exists()
