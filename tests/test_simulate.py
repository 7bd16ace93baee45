"""The trace simulator: exact small scenarios, the KEDA model, trace parsing, and the `simulate` command."""

from __future__ import annotations

import csv
import heapq
from pathlib import Path

import pytest

from workerpool_operator.cli import main
from workerpool_operator.engine import ScalingPolicy, Schedule
from workerpool_operator.sim.cluster import Cluster, WorkerModel
from workerpool_operator.sim.command import without_draining
from workerpool_operator.sim.keda_model import KedaSettings, KedaState, hpa_sync, keda_poll
from workerpool_operator.sim.simulate import QueueSetup, simulate
from workerpool_operator.sim.trace import TraceError, draw_tasks, parse_service_time, parse_trace, read_trace

REPO = Path(__file__).resolve().parent.parent
TRACES = REPO / "examples" / "traces"


def setup(concurrency: int = 1, poll: float = 2.0, **policy: object) -> QueueSetup:
    return QueueSetup("q", ScalingPolicy(**policy), concurrency, poll)  # type: ignore[arg-type]


# --- the simulation itself -------------------------------------------------------------------------------


def test_a_task_on_a_sleeping_queue_waits_for_a_pod_to_start() -> None:
    result = simulate([(0.0, 5.0)], setup(target_per_replica=1), "ours", startup_delay=20.0)
    assert result.waits == [20.0]
    assert result.finished == 1
    # woken at 0, ready at 20, done at 25, idle in the report of 26.76 (seen at the poll at 28); no task comes
    # within a start-up: drained at once (asked at 28, read by the worker at 28.76), removed at the poll at 30,
    # gone 2 s later (its exit)
    assert result.replica_seconds == pytest.approx(32.0)
    assert result.scale_events == 2
    assert [row.desired for row in result.timeline][:2] == [1, 1]
    assert result.timeline[-1].pods == 0


def test_tasks_queue_behind_a_busy_worker() -> None:
    policy = {"min_replicas": 1, "max_replicas": 1, "target_per_replica": 1}
    result = simulate([(0.0, 10.0), (0.0, 10.0), (1.0, 10.0)], setup(**policy), "ours", initial_replicas=1)
    assert result.waits == [0.0, 10.0, 19.0]
    assert result.wait_percentile(50) == 10.0
    assert result.max_wait == 19.0
    assert result.replica_seconds == pytest.approx(30.0)  # min 1: the run ends once the work is done


def test_concurrency_runs_tasks_side_by_side_and_a_scale_down_lets_running_tasks_finish() -> None:
    tasks = [(0.0, 300.0)] * 4 + [(1.0, 1.0)]
    queue = setup(concurrency=2, max_replicas=4, target_per_replica=2)
    result = simulate(tasks, queue, "ours", startup_delay=10.0, acks_late=True)
    assert result.finished == 5
    assert max(result.waits) <= 12.0  # acks_late: each pod holds only what it runs; three pods take everything
    assert max(row.pods for row in result.timeline) >= 2
    assert result.killed == 0 and result.drains >= 1


def test_prefetched_tasks_wait_inside_a_busy_worker_unless_it_hands_them_back() -> None:
    """Celery's default early acknowledgement: a busy worker of concurrency 2 still reserves 2 more tasks,
    and they wait for its slots while the pods started for them are idle, unless the engine has the busy
    worker hand them back (tasks that have run 30 s by then: long ones)."""
    tasks = [(0.0, 300.0)] * 4
    queue = setup(concurrency=2, max_replicas=4, target_per_replica=2)
    kept = simulate(tasks, without_draining(queue), "ours", startup_delay=10.0)
    assert sorted(kept.waits) == [10.0, 10.0, 310.0, 310.0]
    handed = simulate(tasks, queue, "ours", startup_delay=10.0)
    # asked at the poll at 44, the first whose reports (2 s apart, up to 2 s old) add up to 30 s of running; done
    # at the worker's next report, 0.76 s later
    assert sorted(handed.waits) == pytest.approx([10.0, 10.0, 44.764, 44.764], abs=1e-3)
    late = simulate(tasks, queue, "ours", startup_delay=10.0, acks_late=True)
    assert max(late.waits) < 15.0


def test_the_same_seed_gives_the_same_run(tmp_path: Path) -> None:
    trace = read_trace(str(TRACES / "burst.csv"))
    first = simulate(draw_tasks(trace, "exp:1", seed=3), setup(8, max_replicas=20, target_per_replica=8), "ours")
    again = simulate(draw_tasks(trace, "exp:1", seed=3), setup(8, max_replicas=20, target_per_replica=8), "ours")
    other = draw_tasks(trace, "exp:1", seed=4)
    assert (first.waits, first.replica_seconds, first.timeline) == (again.waits, again.replica_seconds, again.timeline)
    assert other != draw_tasks(trace, "exp:1", seed=3)


def test_counting_in_flight_serves_long_tasks_better_than_the_list_length() -> None:
    """KEDA's trigger sees only waiting tasks: with long tasks it stops adding pods while tasks still wait."""
    trace = read_trace(str(TRACES / "long.csv"))
    tasks = draw_tasks(trace, "exp:1", seed=1)
    queue = setup(2, max_replicas=10, target_per_replica=2)
    ours, keda = (simulate(tasks, queue, name, trace_end=trace.end, acks_late=True) for name in ("ours", "keda"))
    assert ours.finished == len(tasks)
    assert ours.wait_percentile(95) < keda.wait_percentile(95) / 10
    # KEDA's list-only trigger scales busy pods away: their tasks are killed at the grace period and come
    # back an hour later (to be killed again, some of them); ours drains and kills nothing
    assert ours.killed == ours.lost == 0
    assert keda.killed > 10 and keda.redelivered > 10 and keda.lost == 0


def test_unstarted_tasks_count_with_their_wait_so_far() -> None:
    result = simulate([(0.0, 1.0)] * 3, setup(max_replicas=0), "ours", drain_limit=50.0)
    assert result.finished == 0
    assert result.waits == [50.0, 50.0, 50.0]


# --- the KEDA model ---------------------------------------------------------------------------------------


def test_keda_activates_from_zero_and_cools_down_to_zero() -> None:
    settings = KedaSettings(list_length=5)
    action, state = keda_poll(3, 0, KedaState(), settings, 0.0)
    assert action.desired_replicas == 1
    action, state = keda_poll(0, 4, state, settings, 290.0)
    assert action.desired_replicas == 4
    action, state = keda_poll(0, 4, state, settings, 300.0)
    assert action.desired_replicas == 0
    assert "inactive for 300s" in action.reason


def test_hpa_tolerance_step_limit_and_window() -> None:
    settings = KedaSettings(list_length=10, max_replicas=100)
    within, _ = hpa_sync(105, 10, KedaState(), settings, 0.0)  # 105 / (10 * 10) = 1.05: inside 10 %
    assert within.desired_replicas == 10
    up, state = hpa_sync(1000, 3, KedaState(), settings, 0.0)  # wants 100; max(3 + 4, 6) = 7
    assert up.desired_replicas == 7
    held, state = hpa_sync(1000, 7, state, settings, 10.0)  # same 15 s period: still counted from 3
    assert held.desired_replicas == 7
    down, state = hpa_sync(0, 7, state, settings, 200.0)  # highest in the last 300 s: 100, capped by replicas
    assert down.desired_replicas == 7
    later, _ = hpa_sync(0, 7, state, settings, 311.0)  # the 100 recommended at t=10 has left the window
    assert later.desired_replicas == 1  # the HPA never goes below 1; zero is KEDA's cooldown
    idle, _ = hpa_sync(50, 0, KedaState(), settings, 0.0)
    assert idle.desired_replicas == 0  # the HPA does nothing at zero replicas


def test_keda_settings_follow_the_pool_for_a_fair_comparison() -> None:
    settings = KedaSettings.like(ScalingPolicy(min_replicas=1, max_replicas=7, target_per_replica=4))
    assert (settings.min_replicas, settings.max_replicas, settings.list_length) == (1, 7, 4)
    assert (settings.polling_interval, settings.cooldown_period, settings.hpa_sync_period) == (30.0, 300.0, 15.0)
    assert settings.activation_list_length == 0  # our activation 1 = KEDA's "longer than 0"


# --- traces ------------------------------------------------------------------------------------------------


def test_rate_trace_segments_and_arrivals() -> None:
    trace = parse_trace("# a comment\ntime,rate,service_time\n0,2,const:1\n100,0,\n200,10\n300,0\n")
    assert [(s.start, s.end, s.rate, s.service_time) for s in trace.segments] == [
        (0.0, 100.0, 2.0, "const:1"),
        (100.0, 200.0, 0.0, None),
        (200.0, 300.0, 10.0, None),
    ]
    assert trace.end == 300.0
    tasks = draw_tasks(trace, "const:7", seed=1)
    first = [t for t in tasks if t[0] < 100]
    last = [t for t in tasks if t[0] >= 200]
    assert not [t for t in tasks if 100 <= t[0] < 200]
    assert abs(len(first) - 200) < 5 * 200**0.5 and abs(len(last) - 1000) < 5 * 1000**0.5
    assert {d for _, d in first} == {1.0} and {d for _, d in last} == {7.0}
    assert [a for a, _ in tasks] == sorted(a for a, _ in tasks)
    overridden = draw_tasks(trace, "const:7", seed=1, override="const:3")
    assert [a for a, _ in overridden] == [a for a, _ in tasks]  # arrivals keep their own random stream
    assert {d for _, d in overridden} == {3.0}


def test_task_trace() -> None:
    trace = parse_trace("time,duration\n0,30\n5.5,600\n")
    assert trace.explicit and trace.end == 5.5
    assert draw_tasks(trace, "exp:1", seed=1) == [(0.0, 30.0), (5.5, 600.0)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty trace"),
        ("when,what\n1,2\n", "line 1: header must be"),
        ("time,rate\n0,1\n", "at least two rows"),
        ("time,rate\n0,1\n10,fast\n", "line 3: rate must be a non-negative number, got 'fast'"),
        ("time,rate\n10,1\n5,1\n", "line 3: time 5 goes backwards"),
        ("time,duration\n0,-1\n", "line 2: duration must be a non-negative number, got '-1'"),
        ("time,duration\n0,fast\n", "line 2: duration must be a non-negative number, got 'fast'"),
        ("time,duration\n0,1,2\n", "line 2: expected 2 values, got 3"),
        ("time,rate,service_time\n0,1,gamma:2\n9,0\n", "line 2: service time 'gamma:2'"),
    ],
)
def test_bad_traces_say_where_and_why(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message.replace("(", r"\(")):
        parse_trace(text, name="t.csv")


def test_service_time_distributions() -> None:
    import random

    rng = random.Random(1)
    assert parse_service_time("2.5")(rng) == 2.5
    assert parse_service_time("const:4")(rng) == 4.0
    assert 1.0 <= parse_service_time("uniform:1,3")(rng) <= 3.0
    draws = [parse_service_time("lognormal:2,0.5")(rng) for _ in range(20000)]
    assert sum(draws) / len(draws) == pytest.approx(2.0, rel=0.03)
    draws = [parse_service_time("exp:0.5")(rng) for _ in range(20000)]
    assert sum(draws) / len(draws) == pytest.approx(0.5, rel=0.03)
    for bad in ("exp:0", "exp:-1", "uniform:3,1", "lognormal:2", "normal:1", "exp:abc", "exp:inf"):
        with pytest.raises(TraceError, match="service time"):
            parse_service_time(bad)


def test_the_shipped_traces_parse() -> None:
    for path in sorted(TRACES.glob("*.csv")):
        trace = read_trace(str(path))
        assert trace.end > 0 and trace.expected_tasks() > 10, path.name


# --- the command -------------------------------------------------------------------------------------------

POOL = """
apiVersion: v1
kind: Secret
metadata: {name: shop-broker}
stringData: {url: "redis://redis:6379/0"}
---
apiVersion: workerpool.dev/v1alpha1
kind: WorkerPool
metadata: {name: shop}
spec:
  broker: {urlFrom: {secretKeyRef: {name: shop-broker, key: url}}}
  app: shop.celery:app
  template: {image: "registry.example/shop:1"}
  queues:
    - {name: emails, concurrency: 8, maxReplicas: 20}
    - {name: reports, concurrency: 2, maxReplicas: 10, scaling: {scaleDownStabilizationSeconds: 120}}
"""


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    path = tmp_path / "pool.yaml"
    path.write_text(POOL)
    return path


def test_simulate_command_compares_both_policies_and_writes_timeline_and_plot(
    pool_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plot = tmp_path / "timeline.csv", tmp_path / "plot.png"
    argv = ["simulate", "-f", str(pool_file), "--trace", str(TRACES / "burst.csv"), "--policy", "both"]
    assert main([*argv, "--out", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "queue emails of WorkerPool shop: concurrency 8, prefetch multiplier 1, policy throughput, " in text
    assert "replicas 0..20, poll every 2s, grace 30s, drain timeout 3600s" in text
    for row in ("task wait p95", "replica-seconds", "÷ physical minimum", "scale events", "tasks killed"):
        assert row in text
    assert "without draining (drainTimeoutSeconds: 0) ours kills" in text
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["policy"] for row in rows} == {"ours", "keda"}
    assert any(row["reason"].startswith("scale up: backlog") for row in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000


def test_simulate_command_uses_the_named_queue(pool_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "-f", str(pool_file), "--trace", str(TRACES / "long.csv"), "--queue", "reports"]
    assert main([*argv, "--policy", "keda", "--startup-delay", "5", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert "queue reports of WorkerPool shop: concurrency 2" in text
    assert "pod start-up 5 s; acks_late off; seed 2" in text and "keda" in text


@pytest.mark.parametrize(
    ("extra", "trace", "message"),
    [
        (["--queue", "nope"], "burst.csv", "no queue 'nope'"),
        ([], "missing.csv", "cannot read the trace"),
        (["--service-time", "exp:-2"], "burst.csv", "service time 'exp:-2'"),
        (["--startup-delay", "-1"], "burst.csv", "--startup-delay: service time '-1'"),
        (["--startup-delay", "uniform:30,10"], "burst.csv", "--startup-delay: service time 'uniform:30,10'"),
    ],
)
def test_simulate_command_reports_bad_input(
    pool_file: Path, extra: list[str], trace: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "-f", str(pool_file), "--trace", str(TRACES / trace), *extra]) == 2
    assert message in capsys.readouterr().err


def test_simulate_command_rejects_a_file_without_one_workerpool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert main(["simulate", "-f", str(path), "--trace", str(TRACES / "burst.csv")]) == 2
    assert "expected one WorkerPool, found no WorkerPool" in capsys.readouterr().err
    path.write_text("kind: WorkerPool\nmetadata: {name: x}\nspec: {queues: []}\n")
    assert main(["simulate", "-f", str(path), "--trace", str(TRACES / "burst.csv")]) == 2
    assert "spec" in capsys.readouterr().err


# --- the workers: prefetch, drain, grace, kills ----------------------------------------------------------


def run_events(cluster: Cluster) -> None:
    while cluster.heap:
        time, kind, _, pod, task = heapq.heappop(cluster.heap)
        cluster.now = time
        cluster.handle(kind, pod, task)


def test_a_task_killed_at_the_grace_period_comes_back_after_the_visibility_timeout() -> None:
    cluster = Cluster(
        [(0.0, 100.0)], "q", WorkerModel(concurrency=1, acks_late=True, grace=30.0, visibility_timeout=50.0)
    )
    pod = cluster.create_pod(0.0)
    cluster.arrive(0)
    assert pod.running == {0}
    cluster.now = 10.0
    cluster.terminate(pod)  # SIGTERM at 10: killed at 40, back in the list at 90
    run_events(cluster)
    assert (cluster.killed, cluster.redelivered, cluster.lost, cluster.finished) == (1, 1, 0, 0)
    assert list(cluster.queue) == [0] and cluster.pod_seconds(90.0) == 40.0


def test_without_acks_late_a_killed_task_is_lost() -> None:
    cluster = Cluster([(0.0, 100.0)], "q", WorkerModel(concurrency=1, grace=30.0))
    pod = cluster.create_pod(0.0)
    cluster.arrive(0)
    cluster.terminate(pod)
    run_events(cluster)
    assert (cluster.killed, cluster.lost, cluster.redelivered) == (1, 1, 0) and not cluster.queue


def test_a_draining_worker_hands_back_what_it_prefetched_and_finishes_what_it_runs() -> None:
    cluster = Cluster([(0.0, 10.0)] * 3, "q", WorkerModel(concurrency=1, prefetch_multiplier=1, report_interval=0.0))
    first = cluster.create_pod(0.0)
    for task in range(3):
        cluster.arrive(task)
    assert (first.running, list(first.reserved), list(cluster.queue)) == ({0}, [1], [2])  # 1 runs, 1 reserved
    cluster.ask_drain(first)  # reports read live: the worker drains at once
    assert list(cluster.queue) == [1, 2]  # handed back to the head of the list, in order
    second = cluster.create_pod(0.0)
    assert second.running == {1} and list(second.reserved) == [2]
    run_events(cluster)
    assert cluster.finished == 3 and cluster.killed == 0 and first.done == 1


def test_start_up_delays_are_drawn_from_a_seeded_distribution() -> None:
    trace = read_trace(str(TRACES / "burst.csv"))
    tasks = draw_tasks(trace, "exp:1", seed=1)[:3000]
    queue = setup(8, max_replicas=20, target_per_replica=8)
    runs = [simulate(tasks, queue, "ours", startup_delay="uniform:5,60", seed=seed) for seed in (1, 1, 2)]
    assert runs[0].replica_seconds == runs[1].replica_seconds
    assert runs[0].replica_seconds != runs[2].replica_seconds


def test_tasks_that_round_to_zero_are_accepted_and_counted() -> None:
    trace = parse_trace("time,duration\n0,0.000\n1,0\n2,4\n")
    result = simulate(draw_tasks(trace, "exp:1", seed=1), setup(2, target_per_replica=2), "ours", startup_delay=0)
    assert result.finished == 3
    assert result.physical_minimum == 2.0  # 4 s of work on 2 slots
    assert result.cost_ratio == result.replica_seconds / 2.0


def test_a_schedule_prewarms_for_a_beat_spike() -> None:
    trace = read_trace(str(TRACES / "beat.csv"))
    tasks = [t for t in draw_tasks(trace, "exp:1", seed=1) if t[0] < 4000]
    hourly = Schedule("0 * * * *", duration=120.0, replicas=20)
    plain, warmed = (
        simulate(tasks, setup(4, max_replicas=20, target_per_replica=4, schedules=s), "ours", startup_delay=10)
        for s in ((), (hourly,))
    )
    assert warmed.wait_percentile(95) < plain.wait_percentile(95) * 0.8
    spike = [row for row in warmed.timeline if 3590 <= row.time < 3600]
    assert spike and min(row.ready for row in spike) == 20  # ready before the top of the hour


def test_beats_announced_fires_pre_warm_the_spikes_after_the_first() -> None:
    """The hourly beat trace: the engine learns each fire's size from the last and is ready for the next."""
    import yaml

    from workerpool_operator.sim.command import setup_for
    from workerpool_operator.sim.simulate import EPOCH, announced_fires
    from workerpool_operator.spec import WorkerPool

    trace = read_trace(str(REPO / "examples" / "traces" / "beat.csv"))
    tasks = draw_tasks(trace, "exp:1", 1)
    pool = yaml.safe_load((REPO / "examples" / "beat.yaml").read_text())
    del pool["spec"]["queues"][0]["scaling"]["schedules"]  # beat's announcements alone
    setup = setup_for(WorkerPool.from_object(pool), "hourly")

    def spike_waits(beat: tuple[str, ...]) -> list[float]:
        result = simulate(tasks, setup, "ours", startup_delay=10, trace_end=trace.end, beat=beat)
        assert result.finished == len(tasks) and result.killed == 0
        return sorted(w for (a, _), w in zip(tasks, result.waits, strict=True) if 2 * 3600 <= a < 2 * 3600 + 10)

    blind, warned = spike_waits(()), spike_waits(("0 * * * *",))
    p95 = lambda waits: waits[int(0.95 * len(waits))]  # noqa: E731
    assert p95(warned) < p95(blind) - 5, (p95(warned), p95(blind))
    fires = announced_fires(("0 * * * *",), EPOCH + 3000)
    assert fires == ((EPOCH + 3600, "0 * * * *"),)


def test_the_operator_reads_what_a_worker_last_reported_not_what_it_does_now() -> None:
    """Workers report every 2 s, each at its own phase: a task that ended after the last report still runs
    for the operator, and a drain request is read (and obeyed) only at the worker's next report."""
    cluster = Cluster([(0.0, 1.0), (0.0, 1.0)], "q", WorkerModel(concurrency=1, report_interval=2.0))
    pod = cluster.create_pod(0.0)  # ready at 0: its first report at once, then at 0.76, 2.76, ...
    cluster.arrive(0)
    cluster.now = 0.5
    assert cluster.report_of(pod)[:3] == (0, 0, 0)  # the report at ready was before the task came
    cluster.now = 0.9
    report = cluster.report_of(pod)
    assert report[:4] == (1, 0, 0, False) and report[4] == pytest.approx(0.764, abs=1e-3)
    run_events(cluster)  # the task ends at 1.0
    cluster.now = 2.0
    assert cluster.report_of(pod)[:3] == (1, 0, 0)  # still running, as far as the operator knows
    cluster.now = 2.8
    assert cluster.report_of(pod)[:3] == (0, 0, 1)
    cluster.ask_drain(pod)
    cluster.arrive(1)  # before the worker reads its request: it takes the task
    assert pod.running == {1} and not pod.draining
    run_events(cluster)
    assert pod.draining and cluster.report_of(pod)[3]  # read at 4.76, and said at once


def test_a_removed_pod_costs_until_its_worker_has_exited() -> None:
    model = WorkerModel(concurrency=1, exit_seconds=1.5)
    cluster = Cluster([(0.0, 4.0)], "q", model)
    busy, idle = cluster.create_pod(0.0), cluster.create_pod(0.0)
    cluster.arrive(0)
    assert busy.running == {0} and not idle.running
    cluster.terminate(idle)  # exits 1.5 s after SIGTERM
    cluster.terminate(busy)  # its task ends at 4, the worker exits at 5.5
    run_events(cluster)
    assert not cluster.pods and cluster.finished == 1
    assert cluster.pod_seconds(10.0) == pytest.approx(1.5 + 5.5)
