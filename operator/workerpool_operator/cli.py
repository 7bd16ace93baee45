"""The ``workerpool-operator`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from workerpool_operator import __version__

HANDLERS_MODULE = "workerpool_operator.handlers"


def _run(args: argparse.Namespace) -> int:
    """Start the operator with kopf, as `kopf run -m workerpool_operator.handlers` would."""
    argv = ["kopf", "run", "-m", HANDLERS_MODULE, "--log-format", args.log_format]
    if args.namespace:
        for ns in args.namespace:
            argv += ["--namespace", ns]
    else:
        argv.append("--all-namespaces")
    if args.liveness:
        argv += ["--liveness", args.liveness]
    if args.standalone:
        argv.append("--standalone")
    else:
        argv += ["--peering", args.peering]
        if args.priority is not None:
            argv += ["--priority", str(args.priority)]
    if args.verbose:
        argv.append("--verbose")
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
    run.add_argument("--peering", default="workerpool-operator", help="kopf peering object name")
    run.add_argument("--priority", type=int, default=None, help="kopf peering priority of this replica")
    run.add_argument("--standalone", action="store_true", help="no peering: for a single local run")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
