"""kube/disruptions.py: which busy pods get protected from voluntary node disruption (and how often that writes),
and which vanished workers were lost with their tasks."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from workerpool_operator.kube.disruptions import (
    MIN_WRITE_INTERVAL,
    STOPPED_AT_GRACE,
    WORKER_LOST,
    Lost,
    Marks,
    protection,
    vanished,
)
from workerpool_operator.observation import WorkerLoad


def busy(name: str, running: int = 1) -> WorkerLoad:
    return WorkerLoad(f"celery@{name}", running=running, concurrency=2)


def test_a_worker_busy_long_enough_is_protected_once_and_released_once_idle() -> None:
    marks: dict[str, Marks] = {}
    writes = []
    for second in range(0, 200, 2):  # a poll every 2 s: busy for 150 s, then idle
        worker = busy("pod-a", running=1 if second < 150 else 0)
        todo = protection([worker], marks, float(second), after=60.0)
        writes += [(second, "protect", p) for p in todo.protect] + [(second, "release", p) for p in todo.release]
        marks = dict(todo.marks)
    assert writes == [(60, "protect", "pod-a"), (150, "release", "pod-a")]


def test_short_tasks_never_protect_a_pod() -> None:
    marks: dict[str, Marks] = {}
    for second in range(0, 600, 2):  # busy 40 s of every 50: never 60 s in a row
        todo = protection([busy("pod-b", running=1 if second % 50 < 40 else 0)], marks, float(second), after=60.0)
        assert todo.protect == () and todo.release == ()
        marks = dict(todo.marks)


def test_zero_protects_none_and_a_gone_pod_is_forgotten() -> None:
    todo = protection([busy("pod-c")], {"pod-c": Marks(busy_since=0.0)}, 1000.0, after=0.0)
    assert todo.protect == ()
    gone = protection([], {"pod-d": Marks(0.0, True, 0.0)}, 1000.0)
    assert gone.marks == {} and gone.release == ()  # its marks went with the pod


@given(st.lists(st.tuples(st.booleans(), st.floats(0.5, 20.0)), max_size=200))
def test_a_pod_is_never_written_twice_within_the_write_interval(polls: list[tuple[bool, float]]) -> None:
    marks: dict[str, Marks] = {}
    now, written = 0.0, []
    for running, step in polls:
        now += step
        todo = protection([busy("pod-e", running=int(running))], marks, now, after=5.0)
        written += [now] * (len(todo.protect) + len(todo.release))
        marks = dict(todo.marks)
    assert all(b - a >= MIN_WRITE_INTERVAL for a, b in itertools.pairwise(written))
    assert len(written) <= 2 * (1 + now // MIN_WRITE_INTERVAL)


def test_a_report_that_aged_out_with_tasks_is_a_lost_worker_and_a_clean_exit_is_not() -> None:
    now = 10_000.0
    killed = WorkerLoad("w-killed", running=2, reserved=1, heartbeat=now - 15.0)
    clean = WorkerLoad("w-clean", running=1, heartbeat=now - 2.5)  # deleted its report on exit, with tasks done
    stopped = WorkerLoad("w-stopping", running=1, heartbeat=now - 16.0, stopping=True)
    removed = WorkerLoad("w-removed", running=1, heartbeat=now - 15.0)  # a scale-down of ours
    idle = WorkerLoad("w-idle", heartbeat=now - 15.0)
    still = WorkerLoad("w-here", running=3, heartbeat=now - 15.0)
    found = vanished([killed, clean, stopped, removed, idle, still], [still], {"w-removed"}, now)
    assert found == [Lost("w-killed", 2, 1, WORKER_LOST), Lost("w-stopping", 1, 0, STOPPED_AT_GRACE)]
