"""The ``workerpool-operator simulate`` command: read a WorkerPool and a trace, run, print. File I/O only here."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import yaml

from workerpool_operator.engine.schedules import check_cron
from workerpool_operator.sim.output import format_summary, plot_timeline, write_timeline
from workerpool_operator.sim.simulate import PolicyName, QueueSetup, SimResult, simulate
from workerpool_operator.sim.trace import TraceError, draw_tasks, parse_distribution, read_trace
from workerpool_operator.spec import SpecError, WorkerPool

DEFAULT_SERVICE_TIME = "exp:1"
DEFAULT_STARTUP = "20"


class SimulationError(ValueError):
    """Bad input to the simulate command (file, queue, trace); the message says what to fix."""


def load_setup(path: str, queue: str | None) -> tuple[str, QueueSetup]:
    """The pool's name and one queue's setup, read from a WorkerPool YAML file (other documents are skipped)."""
    try:
        with open(path) as handle:
            documents = [d for d in yaml.safe_load_all(handle) if isinstance(d, dict)]
    except OSError as exc:  # worded as `local` words it: one convention for the CLI
        raise SimulationError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SimulationError(f"{path} is not valid YAML{where}: {problem}") from None
    pools = [d for d in documents if d.get("kind") == "WorkerPool"]
    if len(pools) != 1:
        found = "no WorkerPool" if not pools else f"{len(pools)} WorkerPools"
        raise SimulationError(f"{path}: expected one WorkerPool, found {found}")
    try:
        pool = WorkerPool.from_object(pools[0])
    except SpecError as exc:
        raise SimulationError(f"{path}: {exc}") from None
    name = queue or pool.spec.queues[0].name
    try:
        setup = setup_for(pool, name)
    except KeyError as exc:
        raise SimulationError(f"{path}: {exc.args[0]}") from None
    return pool.name, setup


def setup_for(pool: WorkerPool, queue: str) -> QueueSetup:
    """One queue of a parsed WorkerPool as the simulator needs it (raises KeyError for an unknown queue)."""
    spec = pool.spec
    queue_spec = spec.queue(queue)
    return QueueSetup(
        queue,
        spec.policy_for(queue),
        queue_spec.concurrency,
        spec.poll_interval_for(queue),
        prefetch_multiplier=queue_spec.prefetch_multiplier,
        grace=float(spec.template.termination_grace_period_seconds),
    )


def without_draining(setup: QueueSetup) -> QueueSetup:
    """The same queue with drainTimeoutSeconds 0: scale-downs remove the idlest pods at once."""
    return dataclasses.replace(setup, policy=dataclasses.replace(setup.policy, drain_timeout=0.0))


def run_command(
    filename: str,
    trace_path: str,
    *,
    queue: str | None = None,
    policy: str = "ours",
    startup_delay: str = DEFAULT_STARTUP,
    service_time: str | None = None,
    seed: int = 1,
    replicas: int | None = None,
    acks_late: bool = False,
    visibility_timeout: float = 3600.0,
    out: str | None = None,
    plot: str | None = None,
    beat: Sequence[str] = (),
) -> str:
    """What ``workerpool-operator simulate`` does; returns the text to print. Raises ``ValueError`` subclasses
    (``SimulationError``, ``TraceError``) with a message for the user."""
    pool, setup = load_setup(filename, queue)
    try:
        parse_distribution(startup_delay, allow_zero=True)
    except TraceError as exc:
        raise SimulationError(f"--startup-delay: {exc}") from None
    if replicas is not None and replicas < 0:
        raise SimulationError(f"--replicas must not be negative, got {replicas}")
    if visibility_timeout < 0:
        raise SimulationError(f"--visibility-timeout must not be negative, got {visibility_timeout:g}")
    for cron in beat:
        if (problem := check_cron(cron)) is not None:
            raise SimulationError(f"--beat {cron!r}: {problem}")
    trace = read_trace(trace_path)
    tasks = draw_tasks(trace, DEFAULT_SERVICE_TIME, seed, override=service_time)
    names: list[PolicyName] = ["ours", "keda"] if policy == "both" else [policy]  # type: ignore[list-item]
    options = {
        "startup_delay": startup_delay,
        "trace_end": trace.end,
        "initial_replicas": replicas,
        "acks_late": acks_late,
        "visibility_timeout": visibility_timeout,
        "seed": seed,
        "beat": tuple(beat),
    }
    results = [simulate(tasks, setup, name, **options) for name in names]  # type: ignore[arg-type]
    p = setup.policy
    lines = [
        f"queue {setup.name} of WorkerPool {pool}: concurrency {setup.concurrency}, prefetch multiplier "
        f"{setup.prefetch_multiplier}, policy {p.policy}, replicas {p.min_replicas}..{p.max_replicas}, poll every "
        f"{setup.poll_interval:g}s, grace {setup.grace:g}s, drain timeout {p.drain_timeout:g}s",
        f"trace {trace_path}: {len(tasks):,} tasks over {trace.end / 3600:.2f} h; pod start-up {startup_delay} s; "
        f"acks_late {'on' if acks_late else 'off'}; seed {seed}",
        "",
        format_summary(results),
    ]
    if "ours" in names and p.drain_timeout > 0:
        plain: SimResult = simulate(tasks, without_draining(setup), "ours", **options)  # type: ignore[arg-type]
        lines.append(
            f"\nwithout draining (drainTimeoutSeconds: 0) ours kills {plain.killed} task(s) "
            f"(wait p95 {plain.wait_percentile(95):.1f} s, {plain.replica_seconds:,.0f} replica-seconds)"
        )
    if out:
        write_timeline(out, results)
        lines.append(f"\ntimeline written to {out}")
    if plot:
        plot_timeline(plot, results, f"{pool}/{setup.name} on {trace_path.rsplit('/', 1)[-1]}")
        lines.append(f"plot written to {plot}")
    return "\n".join(lines)
