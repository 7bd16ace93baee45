"""``workerpool-worker flower``: Flower on the app and broker a WorkerPool's workers use.

The app is loaded as for the workers (so Flower shows task names and arguments as the app formats them) and the
broker is checked first, with the same one-line errors and exit codes. Flower takes its own options from its
``FLOWER_*`` variables (the operator renders them from ``spec.flower``) and from the arguments after ``--``.

Import only from the entrypoint: it imports Celery.
"""

from __future__ import annotations

import importlib.util

import click

from workerpool_operator.worker.config import EX_CONFIG, ConfigError
from workerpool_operator.worker.mode_config import FlowerConfig
from workerpool_operator.worker.runner import prepare_app


def flower_installed() -> bool:
    return importlib.util.find_spec("flower") is not None


def run_flower(config: FlowerConfig) -> int:
    if not flower_installed():
        raise ConfigError(
            "Flower is not installed in this image (pip install flower; the worker image has it)", EX_CONFIG
        )
    app = prepare_app(config)
    try:
        code = app.start(argv=config.celery_argv())
    except click.UsageError as error:
        raise ConfigError(f"bad flower arguments: {error.format_message()}") from None
    return int(code or 0)
