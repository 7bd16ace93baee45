"""The worker's settings, from command-line arguments or ``WORKERPOOL_*`` environment variables.

Parsing and validation only, no Celery import (the probe command and the gevent/eventlet monkey-patching both
need the settings before anything heavy is imported); it reads the broker URL and CA files it is given, and the
host name for a default worker name. An argument wins over its environment variable; the environment wins over
the default. The variables' names and meanings are the worker contract's
(:mod:`workerpool_operator.worker_contract`), which the operator renders from.
"""

from __future__ import annotations

import argparse
import math
import shlex
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from workerpool_operator import worker_contract as contract
from workerpool_operator.reports import DEFAULT_INTERVAL, DEFAULT_TTL, version_number
from workerpool_operator.worker_contract import DEFAULT_STATE_DIR as DEFAULT_STATE_DIR  # re-exported
from workerpool_operator.worker_contract import POOLS as POOLS

# Pools the entrypoint runs through `--pool custom`: Celery's own, minus starting prefetched tasks at shutdown.
POOL_CLASSES = {
    "threads": "workerpool_operator.worker.pools:ThreadPool",
    "gevent": "workerpool_operator.worker.gevent_pool:GeventPool",
    "eventlet": "workerpool_operator.worker.eventlet_pool:EventletPool",
}
LOGLEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("plain", "json")
DEFAULT_PROBE_MAX_AGE = 30.0
DEFAULT_BROKER_CHECK_TIMEOUT = 5.0

# Exit codes: one per kind of bad configuration, so a CrashLoopBackOff says which one it is.
EX_CONFIG = 2  # an argument or environment variable is invalid (unknown pool, bad number, ...)
EX_APP = 3  # the Celery app cannot be imported
EX_BROKER = 4  # the broker URL or CA cannot be read, is not a Redis URL, or the broker does not answer
EX_NO_SCHEDULE = 5  # beat: the app has no beat_schedule and beat has no scheduler: nothing to send
EX_BEAT_LOCK_LOST = 6  # beat: another beat took the lock (this one could not renew it in time)

# (environment variable, argparse destination, help) for every setting: the worker contract's.
ENV_VARS: tuple[tuple[str, str, str], ...] = contract.table(contract.WORKER)


class ConfigError(Exception):
    """A setting is wrong. ``str()`` is the one line printed for the user; ``code`` the exit status."""

    def __init__(self, message: str, code: int = EX_CONFIG) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    app: str
    queues: tuple[str, ...] = ()
    pool: str = "prefork"
    concurrency: int | None = None
    prefetch_multiplier: int | None = None
    max_tasks_per_child: int | None = None
    soft_shutdown_timeout: float = 0.0
    loglevel: str = "info"
    log_format: str = "plain"
    worker_name: str = field(default_factory=socket.gethostname)
    broker_url: str | None = None
    broker_ca_file: Path | None = None
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    report_interval: float = DEFAULT_INTERVAL
    report_ttl: float = DEFAULT_TTL
    task_events: bool = False
    extra_args: tuple[str, ...] = ()
    template_version: int = 0  # the pod template's version, as reports carry it (reports.version_number)

    def celery_argv(self, pool_name: str | None = None) -> list[str]:
        """The ``celery worker`` command line these settings stand for (without ``-A``: the app is loaded).

        ``pool_name`` replaces the pool's name (``custom`` for a pool class of ours).
        """
        argv = [
            "worker",
            "--pool",
            pool_name or self.pool,
            "--loglevel",
            self.loglevel,
            "--hostname",
            f"celery@{self.worker_name}",
        ]
        if self.queues:
            argv += ["--queues", ",".join(self.queues)]
        if self.concurrency is not None:
            argv += ["--concurrency", str(self.concurrency)]
        if self.prefetch_multiplier is not None:
            argv += ["--prefetch-multiplier", str(self.prefetch_multiplier)]
        if self.max_tasks_per_child is not None:
            argv += ["--max-tasks-per-child", str(self.max_tasks_per_child)]
        if self.task_events:
            argv.append("--task-events")
        return [*argv, *self.extra_args]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run options; every one also has a ``WORKERPOOL_*`` variable (see ``ENV_VARS``)."""
    for env, dest, help_text in ENV_VARS:
        if dest == "extra_args":
            continue
        flag = "--" + dest.replace("_", "-")
        parser.add_argument(flag, dest=dest, default=None, help=f"{help_text} [env {env}]")
    parser.add_argument(
        "extra_args",
        nargs=argparse.REMAINDER,
        help=f"after `--`: more `celery worker` arguments [env {contract.EXTRA_ARGS.name}]",
    )


def from_namespace(args: argparse.Namespace, environ: Mapping[str, str]) -> WorkerConfig:
    """Merge parsed arguments over the environment, validate, and build the config."""

    def raw(dest: str) -> str | None:
        value = getattr(args, dest, None)
        if value is not None:
            return str(value)
        env = next(name for name, d, _ in ENV_VARS if d == dest)
        found = environ.get(env)
        return found if found not in (None, "") else None

    def name_of(dest: str) -> str:
        env = next(name for name, d, _ in ENV_VARS if d == dest)
        return f"--{dest.replace('_', '-')} / {env}"

    app = require_app(raw("app"), name_of("app"))

    pool = (raw("pool") or "prefork").strip().lower()
    if pool not in POOLS:
        raise ConfigError(f"unknown pool {pool!r} ({name_of('pool')}): use one of {', '.join(POOLS)}")

    loglevel = parse_loglevel(raw("loglevel"), name_of("loglevel"))

    log_format = (raw("log_format") or "plain").strip().lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"unknown log format {log_format!r} ({name_of('log_format')}): use plain or json")

    queues = tuple(q.strip() for q in (raw("queues") or "").split(",") if q.strip())

    extra: list[str] = list(getattr(args, "extra_args", None) or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    if not extra and environ.get(contract.EXTRA_ARGS.name):
        try:
            extra = shlex.split(environ[contract.EXTRA_ARGS.name])
        except ValueError as error:
            raise ConfigError(f"{contract.EXTRA_ARGS.name} cannot be parsed: {error}") from None

    report_interval = parse_seconds(raw("report_interval"), name_of("report_interval"), DEFAULT_INTERVAL, minimum=0.05)
    report_ttl = parse_seconds(raw("report_ttl"), name_of("report_ttl"), DEFAULT_TTL, minimum=1.0)
    if report_ttl <= report_interval:
        raise ConfigError(f"the report TTL ({report_ttl:g} s) must be longer than the interval ({report_interval:g} s)")

    return WorkerConfig(
        app=app.strip(),
        queues=queues,
        pool=pool,
        concurrency=parse_integer(raw("concurrency"), name_of("concurrency"), minimum=1),
        prefetch_multiplier=parse_integer(raw("prefetch_multiplier"), name_of("prefetch_multiplier"), minimum=1),
        max_tasks_per_child=parse_integer(raw("max_tasks_per_child"), name_of("max_tasks_per_child"), minimum=1),
        soft_shutdown_timeout=parse_seconds(
            raw("soft_shutdown_timeout"), name_of("soft_shutdown_timeout"), 0.0, minimum=0
        ),
        loglevel=loglevel,
        log_format=log_format,
        worker_name=(raw("worker_name") or socket.gethostname()).strip(),
        broker_url=read_broker_url(raw("broker_url"), raw("broker_url_file")),
        broker_ca_file=read_broker_ca_file(raw("broker_ca_file")),
        state_dir=Path(raw("state_dir") or DEFAULT_STATE_DIR),
        report_interval=report_interval,
        report_ttl=report_ttl,
        task_events=parse_flag(raw("task_events"), name_of("task_events")),
        extra_args=tuple(extra),
        template_version=version_number(raw("template_version")),
    )


def require_app(value: str | None, name: str) -> str:
    if value is None:
        raise ConfigError(f"no Celery app given: set {name} (e.g. myproject.celery:app)")
    return value.strip()


def parse_loglevel(value: str | None, name: str) -> str:
    loglevel = (value or "info").strip().lower()
    if loglevel not in LOGLEVELS:
        raise ConfigError(f"unknown log level {loglevel!r} ({name}): use one of {', '.join(LOGLEVELS)}")
    return loglevel


def parse_flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    flag = value.strip().lower()
    if flag not in ("0", "1", "true", "false"):
        raise ConfigError(f"{name} must be 1 or 0, got {value!r}")
    return flag in ("1", "true")


def parse_integer(value: str | None, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {number}")
    return number


def parse_seconds(value: str | None, name: str, default: float, minimum: float) -> float:
    if value is None:
        return default
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(number) or number < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {value.strip()}")
    return number


def read_broker_url(url: str | None, url_file: str | None) -> str | None:
    if url is not None:
        return url.strip()
    if url_file is None:
        return None
    try:
        text = Path(url_file).read_text().strip()
    except OSError as error:
        raise ConfigError(f"cannot read the broker URL file {url_file}: {error.strerror}", EX_BROKER) from None
    if not text:
        raise ConfigError(f"the broker URL file {url_file} is empty", EX_BROKER)
    return text


def read_broker_ca_file(path: str | None) -> Path | None:
    """The CA file, once it is known to hold at least one certificate Python's TLS can load."""
    if path is None:
        return None
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError:  # an OSError too: first
        raise ConfigError(f"the broker CA file {path} holds no PEM certificate", EX_BROKER) from None
    except OSError as error:
        raise ConfigError(f"cannot read the broker CA file {path}: {error.strerror or error}", EX_BROKER) from None
    return Path(path)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes become a one-line ``ConfigError`` rather than argparse's usage dump."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see workerpool-worker --help)")


def parse_run_args(argv: Sequence[str], environ: Mapping[str, str]) -> WorkerConfig:
    """Parse ``workerpool-worker [options] [-- celery args]`` (the run command)."""
    parser = _Parser(prog="workerpool-worker", description="Run the Celery worker of a WorkerPool.")
    add_arguments(parser)
    return from_namespace(parser.parse_args(list(argv)), environ)
