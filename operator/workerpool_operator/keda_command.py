"""``workerpool-operator from-keda``: read the files, convert (keda_import.py), write the WorkerPool. Wiring only.

The output goes to stdout (or ``-o FILE``) with what was not converted as comments at its top; the same lines
go to stderr, so a user piping the YAML into a file still sees them. Input the conversion cannot use at all
(no ScaledObject, no redis trigger, unreadable YAML) is one line on stderr and exit code 2, as for the CLI's
other commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from workerpool_operator import exit_codes
from workerpool_operator.keda_import import ConversionError, Options, convert, problems, select_inputs, to_yaml


def add_from_keda_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``from-keda`` on the CLI's subcommands."""
    command = sub.add_parser(
        "from-keda",
        help="write the WorkerPool equivalent to a KEDA ScaledObject with redis list triggers",
        description="Convert a KEDA ScaledObject (redis list triggers) into a WorkerPool (docs/moving-from-keda.md).",
        epilog=exit_codes.EPILOG,
    )
    command.add_argument(
        "-f",
        "--file",
        required=True,
        help="the ScaledObject YAML (TriggerAuthentications and the Deployment in the same file are used too)",
    )
    command.add_argument("--deployment", metavar="FILE", default=None, help="the YAML of the Deployment it scales")
    command.add_argument(
        "--render",
        action="store_true",
        help="a pool that renders its own Deployment from the Deployment's pod template (needs --deployment); "
        "default: the queue scales the existing Deployment (scaleTargetRef)",
    )
    command.add_argument("--app", default=None, help="spec.app (default: the Deployment's `celery -A`)")
    command.add_argument("--name", default=None, help="the WorkerPool's name (default: the ScaledObject's)")
    command.add_argument("--scaled-object", default=None, help="which ScaledObject, when the file holds several")
    command.add_argument(
        "--active",
        action="store_true",
        help="scaling.mode Active (default Shadow: observe beside KEDA, write nothing)",
    )
    command.add_argument("-o", "--output", metavar="FILE", default=None, help="write here instead of stdout")
    command.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        documents = _documents(args.file)
        deployments = _documents(args.deployment) if args.deployment else []
        inputs = select_inputs(documents, deployments, args.scaled_object)
        conversion = convert(inputs, Options(name=args.name, app=args.app, render=args.render, active=args.active))
    except ConversionError as error:
        print(f"workerpool-operator from-keda: {error}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    for line in problems(conversion):
        print(f"from-keda: {line}", file=sys.stderr)
    text = to_yaml(conversion)
    if args.output:
        Path(args.output).write_text(text)
        print(f"from-keda: wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return exit_codes.OK


def _documents(path: str) -> list[object]:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConversionError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConversionError(f"{path} is not valid YAML{where}") from None
