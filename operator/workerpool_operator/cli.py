"""The ``workerpool-operator`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from workerpool_operator import __version__

HANDLERS_MODULE = "workerpool_operator.kube.handlers"
NAMESPACED_ENV = "WORKERPOOL_OPERATOR_NAMESPACED"
LEASE_ENV = "WORKERPOOL_OPERATOR_LEASE"
LEASE_TIMING_ENVS = {
    "lease_duration": "WORKERPOOL_OPERATOR_LEASE_DURATION",
    "renew_deadline": "WORKERPOOL_OPERATOR_RENEW_DEADLINE",
    "retry_period": "WORKERPOOL_OPERATOR_RETRY_PERIOD",
}
EX_CONFIG = 2  # no cluster to talk to, or a bad setting: one line on stderr


def kopf_command(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The kopf command line and the extra environment for ``run``. kopf never peers (``--standalone``):
    replicas agree through the Lease instead (kube/leader.py), unless ``--standalone`` runs this one alone."""
    env_in = os.environ if environ is None else environ
    argv = ["kopf", "run", "-m", HANDLERS_MODULE, "--log-format", args.log_format, "--standalone"]
    env: dict[str, str] = {}
    if args.namespace:
        for ns in args.namespace:
            argv += ["--namespace", ns]
        # Namespaced RBAC grants nothing cluster-wide: kopf must not scan namespaces and CRDs (handlers.configure).
        env[NAMESPACED_ENV] = "1"
    else:
        argv.append("--all-namespaces")
    if args.liveness:
        argv += ["--liveness", args.liveness]
    if args.verbose:
        argv.append("--verbose")
    if not args.standalone:
        namespace = args.lease_namespace or env_in.get("POD_NAMESPACE") or "default"
        env[LEASE_ENV] = f"{namespace}/{args.lease_name}"
        for field, name in LEASE_TIMING_ENVS.items():
            value = getattr(args, field)
            if value is not None:
                env[name] = f"{value:g}"
    return argv, env


def preflight() -> str | None:
    """Why ``run`` cannot start, in one line, or ``None``: there must be a cluster to talk to."""
    from workerpool_operator.kube.api import NoClusterConfiguration, load_configuration

    try:
        load_configuration()
    except NoClusterConfiguration as error:
        return str(error)
    return None


def _run(args: argparse.Namespace) -> int:
    """Start the operator with kopf, as `kopf run -m workerpool_operator.kube.handlers` would."""
    problem = preflight()
    if problem is not None:
        print(f"workerpool-operator run: {problem}", file=sys.stderr)
        return EX_CONFIG
    argv, env = kopf_command(args)
    os.environ.update(env)
    os.execvp(sys.executable, [sys.executable, "-m", *argv])
    return 0  # pragma: no cover - execvp does not return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workerpool-operator",
        description="Run and autoscale Celery workers on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the operator against the current kubeconfig or in-cluster config")
    run.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    run.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--log-format", default="plain", choices=["plain", "full", "json"])
    run.add_argument(
        "--standalone", action="store_true", help="no leader election: this process writes alone (a local run)"
    )
    run.add_argument(
        "--lease-name", default="workerpool-operator", help="the leader-election Lease (default: %(default)s)"
    )
    run.add_argument(
        "--lease-namespace", default=None, help="the Lease's namespace (default: $POD_NAMESPACE, else default)"
    )
    run.add_argument("--lease-duration", type=float, default=None, help="seconds before a standby takes over (8)")
    run.add_argument("--renew-deadline", type=float, default=None, help="seconds the leader writes unrenewed (6)")
    run.add_argument("--retry-period", type=float, default=None, help="seconds between Lease attempts (2)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)
    _add_local_commands(sub)
    _add_simulate_command(sub)
    _add_keda_commands(sub)
    return parser


def _local(args: argparse.Namespace) -> int:
    from workerpool_operator.local import runtime

    return runtime.main(args)


def _demo(args: argparse.Namespace) -> int:
    try:
        from workerpool_operator.local import demo
    except ModuleNotFoundError as error:  # the demo's app and load generator need Celery
        print(f"workerpool-operator demo: {error}: install the worker extra (pip install -e '.[worker]')")
        return 1
    return demo.main(args)


def _add_local_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`local` and `demo`: the same WorkerPool, engine and scaling loop on this machine, no cluster."""
    view = argparse.ArgumentParser(add_help=False)
    view.add_argument(
        "--redis", metavar="URL", default=None, help="use this Redis; default: start an embedded redis-server"
    )
    view.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the live terminal view (default: when stdout is a terminal; else plain log lines)",
    )
    local = sub.add_parser(
        "local", parents=[view], help="run a WorkerPool on this machine: worker processes, real autoscaling"
    )
    local.add_argument("-f", "--file", required=True, help="the WorkerPool YAML")
    local.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds a stopping worker gets to finish its tasks (default: terminationGracePeriodSeconds)",
    )
    local.add_argument(
        "--loglevel", default=None, help="the workers' log level (default: the YAML's; their logs go to files)"
    )
    local.set_defaults(func=_local)
    demo = sub.add_parser(
        "demo", parents=[view], help="about a minute of real autoscaling: demo app, load bursts, summary"
    )
    demo.add_argument("--duration", type=float, default=60.0, help="stop after this many seconds (default 60)")
    demo.add_argument("--plot", metavar="PNG", default=None, help="write backlog and workers over time to this PNG")
    demo.set_defaults(func=_demo)


def _simulate(args: argparse.Namespace) -> int:
    from workerpool_operator.sim import command

    try:
        text = command.run_command(
            args.file,
            args.trace,
            queue=args.queue,
            policy=args.policy,
            startup_delay=args.startup_delay,
            service_time=args.service_time,
            seed=args.seed,
            replicas=args.replicas,
            acks_late=args.acks_late,
            visibility_timeout=args.visibility_timeout,
            beat=args.beat,
            out=args.out,
            plot=args.plot,
        )
    except ValueError as error:  # bad file, queue, trace or distribution: the message says which
        print(f"workerpool-operator simulate: {error}", file=sys.stderr)
        return 2
    print(text)
    return 0


def _add_simulate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`simulate`: replay a workload trace under our scaling policy or a model of KEDA's (docs/simulator.md)."""
    sim = sub.add_parser(
        "simulate", help="replay a workload trace against a simulated queue: our scaling engine or a KEDA model"
    )
    sim.add_argument("-f", "--file", required=True, help="the WorkerPool YAML (its queue's scaling settings)")
    sim.add_argument("--trace", required=True, help="CSV: `time,rate[,service_time]` or `time,duration`")
    sim.add_argument("--queue", default=None, help="which queue of the WorkerPool (default: the first)")
    sim.add_argument("--policy", choices=["ours", "keda", "both"], default="ours", help="default: ours")
    sim.add_argument(
        "--startup-delay",
        metavar="DIST",
        default="20",
        help="seconds from a pod's creation to its first task: a number or a distribution as for --service-time, "
        "e.g. uniform:10,30 (20)",
    )
    sim.add_argument(
        "--service-time",
        metavar="DIST",
        default=None,
        help="task durations: exp:MEAN, const:S, uniform:LOW,HIGH, lognormal:MEAN,SIGMA "
        "(default: the trace's own, else exp:1)",
    )
    sim.add_argument("--seed", type=int, default=1, help="random seed: same seed, same run (1)")
    sim.add_argument("--replicas", type=int, default=None, help="replicas at the start (default: min replicas)")
    sim.add_argument(
        "--acks-late",
        action="store_true",
        help="tasks are acks_late: prefetch counts running tasks, and a killed task comes back after the "
        "visibility timeout instead of being lost",
    )
    sim.add_argument(
        "--visibility-timeout", type=float, default=3600.0, help="seconds before a killed acks_late task comes back"
    )
    sim.add_argument(
        "--beat",
        metavar="CRON",
        action="append",
        default=[],
        help="a periodic task's cron, announced to our engine as Celery beat announces its fires (repeatable)",
    )
    sim.add_argument("--out", metavar="CSV", default=None, help="write the timeline to this CSV")
    sim.add_argument("--plot", metavar="PNG", default=None, help="write backlog and replicas over time to this PNG")
    sim.set_defaults(func=_simulate)


def _add_keda_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`record` and `from-keda`: a trace from a live broker, and a WorkerPool from a KEDA ScaledObject."""
    from workerpool_operator.keda_command import add_from_keda_command
    from workerpool_operator.record.recording import add_record_command

    add_record_command(sub)
    add_from_keda_command(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
