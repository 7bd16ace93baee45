"""The ``workerpool-operator`` command line: ``run`` (the operator), ``local`` and ``demo`` (a pool on this machine),
``simulate`` (a trace against the engine).

Every subcommand follows one convention (:mod:`workerpool_operator.exit_codes`, in each ``--help``): what went
wrong is one line on stderr, and the exit code says which kind of problem it was.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from workerpool_operator import __version__, exit_codes

if TYPE_CHECKING:
    from workerpool_operator.kube.settings import OperatorSettings

DEFAULT_LEASE_NAME = "workerpool-operator"


def run_settings(args: argparse.Namespace) -> OperatorSettings:
    """The operator's settings from ``run``'s flags over the environment (raises ``SettingsError``).

    ``run`` elects a leader unless ``--standalone``: its Lease is ``--lease-namespace`` (else ``POD_NAMESPACE``,
    else ``default``) / ``--lease-name``; with neither flag, a ``WORKERPOOL_OPERATOR_LEASE`` of the environment is
    used as it is."""
    from workerpool_operator.kube.settings import POD_NAMESPACE_ENV, env_name, load_settings

    env = os.environ
    given: dict[str, object] = {}
    if args.namespace:
        given["namespaces"] = tuple(args.namespace)
    for field in ("liveness", "log_format", "lease_duration", "renew_deadline", "retry_period"):
        if getattr(args, field) is not None:
            given[field] = getattr(args, field)
    if args.verbose:
        given["verbose"] = True
    if args.standalone:
        given["lease"] = None
    elif args.lease_name or args.lease_namespace or not env.get(env_name("lease")):
        namespace = args.lease_namespace or env.get(POD_NAMESPACE_ENV) or "default"
        given["lease"] = f"{namespace}/{args.lease_name or DEFAULT_LEASE_NAME}"
    return load_settings(**given)


def _run(args: argparse.Namespace) -> int:
    """Check the settings and the cluster, then run kopf in this process with the handlers."""
    from workerpool_operator.kube import handlers, preflight
    from workerpool_operator.kube.settings import SettingsError

    def fail(message: str, code: int) -> int:
        print(f"workerpool-operator run: {message}", file=sys.stderr)
        return code

    try:
        settings = run_settings(args)
    except SettingsError as error:
        return fail(str(error), exit_codes.BAD_INPUT)
    try:
        configuration = preflight.cluster_configuration()
    except preflight.BadConfiguration as error:
        return fail(str(error), exit_codes.BAD_INPUT)
    handlers.configure_logging(settings)
    try:
        preflight.check_cluster(configuration, settings.crd_wait)
    except preflight.ClusterUnavailable as error:
        return fail(str(error), exit_codes.UNAVAILABLE)
    except KeyboardInterrupt:
        return exit_codes.FAILED
    handlers.run_operator(settings)
    return exit_codes.OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workerpool-operator",
        description="Run and autoscale Celery workers on Kubernetes.",
        epilog=exit_codes.EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_command(sub)
    _add_local_commands(sub)
    _add_simulate_command(sub)
    return parser


def _add_run_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`run`: the operator. Every flag is also a WORKERPOOL_OPERATOR_* variable (docs/operations.md, "Operator
    settings"); a flag given wins over its variable."""
    run = sub.add_parser(
        "run",
        help="run the operator against the current kubeconfig or in-cluster config",
        description="Run the operator: serve WorkerPools, scale their workers. Every setting is also an environment "
        "variable (WORKERPOOL_OPERATOR_<NAME>, e.g. WORKERPOOL_OPERATOR_METRICS_PORT); a flag given wins over it.",
        epilog=exit_codes.EPILOG,
    )
    run.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="serve only this namespace (repeatable; kopf then scans no namespaces or CRDs); default: every "
        "namespace [env WORKERPOOL_OPERATOR_NAMESPACES, comma-separated]",
    )
    run.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="health endpoint, e.g. http://0.0.0.0:8080/healthz; default: none [env WORKERPOOL_OPERATOR_LIVENESS]",
    )
    run.add_argument(
        "--log-format",
        default=None,
        choices=["plain", "full", "json"],
        help="plain (message only), full (with time and level) or json (one object per line); default: plain "
        "[env WORKERPOOL_OPERATOR_LOG_FORMAT]",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging: every handler run and API request [env WORKERPOOL_OPERATOR_VERBOSE]",
    )
    run.add_argument(
        "--standalone", action="store_true", help="no leader election: this process writes alone (a run from a laptop)"
    )
    run.add_argument("--lease-name", default=None, help=f"the leader-election Lease; default: {DEFAULT_LEASE_NAME}")
    run.add_argument(
        "--lease-namespace", default=None, help="the Lease's namespace; default: $POD_NAMESPACE, else default"
    )
    run.add_argument(
        "--lease-duration",
        type=float,
        default=None,
        metavar="S",
        help="seconds before a standby takes over; default: 8 [env WORKERPOOL_OPERATOR_LEASE_DURATION]",
    )
    run.add_argument(
        "--renew-deadline",
        type=float,
        default=None,
        metavar="S",
        help="seconds the leader writes without a renewal; default: 6 [env WORKERPOOL_OPERATOR_RENEW_DEADLINE]",
    )
    run.add_argument(
        "--retry-period",
        type=float,
        default=None,
        metavar="S",
        help="seconds between two Lease attempts; default: 2 [env WORKERPOOL_OPERATOR_RETRY_PERIOD]",
    )
    run.set_defaults(func=_run)


def _local(args: argparse.Namespace) -> int:
    from workerpool_operator.local import runtime

    return runtime.main(args)


def _demo(args: argparse.Namespace) -> int:
    try:
        from workerpool_operator.local import demo
    except ModuleNotFoundError as error:  # the demo's app and load generator need Celery
        print(
            f"workerpool-operator demo: {error}: install the worker extra (pip install -e '.[worker]')", file=sys.stderr
        )
        return exit_codes.UNAVAILABLE
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
        "local",
        parents=[view],
        help="run a WorkerPool on this machine: worker processes, real autoscaling",
        description="Run a WorkerPool on this machine: its workers as processes, scaled by the operator's engine.",
        epilog=exit_codes.EPILOG,
    )
    local.add_argument("-f", "--file", required=True, help="the WorkerPool YAML")
    local.add_argument(
        "--grace",
        type=float,
        default=None,
        metavar="S",
        help="seconds a stopping worker gets to finish its tasks (default: the YAML's terminationGracePeriodSeconds)",
    )
    local.add_argument(
        "--loglevel", default=None, help="the workers' log level (default: the YAML's; their logs go to files)"
    )
    local.set_defaults(func=_local)
    demo = sub.add_parser(
        "demo",
        parents=[view],
        help="about a minute of real autoscaling: demo app, load bursts, summary",
        description="About a minute of real autoscaling on this machine: the demo app, bursts of tasks, a summary "
        "counted from what the tasks wrote. Worker logs are kept; the view says where.",
        epilog=exit_codes.EPILOG,
    )
    demo.add_argument(
        "--duration", type=float, default=60.0, metavar="S", help="stop after this many seconds (default: 60)"
    )
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
        return exit_codes.BAD_INPUT
    print(text)
    return exit_codes.OK


def _add_simulate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`simulate`: replay a workload trace under our scaling policy or a model of KEDA's (docs/simulator.md)."""
    sim = sub.add_parser(
        "simulate",
        help="replay a workload trace against a simulated queue: our scaling engine or a KEDA model",
        description="Replay a workload trace against a simulated queue, scaled by our engine or a model of KEDA "
        "(docs/simulator.md). Times are in seconds.",
        epilog=exit_codes.EPILOG,
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
        "e.g. uniform:10,30 (default: 20)",
    )
    sim.add_argument(
        "--service-time",
        metavar="DIST",
        default=None,
        help="task durations in seconds: exp:MEAN, const:S, uniform:LOW,HIGH, lognormal:MEAN,SIGMA "
        "(default: the trace's own, else exp:1)",
    )
    sim.add_argument("--seed", type=int, default=1, help="random seed: same seed, same run (default: 1)")
    sim.add_argument("--replicas", type=int, default=None, help="replicas at the start (default: min replicas)")
    sim.add_argument(
        "--acks-late",
        action="store_true",
        help="tasks are acks_late: prefetch counts running tasks, and a killed task comes back after the "
        "visibility timeout instead of being lost",
    )
    sim.add_argument(
        "--visibility-timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="seconds before a killed acks_late task comes back (default: 3600, kombu's)",
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()  # a usage error exits with 2 (argparse's), which is the convention's BAD_INPUT
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
