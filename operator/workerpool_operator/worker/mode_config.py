"""The settings of the entrypoint's other modes, ``workerpool-worker beat`` and ``workerpool-worker flower``.

Like :mod:`workerpool_operator.worker.config` (whose helpers and exit codes they share): an argument wins over its
``WORKERPOOL_*`` variable (named in :mod:`workerpool_operator.worker_contract`), the variable over the default.
Flower's own options are not here: Flower reads them from its ``FLOWER_*`` variables and the arguments after
``--``.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from workerpool_operator import beat_forecast
from workerpool_operator import worker_contract as contract
from workerpool_operator.worker.config import (
    ConfigError,
    _Parser,
    parse_integer,
    parse_loglevel,
    parse_seconds,
    read_broker_ca_file,
    read_broker_url,
    require_app,
)
from workerpool_operator.worker_contract import DEFAULT_STATE_DIR

DEFAULT_SCHEDULE_FILE = contract.DEFAULT_SCHEDULE_FILE
DEFAULT_MAX_INTERVAL = contract.DEFAULT_MAX_INTERVAL
DEFAULT_HEARTBEAT = 2.0
DEFAULT_LOCK_TTL = contract.DEFAULT_LOCK_TTL

# (environment variable, argparse destination, help), as config.ENV_VARS: the worker contract's.
SHARED_ENV_VARS: tuple[tuple[str, str, str], ...] = contract.table(contract.SHARED)
BEAT_ENV_VARS: tuple[tuple[str, str, str], ...] = contract.table(contract.BEAT)
FLOWER_ENV_VARS = contract.table(contract.FLOWER)


@dataclass(frozen=True, slots=True)
class AppConfig:
    """What every mode needs: the app and its broker."""

    app: str
    loglevel: str = "info"
    worker_name: str = field(default_factory=socket.gethostname)
    broker_url: str | None = None
    broker_ca_file: Path | None = None
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BeatConfig(AppConfig):
    scheduler: str | None = None
    schedule_file: str = DEFAULT_SCHEDULE_FILE
    max_interval: int = DEFAULT_MAX_INTERVAL
    heartbeat_interval: float = DEFAULT_HEARTBEAT
    lock_ttl: float = DEFAULT_LOCK_TTL
    forecast_horizon: float = beat_forecast.DEFAULT_HORIZON
    forecast_ttl: float = beat_forecast.DEFAULT_TTL

    def celery_argv(self) -> list[str]:
        """The ``celery beat`` command line (without ``-A``: the app is loaded)."""
        argv = ["beat", "--loglevel", self.loglevel, "--schedule", self.schedule_file]
        argv += ["--max-interval", str(self.max_interval)]
        if self.scheduler is not None:
            argv += ["--scheduler", self.scheduler]
        return [*argv, *self.extra_args]

    @property
    def scheduler_given(self) -> bool:
        """A scheduler is named, here or in the extra arguments."""
        return self.scheduler is not None or any(
            arg in ("-S", "--scheduler") or arg.startswith("--scheduler=") for arg in self.extra_args
        )


@dataclass(frozen=True, slots=True)
class FlowerConfig(AppConfig):
    def celery_argv(self) -> list[str]:
        """The ``celery flower`` command line; Flower takes its options from ``FLOWER_*`` and these arguments."""
        return ["flower", *self.extra_args]


Lookup = Callable[[str], str | None]


def _parse(
    prog: str, description: str, table: Sequence[tuple[str, str, str]], argv: Sequence[str], environ: Mapping[str, str]
) -> tuple[Lookup, Callable[[str], str], tuple[str, ...]]:
    parser = _Parser(prog=prog, description=description)
    for env, dest, help_text in table:
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, help=f"{help_text} [env {env}]")
    parser.add_argument("extra_args", nargs=argparse.REMAINDER, help="after `--`: more arguments for it")
    args = parser.parse_args(list(argv))
    names = {dest: env for env, dest, _ in table}

    def raw(dest: str) -> str | None:
        value = getattr(args, dest, None)
        if value is not None:
            return str(value)
        found = environ.get(names[dest])
        return found if found not in (None, "") else None

    def name_of(dest: str) -> str:
        return f"--{dest.replace('_', '-')} / {names[dest]}"

    extra = list(args.extra_args or [])
    return raw, name_of, tuple(extra[1:] if extra[:1] == ["--"] else extra)


def _shared(raw: Lookup, name_of: Callable[[str], str]) -> dict[str, object]:
    return {
        "app": require_app(raw("app"), name_of("app")),
        "loglevel": parse_loglevel(raw("loglevel"), name_of("loglevel")),
        "worker_name": (raw("worker_name") or socket.gethostname()).strip(),
        "broker_url": read_broker_url(raw("broker_url"), raw("broker_url_file")),
        "broker_ca_file": read_broker_ca_file(raw("broker_ca_file")),
        "state_dir": Path(raw("state_dir") or DEFAULT_STATE_DIR),
    }


def parse_beat_args(argv: Sequence[str], environ: Mapping[str, str]) -> BeatConfig:
    """Parse ``workerpool-worker beat [options] [-- celery beat args]``."""
    raw, name_of, extra = _parse(
        "workerpool-worker beat", "Run Celery beat for a WorkerPool: one at a time per app and broker.",
        BEAT_ENV_VARS, argv, environ,
    )  # fmt: skip
    max_interval = parse_integer(raw("max_interval"), name_of("max_interval"), minimum=1) or DEFAULT_MAX_INTERVAL
    lock_ttl = parse_seconds(raw("lock_ttl"), name_of("lock_ttl"), DEFAULT_LOCK_TTL, minimum=5.0)
    if lock_ttl <= 2 * max_interval:
        raise ConfigError(
            f"the beat lock TTL ({lock_ttl:g} s) must be more than twice the max interval ({max_interval} s): "
            "beat renews its lock before each look at the schedule"
        )
    horizon = parse_seconds(raw("forecast_horizon"), name_of("forecast_horizon"), beat_forecast.DEFAULT_HORIZON, 0.0)
    return BeatConfig(
        **_shared(raw, name_of),  # type: ignore[arg-type]
        extra_args=extra,
        scheduler=(raw("scheduler") or "").strip() or None,
        schedule_file=raw("schedule_file") or DEFAULT_SCHEDULE_FILE,
        max_interval=max_interval,
        heartbeat_interval=min(DEFAULT_HEARTBEAT, float(max_interval)),
        lock_ttl=lock_ttl,
        forecast_horizon=horizon,
    )


def parse_flower_args(argv: Sequence[str], environ: Mapping[str, str]) -> FlowerConfig:
    """Parse ``workerpool-worker flower [options] [-- flower args]``."""
    raw, name_of, extra = _parse(
        "workerpool-worker flower", "Run Flower for a WorkerPool's app and broker.", FLOWER_ENV_VARS, argv, environ
    )
    return FlowerConfig(**_shared(raw, name_of), extra_args=extra)  # type: ignore[arg-type]
