"""JSON logs for the worker (``--log-format json``): one object per line, the keys the operator's
``--log-format json`` writes (kopf's: ``message``, ``timestamp``, ``severity``), plus ``logger`` and, inside
a task, ``task_id`` and ``task_name``; so one log pipeline reads both.

Celery configures no logging of its own once :func:`use_json_logs` has connected to its ``setup_logging``
signal: every logger (Celery's, the app's, ours) goes through the root handler set up here, on stderr.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_SEVERITIES = ((logging.DEBUG, "debug"), (logging.INFO, "info"), (logging.WARNING, "warn"), (logging.ERROR, "error"))


def severity(levelno: int) -> str:
    """kopf's severity words for a log level."""
    return next((word for level, word in _SEVERITIES if levelno <= level), "fatal")


class WorkerJsonFormatter(JsonFormatter):
    def __init__(self) -> None:
        super().__init__("%(message)s %(name)s", rename_fields={"name": "logger"}, timestamp=True)

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["severity"] = severity(record.levelno)
        task = _current_task()
        if task is not None:
            log_record.setdefault("task_id", task[0])
            log_record.setdefault("task_name", task[1])


def _current_task() -> tuple[str, str] | None:
    from celery import current_task  # imported late: the probe command never gets here

    request = getattr(current_task, "request", None) if current_task else None
    task_id = getattr(request, "id", None)
    return (str(task_id), str(current_task.name)) if task_id else None


def configure(loglevel: str, stream: Any = None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as one JSON object per line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(WorkerJsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(loglevel.upper())
    logging.captureWarnings(True)  # Python warnings (Celery's SecurityWarning, ...) as JSON lines too
    return handler


def json_line(message: str, logger: str, level: int = logging.INFO) -> str:
    """One record as :class:`WorkerJsonFormatter` writes it, built without the logging machinery."""
    stamp = datetime.datetime.now(datetime.UTC).isoformat()
    return json.dumps({"message": message, "logger": logger, "timestamp": stamp, "severity": severity(level)})


def use_json_logs(loglevel: str) -> None:
    """Make Celery leave logging to us, and log JSON from now on."""
    from celery import signals
    from celery.apps import worker as celery_worker

    def setup_logging(**_: Any) -> None:
        configure(loglevel)

    signals.setup_logging.connect(setup_logging, weak=False)
    configure(loglevel)
    # Celery writes its shutdown notices ("worker: Warm shutdown (MainProcess)") straight to a file
    # descriptor from its signal handlers, bypassing logging: write them as JSON lines the same way.
    write = getattr(celery_worker, "_original_os_write", os.write)

    def say(message: str, f: Any = sys.__stderr__) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            write(f.fileno(), (json_line(message, "celery.apps.worker") + "\n").encode())

    celery_worker.safe_say = say
