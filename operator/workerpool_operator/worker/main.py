"""``workerpool-worker``: the entrypoint of the worker image.

    workerpool-worker [options] [-- more celery worker args]     run the Celery worker
    workerpool-worker beat [options] [-- more celery beat args]  run Celery beat (one per app and broker)
    workerpool-worker flower [options] [-- more flower args]     run Flower
    workerpool-worker check ready|alive [--max-age S]            the probe command (worker and beat)

Order matters when running: settings are parsed first (stdlib only), then gevent/eventlet
monkey-patch, and only then are Celery and the user's app imported. The probe command imports
neither Celery nor Redis.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path

from workerpool_operator.worker.config import (
    DEFAULT_PROBE_MAX_AGE,
    DEFAULT_STATE_DIR,
    POOL_CLASSES,
    ConfigError,
    WorkerConfig,
    parse_run_args,
)
from workerpool_operator.worker.mode_config import parse_beat_args, parse_flower_args
from workerpool_operator.worker.probes import ProbeFiles, check


def check_main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    parser = argparse.ArgumentParser(prog="workerpool-worker check", description="Kubernetes probe command.")
    parser.add_argument("kind", choices=["ready", "alive"])
    parser.add_argument(
        "--max-age",
        type=float,
        default=float(environ.get("WORKERPOOL_PROBE_MAX_AGE") or DEFAULT_PROBE_MAX_AGE),
        help=f"seconds the heartbeat may be old (default {DEFAULT_PROBE_MAX_AGE:g}) [env WORKERPOOL_PROBE_MAX_AGE]",
    )
    parser.add_argument(
        "--state-dir",
        default=environ.get("WORKERPOOL_STATE_DIR") or DEFAULT_STATE_DIR,
        help=f"where the probe files are (default {DEFAULT_STATE_DIR}) [env WORKERPOOL_STATE_DIR]",
    )
    args = parser.parse_args(list(argv))
    ok, message = check(args.kind, ProbeFiles(Path(args.state_dir)), args.max_age)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def prepare_process(config: WorkerConfig, environ: MutableMapping[str, str]) -> None:
    """Everything that must happen before Celery is imported."""
    if config.pool in POOL_CLASSES:
        # `--pool custom` loads this class: Celery's pool, minus starting prefetched tasks during a shutdown.
        environ["CELERY_CUSTOM_WORKER_POOL"] = POOL_CLASSES[config.pool]
    if config.pool in ("gevent", "eventlet"):
        from celery import maybe_patch_concurrency  # the `celery` package root is lazy: nothing patched yet

        maybe_patch_concurrency(["--pool", config.pool])


def fresh_probe_files(state_dir: Path) -> ProbeFiles:
    """The probe files, cleared of what a previous container left, and alive while starting up."""
    files = ProbeFiles(state_dir)
    try:
        files.reset()
        files.beat()
    except OSError as error:
        raise ConfigError(f"cannot write the probe files in {state_dir}: {error.strerror}") from None
    return files


def run_main(argv: Sequence[str], environ: MutableMapping[str, str]) -> int:
    config = parse_run_args(argv, environ)
    files = fresh_probe_files(config.state_dir)
    prepare_process(config, environ)

    from workerpool_operator.worker.runner import run

    return run(config, files)


def beat_main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    config = parse_beat_args(argv, environ)
    files = fresh_probe_files(config.state_dir)
    from workerpool_operator.worker.beat import run_beat

    return run_beat(config, files)


def flower_main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    config = parse_flower_args(argv, environ)
    from workerpool_operator.worker.flower import run_flower

    return run_flower(config)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "check":
            return check_main(args[1:], os.environ)
        if args and args[0] == "beat":
            return beat_main(args[1:], os.environ)
        if args and args[0] == "flower":
            return flower_main(args[1:], os.environ)
        if args and args[0] == "run":
            args = args[1:]
        return run_main(args, os.environ)
    except ConfigError as error:
        print(f"workerpool-worker: {error}", file=sys.stderr)
        return error.code


if __name__ == "__main__":
    sys.exit(main())
