"""The local runtime's parts without processes: removal order, the dashboard, the plain view, the load plan."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import pytest
from rich.console import Console

from workerpool_operator.engine import Decision
from workerpool_operator.local.backend import LocalProcessBackend, LocalWorker
from workerpool_operator.local.demo import percentile
from workerpool_operator.local.loadgen import Phase
from workerpool_operator.local.runtime import plan_pool
from workerpool_operator.local.view import Dashboard, LiveView, LogView, QueueInfo, sparkline
from workerpool_operator.observation import QueueObservation, WorkerLoad
from workerpool_operator.scaling_types import PoolResult, QueueResult
from workerpool_operator.spec import WorkerPool

POOL = ("local", "p")


def worker(tmp_path: Path, name: str, started_at: float, ready: bool) -> LocalWorker:
    state = tmp_path / name
    state.mkdir()
    if ready:
        (state / "ready").touch()
    process = cast(subprocess.Popen[bytes], None)  # never touched by the removal order
    return LocalWorker(name, POOL, "q", process, state, tmp_path / f"{name}.log", started_at)


def test_removal_order_is_not_ready_first_then_the_engines_idlest_then_the_newest(tmp_path: Path) -> None:
    backend = LocalProcessBackend("redis://127.0.0.1:1/0", tmp_path)
    old_busy = worker(tmp_path, "p-q-1", 1.0, ready=True)
    idle = worker(tmp_path, "p-q-2", 2.0, ready=True)
    newer_busy = worker(tmp_path, "p-q-3", 3.0, ready=True)
    starting = worker(tmp_path, "p-q-4", 4.0, ready=False)
    live = [old_busy, idle, newer_busy, starting]
    order = backend._removal_order(live, remove_first=("p-q-2",))
    assert [w.name for w in order] == ["p-q-4", "p-q-2", "p-q-3", "p-q-1"]
    # Without advice from the engine: the newest go first, as a ReplicaSet would pick.
    assert [w.name for w in backend._removal_order(live, ())] == ["p-q-4", "p-q-3", "p-q-2", "p-q-1"]


def result(at: float, backlog: int, done: dict[str, int], scaled_from: int | None, desired: int) -> PoolResult:
    workers = tuple(WorkerLoad(worker=name, done=n, heartbeat=at, concurrency=2) for name, n in done.items())
    observation = QueueObservation(queue="q", backlog=backlog, in_flight=len(workers), workers=workers)
    decision = Decision(desired_replicas=desired, reason=f"because {desired}", current_replicas=scaled_from or desired)
    queue = QueueResult("q", observation, decision, state=None, scaled_from=scaled_from)  # type: ignore[arg-type]
    return PoolResult(pool=POOL, broker_error=None, queues=(queue,), observed_at=at, poll_duration=0.01)


def test_dashboard_counts_scale_events_peaks_and_throughput_from_worker_reports() -> None:
    board = Dashboard("t", [QueueInfo("q", "threads", 2, 0, 4)])
    events = board.update(result(100.0, 40, {}, scaled_from=0, desired=4), lambda q: (4, 0))
    assert [m for _, m in events] == ["q: scale up 0 → 4 (because 4)"]
    board.update(result(101.0, 30, {"p-q-1": 0, "p-q-2": 0}, None, 4), lambda q: (4, 0))
    board.update(result(103.0, 10, {"p-q-1": 6, "p-q-2": 4}, None, 4), lambda q: (4, 0))
    figures = board.queues["q"]
    assert figures.throughput == 10 / 3  # 10 tasks completed in the 3 s the window covers
    # A worker that restarted (its count went back) is not negative throughput.
    board.update(result(104.0, 0, {"p-q-1": 1, "p-q-2": 5}, scaled_from=4, desired=2), lambda q: (2, 2))
    assert figures.throughput == 11 / 4
    assert figures.peak_workers == 4 and figures.workers == 2 and figures.stopping == 2
    assert figures.last_change == (104.0, 4, 2)
    assert [s.workers for s in board.timeline] == [4, 4, 4, 2]
    assert list(figures.history) == [40, 30, 10, 0]


def test_log_view_prints_events_and_changed_figures_only() -> None:
    board = Dashboard("t", [QueueInfo("q", "threads", 2, 0, 4)])
    board.notes = ["a note"]
    out = io.StringIO()
    view = LogView(board, out, every=0.0)
    view.show(board.update(result(100.0, 40, {}, scaled_from=0, desired=4), lambda q: (4, 0)))
    view.show(board.update(result(101.0, 40, {}, None, 4), lambda q: (4, 0)))  # nothing new
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "a note",
        "q: scale up 0 → 4 (because 4)",
        "q: backlog 40 in-flight 0 workers 4 0.0 tasks/s",
    ]
    assert "\x1b" not in out.getvalue()  # plain text, no terminal codes


def test_sparkline_percentile_and_phase_schedule() -> None:
    assert sparkline([0, 5, 10]) == "▁▅█"
    assert sparkline([0, 0]) == "▁▁"
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    assert percentile([], 95) is None
    burst = Phase("q", "t", 10, 5.0, 5.0, 0, 1)
    assert [burst.due(t) for t in (4.9, 5.0, 9.0)] == [0, 10, 10]
    stream = Phase("q", "t", 10, 0.0, 10.0, 0, 1)
    assert [stream.due(t) for t in (0.0, 2.5, 5.0, 10.0)] == [0, 2, 5, 10]


def _tls_pool(env: list[dict[str, Any]]) -> WorkerPool:
    broker = {"url": "rediss://redis:6380/0", "caFrom": {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}}
    template = {"image": "w", "env": env}
    spec = {"broker": broker, "app": "a:app", "template": template, "queues": [{"name": "q"}]}
    return WorkerPool.from_object({"kind": "WorkerPool", "metadata": {"name": "p"}, "spec": spec})


def test_local_workers_get_no_ca_file_from_a_secret_but_keep_one_the_user_gives() -> None:
    planned = plan_pool(_tls_pool([]), "rediss://127.0.0.1:6380/0")
    assert "WORKERPOOL_BROKER_CA_FILE" not in planned.workers["q"].env  # no Secret volume on this machine
    assert planned.unset_env == ("WORKERPOOL_BROKER_CA_FILE",)  # and the view says so
    assert planned.workers["q"].env["WORKERPOOL_APP"] == "a:app"
    own = plan_pool(_tls_pool([{"name": "WORKERPOOL_BROKER_CA_FILE", "value": "ca.pem"}]), "rediss://h:1/0")
    assert own.workers["q"].env["WORKERPOOL_BROKER_CA_FILE"] == "ca.pem" and own.unset_env == ()


REASON = "scale up 1 → 3: 523 waiting + 50 in flight need 3 workers of 25 (throughput policy, start-up 2.1 s)"


@pytest.mark.parametrize("width", [80, 100, 119, 120, 160])
def test_the_live_view_shows_every_figure_and_reason_whole_from_80_columns(width: int) -> None:
    """The widest figures a queue can show (draining and stopping workers, a three-digit backlog, a long reason)
    fit: no column, reason or event ends in an ellipsis, at a terminal's default 80 columns or wider."""
    board = Dashboard("workerpool-operator demo · 4 bursts over 60s · embedded redis-server", [
        QueueInfo("cpu", "prefork", 2, 0, 4), QueueInfo("io", "gevent", 25, 0, 8),
    ])  # fmt: skip
    now = time.time()
    for row in board.queues.values():
        row.backlog, row.in_flight, row.workers, row.draining, row.stopping = 523, 50, 3, 1, 1
        row.throughput, row.last_change, row.reason = 12.3, (now - 12, 1, 3), REASON
        row.history.extend([1, 5, 20, 523])
    board.event(f"io: {REASON}")
    out = io.StringIO()
    view = LiveView(board, console=Console(file=out, width=width, color_system=None))
    view.close()
    text = out.getvalue()
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= width
    flat = " ".join(text.replace("│", " ").split())
    for figure in ("in flight", "tasks/s", "last scale", "prefork ×2", "gevent ×25", "3/8", "12.3", "↑ 1→3 12s"):  # noqa: RUF001
        assert figure in flat, (figure, text)
    assert "(throughput policy, start-up 2.1 s)" in flat  # the reason's end, and the event's
