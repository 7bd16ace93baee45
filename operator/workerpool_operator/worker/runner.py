"""Run the Celery worker in this process, with probe files and worker reports.

Import this module only after :func:`workerpool_operator.worker.main.prepare_process` has
monkey-patched for gevent/eventlet: it imports Celery, kombu and redis.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import click
import redis
from celery import Celery, signals
from celery.app.utils import find_app
from celery.utils.nodenames import worker_direct
from celery.worker import state as worker_state
from kombu.utils.url import maybe_sanitize_url

from workerpool_operator.failures import certificate_refusal, first_line
from workerpool_operator.worker import handback  # noqa: F401 - registers its remote-control command
from workerpool_operator.worker.broker_tls import verified_by_default, with_ca_file
from workerpool_operator.worker.config import EX_APP, EX_BROKER, POOL_CLASSES, ConfigError, WorkerConfig
from workerpool_operator.worker.draining import CeleryControl, Drainer
from workerpool_operator.worker.logs import use_json_logs
from workerpool_operator.worker.probes import ProbeFiles
from workerpool_operator.worker.reporting import Counts, LoadReporter, count_requests

log = logging.getLogger("workerpool.worker")

REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel", "redis+socket"})
EX_FAILURE = 1  # Celery's exit code after a cold shutdown
REPORT_SOCKET_OPTIONS = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
CANCELLABLE_POOLS = frozenset({"prefork", "gevent", "eventlet"})  # the others cannot stop a running task


def load_app(spec: str) -> Celery:
    """Import the user's Celery app (``module:attribute``, ``module.attribute`` or a module), like ``celery -A``."""
    try:
        app = find_app(spec)
    except Exception as error:  # the user's module may raise anything while importing
        reason = f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot import the Celery app {spec!r}: {reason}", EX_APP) from None
    if not isinstance(app, Celery):
        raise ConfigError(f"{spec!r} is not a Celery app (it is a {type(app).__name__})", EX_APP)
    return app


def use_broker_ca(app: Celery, ca_file: Path) -> None:
    """Verify the broker with the CA in ``ca_file``: ``broker_use_ssl`` for every connection the app opens
    (the worker's, the start-up check's and the reports'), the URL's own ``ssl_*`` fields moved into it."""
    url = app.conf.broker_url or ""
    try:
        url, options = with_ca_file(url, ca_file, app.conf.broker_use_ssl)
    except ValueError as error:
        raise ConfigError(f"the broker URL {_redacted(url)} {error}", EX_BROKER) from None
    app.conf.broker_url = url
    os.environ["CELERY_BROKER_URL"] = url  # Celery prefers this variable to its setting
    app.conf.broker_use_ssl = options


def check_broker(app: Celery, ca_file: Path | None = None) -> None:
    """Fail fast, with one line, when the broker URL is not a Redis URL or nobody answers there."""
    url = app.conf.broker_url or ""
    shown = _redacted(url)
    scheme = urlsplit(url.split(";")[0]).scheme.lower()
    if scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"the broker URL {shown} is not a Redis URL (use redis://, rediss:// or sentinel://)", EX_BROKER
        )
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=10)
            conn.default_channel  # noqa: B018 - opening the channel PINGs Redis (auth, TLS, sentinel master)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"the broker URL {shown} is invalid: {first_line(error)}", EX_BROKER) from None
    except Exception as error:
        refused = certificate_refusal(error)
        if refused is not None:
            trusted = (
                f"the CA in {ca_file}"
                if ca_file is not None
                else "the system CAs (give the broker's CA with caFrom / WORKERPOOL_BROKER_CA_FILE)"
                if app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
                else "the app's TLS settings"
            )
            raise ConfigError(
                f"the broker {shown} failed TLS verification with {trusted}: {refused} (is it the broker's CA?)",
                EX_BROKER,
            ) from None
        raise ConfigError(f"cannot reach the broker {shown}: {first_line(error)}", EX_BROKER) from None


def _redacted(url: str) -> str:
    """The URL for a message, password masked (even when the URL cannot be parsed)."""
    if not url:
        return "(none)"
    try:
        return str(maybe_sanitize_url(url))
    except ValueError:
        return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1**@", url)


class Heartbeat:
    """A daemon thread (a greenlet under gevent/eventlet) that runs ``tick`` every ``interval`` seconds,
    and ``check`` every ``STEP`` seconds in between."""

    STEP = 0.25

    def __init__(self, interval: float, tick: Callable[[], None], check: Callable[[], None]) -> None:
        self.interval = interval
        self.tick = tick
        self.check = check
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workerpool-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_tick:
                self._safely(self.tick)
                next_tick = time.monotonic() + self.interval
            self._safely(self.check)
            self._stop.wait(min(self.STEP, max(0.0, next_tick - time.monotonic())))

    @staticmethod
    def _safely(job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:  # keep beating whatever one call did
            log.exception("heartbeat job failed")


class WorkerSupervisor:
    """Ties the probe files and the reports to Celery's worker signals."""

    def __init__(self, app: Celery, config: WorkerConfig, files: ProbeFiles) -> None:
        self.app = app
        self.config = config
        self.files = files
        self.reporter: LoadReporter | None = None
        self.drainer: Drainer | None = None
        self.started = 0.0  # when the worker became ready
        self.concurrency = config.concurrency or 0
        self.escalated = False  # the soft-shutdown timeout ran out and we started a cold shutdown
        self.stopping = False  # SIGTERM came: reported, so the operator counts this worker out of its replicas
        self._stop_deadline: float | None = None
        self._reporter_lock = threading.Lock()
        self._finished = False
        self.heartbeat = Heartbeat(config.report_interval, self._tick, self._check_stop_deadline)

    def connect(self) -> None:
        # weak=False: these bound methods must live as long as the worker, not as long as a reference.
        signals.worker_init.connect(self._on_worker_init, weak=False)
        signals.worker_ready.connect(self._on_worker_ready, weak=False)
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)
        signals.worker_shutdown.connect(self._on_worker_shutdown, weak=False)

    def _tick(self) -> None:
        self.files.beat()
        reporter = self.reporter
        if reporter is None:
            return
        reporter.publish()
        if self.drainer is not None and self.drainer.apply(reporter.requested):
            reporter.publish()  # say at once that this worker drains (or takes tasks again)

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        concurrency = getattr(sender, "concurrency", None)
        if isinstance(concurrency, int):
            self.concurrency = 1 if self.config.pool == "solo" else concurrency

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        hostname = getattr(sender, "hostname", f"celery@{self.config.worker_name}")
        self.started = self.started or time.time()
        if self.drainer is None:
            self.drainer = Drainer(CeleryControl(self.app, hostname))
        direct = worker_direct(hostname).name
        queues = tuple(sorted(q for q in self.app.amqp.queues.consume_from if q != direct))
        if not queues:
            queues = (self.app.conf.task_default_queue,)
        if self.reporter is None:  # worker_ready comes again after a reconnection
            try:
                self.reporter = self._make_reporter(queues)
            except Exception as error:  # reports are best effort: the worker works without them
                log.warning("worker reports disabled: cannot connect for them: %s", error)
        self.files.mark_ready()
        self._tick()

    def _make_reporter(self, queues: tuple[str, ...]) -> LoadReporter:
        # Bounded socket waits: a vanished broker must not hold the heartbeat or the shutdown.
        client, self._connection, prefix = broker_client(self.app)
        return LoadReporter(
            client=client,
            worker=self.config.worker_name,
            queues=queues,
            counts=lambda: self._counts(queues),
            done=self._done,
            concurrency=self.concurrency,
            ttl=self.config.report_ttl,
            global_keyprefix=prefix,
            draining=lambda: self.drainer.draining if self.drainer is not None else frozenset(),
            started=self.started,
            stopping=lambda: self.stopping,
            version=self.config.template_version,
        )

    @staticmethod
    def _counts(queues: tuple[str, ...]) -> dict[str, Counts]:
        for _ in range(10):  # the sets change under us in threaded pools: take a consistent copy
            try:
                active = tuple(worker_state.active_requests)
                reserved = tuple(worker_state.reserved_requests)
            except RuntimeError:
                continue
            return count_requests(active, reserved, queues)
        return {}

    @staticmethod
    def _done() -> int:
        accepted: int = worker_state.all_total_count[0]
        return max(0, accepted - len(worker_state.active_requests))

    def _on_shutting_down(self, sig: str = "", how: str = "", **_: Any) -> None:
        # Runs inside Celery's signal handler: only unlink a file and note a flag and a time here; the heartbeat
        # thread reports the flag at its next beat.
        self.files.mark_not_ready()
        self.stopping = True
        timeout = self.config.soft_shutdown_timeout
        if how == "Warm" and timeout > 0 and self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + timeout

    def _check_stop_deadline(self) -> None:
        """After the soft-shutdown timeout, turn the warm shutdown into Celery's cold one (SIGQUIT):
        running tasks are cancelled, and the messages of acks_late ones go back to the queue."""
        if self._stop_deadline is None or self.escalated or time.monotonic() < self._stop_deadline:
            return
        self.escalated = True
        running = len(worker_state.active_requests)
        if self.config.pool not in CANCELLABLE_POOLS:
            log.warning(
                "soft-shutdown timeout reached with %d task(s) running: the %s pool cannot cancel them, "
                "waiting for them to finish",
                running,
                self.config.pool,
            )
            return
        log.warning("soft-shutdown timeout reached: cancelling %d running task(s)", running)
        os.kill(os.getpid(), signal.SIGQUIT)

    def _on_worker_shutdown(self, **_: Any) -> None:
        self.finish()

    def finish(self) -> None:
        """Stop beating, delete our reports and the probe files. Idempotent."""
        with self._reporter_lock:
            if self._finished:
                return
            self._finished = True
        self.heartbeat.stop()
        if self.reporter is not None:
            self.reporter.remove()
            self.reporter.client.close()
        connection = getattr(self, "_connection", None)
        if connection is not None:
            connection.release()
        self.files.clear()


def restore_promptly(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """kombu's Redis transport settings so that the running workers put a dead worker's unacknowledged
    (``acks_late``) messages back in their queue about ``visibility_timeout`` after delivery.

    kombu sweeps for overdue unacknowledged messages only every ``unacked_restore_interval`` (10 s) times
    ``unacked_restore_throttle`` (10) seconds in a running worker, plus once when a worker starts: with its
    defaults a SIGKILLed worker's task waited for the next worker to start. Here every worker sweeps every
    quarter of the visibility timeout (1 to 10 s), on every sweep; what the user set stays as set."""
    settings = dict(options or {})
    visibility = float(settings.get("visibility_timeout", 3600))
    settings.setdefault("unacked_restore_interval", max(1, min(10, round(visibility / 4))))
    settings.setdefault("unacked_restore_throttle", 1)
    return settings


class AppSettings(Protocol):
    """What :func:`prepare_app` needs of any mode's settings."""

    @property
    def app(self) -> str: ...
    @property
    def broker_url(self) -> str | None: ...
    @property
    def broker_ca_file(self) -> Path | None: ...


def prepare_app(config: AppSettings) -> Celery:
    """The user's app, on the configured broker (verified with its CA), once the broker answers."""
    app = load_app(config.app)
    if config.broker_url is not None:
        app.conf.broker_url = config.broker_url
        os.environ["CELERY_BROKER_URL"] = config.broker_url  # Celery prefers this variable to its setting
    if config.broker_ca_file is not None:
        use_broker_ca(app, config.broker_ca_file)
    elif (default_tls := verified_by_default(app.conf.broker_url or "", app.conf.broker_use_ssl)) is not None:
        app.conf.broker_use_ssl = default_tls
    check_broker(app, config.broker_ca_file)
    app.conf.broker_transport_options = restore_promptly(app.conf.broker_transport_options)
    return app


def broker_client(app: Celery) -> tuple[redis.Redis, Any, str]:
    """A plain Redis client on the app's broker, for the entrypoint's own keys (reports, beat's lock and forecast),
    with bounded socket waits; also the connection to release, and the ``global_keyprefix``."""
    conn = app.connection_for_write(transport_options=REPORT_SOCKET_OPTIONS)
    channel = conn.default_channel
    # The channel's own pool carries every broker setting (TLS, sentinel, auth); a plain client on it leaves key
    # names alone (the channel's client would add global_keyprefix to some commands only).
    options: Mapping[str, Any] = app.conf.broker_transport_options or {}
    return redis.Redis(connection_pool=channel.pool), conn, str(options.get("global_keyprefix", "") or "")


def run(config: WorkerConfig, files: ProbeFiles) -> int:
    """Load the app, check the broker, run the worker until it stops; the process exit code."""
    if config.log_format == "json":
        use_json_logs(config.loglevel)
    app = prepare_app(config)
    if config.soft_shutdown_timeout > 0:
        # Ours bounds the warm shutdown (see WorkerSupervisor); Celery's would sleep its whole timeout in
        # the cold shutdown whenever a task runs, so it is turned off.
        app.conf.worker_soft_shutdown_timeout = 0

    supervisor = WorkerSupervisor(app, config, files)
    supervisor.connect()
    supervisor.heartbeat.start()
    try:
        argv = config.celery_argv(pool_name="custom" if config.pool in POOL_CLASSES else None)
        quiet = ["--quiet"] if config.log_format == "json" else []  # no banner among the JSON lines
        code = app.start(argv=[*quiet, *argv])
    except click.UsageError as error:  # a bad `celery worker` argument among the extra ones
        raise ConfigError(f"bad celery worker arguments: {error.format_message()}") from None
    finally:
        supervisor.finish()
    exit_code = int(code or 0)
    if exit_code == EX_FAILURE and supervisor.escalated:
        # Celery's cold shutdown exits 1; this one ended a stop that was asked for, as configured.
        exit_code = 0
    sys.stdout.flush()
    return exit_code


__all__ = ["WorkerSupervisor", "broker_client", "check_broker", "load_app", "prepare_app", "run", "use_broker_ca"]
