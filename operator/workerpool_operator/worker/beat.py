"""``workerpool-worker beat``: Celery beat, one at a time per app and broker, with probes and a forecast.

Two beats send every periodic task twice, so beat here runs only while it holds a lock in the broker
(``workerpool:beat:lock:<app>``, a Redis key with a TTL, through redis-py's :class:`~redis.lock.Lock`):

* a second beat (a rollout's new pod, a pod started on another node while the old node is only cut off from
  the API server, a second WorkerPool of the same app) waits, alive but not ready, until the lock is free;
* the running beat renews the lock from its heartbeat, and again right before every pass over the schedule: a
  pass that could send tasks runs only just after a successful renewal, so within the lock's TTL;
* a beat that finds the lock taken by another stops (exit code 6) without sending; one that cannot reach the
  broker skips its passes (it could not send anyway) and carries on once it can renew again;
* a clean stop (SIGTERM) saves the schedule and releases the lock at once, so the next beat starts without
  waiting out the TTL.

While it runs, beat publishes the upcoming fire times of every periodic task and its queue
(:mod:`workerpool_operator.beat_forecast`), from the scheduler's own entries, so a database scheduler's
schedule is included.

Import only from the entrypoint: it imports Celery and redis.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import click
import redis
from celery import Celery, signals
from redis.exceptions import LockError, LockNotOwnedError

from workerpool_operator import beat_forecast
from workerpool_operator.worker.config import EX_BEAT_LOCK_LOST, EX_NO_SCHEDULE, ConfigError
from workerpool_operator.worker.mode_config import BeatConfig
from workerpool_operator.worker.probes import ProbeFiles
from workerpool_operator.worker.runner import Heartbeat, broker_client, prepare_app

log = logging.getLogger("workerpool.beat")

DEFAULT_SCHEDULER = "celery.beat:PersistentScheduler"
RETRY_PASS = 1.0  # seconds until the next pass, when one was skipped because the lock could not be renewed


# --- the schedule ----------------------------------------------------------------------------------------------


def check_schedule(app: Celery, config: BeatConfig) -> None:
    """Refuse to run a beat with nothing to send: no ``beat_schedule`` (after the app is finalized, so entries
    added by ``on_after_configure`` / ``on_after_finalize`` handlers count) and no scheduler of its own."""
    app.loader.init_worker()  # what beat does before it starts (imports task modules); it is done once
    app.finalize()
    custom = str(app.conf.beat_scheduler or DEFAULT_SCHEDULER) not in (
        DEFAULT_SCHEDULER,
        "celery.beat.PersistentScheduler",
    )
    if app.conf.beat_schedule or config.scheduler_given or custom:
        return
    raise ConfigError(
        f"the app {config.app} has no beat_schedule and beat has no scheduler: nothing to send "
        "(add periodic tasks to the app, or set spec.beat.scheduler / WORKERPOOL_BEAT_SCHEDULER, "
        "e.g. django_celery_beat.schedulers:DatabaseScheduler)",
        EX_NO_SCHEDULE,
    )


def fire_times(schedule: Any, last_run_at: datetime.datetime, now: datetime.datetime) -> Iterator[datetime.datetime]:
    """The fire times of a Celery schedule (interval, crontab, solar, ...) after ``last_run_at``, lazily: each is
    ``now`` plus the schedule's own ``remaining_estimate`` from the previous one (an overdue run fires now). The
    schedule is asked on a copy whose clock stands at ``now``, so the times are exact (a crontab's on the minute)."""
    schedule = _at(schedule, now)
    estimate = getattr(schedule, "remaining_estimate", None)
    previous = last_run_at
    while True:
        if estimate is None:  # a schedule that only answers is_due(): its next run, and no more
            due, seconds = schedule.is_due(previous)
            yield now if due else now + datetime.timedelta(seconds=float(seconds))
            return
        fire = max(now + estimate(previous), now)
        if fire <= previous:
            return  # the schedule does not move forward: nothing more to tell
        yield fire
        previous = fire


def _at(schedule: Any, now: datetime.datetime) -> Any:
    """A copy of ``schedule`` whose clock (Celery's ``nowfun``) stands still at ``now``."""
    if not hasattr(schedule, "nowfun"):
        return schedule
    pinned = copy.copy(schedule)
    pinned.nowfun = lambda: now
    return pinned


def entry_queue(app: Celery, task: str, options: Mapping[str, Any], args: Any = (), kwargs: Any = None) -> str:
    """The queue a periodic task's message goes to, as ``apply_async`` routes it: the task's own options, the
    entry's ``options``, then ``task_routes``, else the default queue."""
    registered = app.tasks.get(task)
    merged = {k: v for k, v in (registered._get_exec_options() if registered else {}).items() if v is not None}
    merged.update({k: v for k, v in options.items() if v is not None})
    try:
        routed = app.amqp.router.route(dict(merged), task, args or (), kwargs or {})
    except Exception:  # an unknown queue name, a router raising: the queue as written
        routed = merged
    queue = routed.get("queue")
    return str(getattr(queue, "name", queue) or app.conf.task_default_queue)


def forecast(app: Celery, entries: list[Any], *, beat: str, horizon: float) -> beat_forecast.BeatForecast:
    """The forecast of the scheduler's entries (``ScheduleEntry`` objects) from now on."""
    now_dt = app.now()
    now = now_dt.timestamp()
    found = []
    for entry in entries:
        try:
            queue = entry_queue(app, entry.task, entry.options or {}, entry.args, entry.kwargs)
            fires = (t.timestamp() for t in fire_times(entry.schedule, entry.last_run_at or now_dt, now_dt))
            found.append(
                beat_forecast.entry_forecast(
                    entry.name,
                    entry.task,
                    queue,
                    fires,
                    now=now,
                    horizon=horizon,
                    limit=beat_forecast.DEFAULT_FIRES_PER_ENTRY,
                )
            )
        except Exception as error:  # one odd schedule must not hide the others
            log.debug("no forecast for %s: %s", getattr(entry, "name", entry), error)
    return beat_forecast.BeatForecast(beat=beat, published=now, horizon=horizon, entries=tuple(found))


# --- the lock ---------------------------------------------------------------------------------------------------


class BeatLock:
    """The one-beat lock: a redis-py Lock whose token names this beat, renewed to its full TTL."""

    def __init__(self, client: redis.Redis, key: str, ttl: float, owner: str) -> None:
        self.ttl = ttl
        self.token = f"{owner}/{uuid.uuid4().hex[:8]}"
        self._lock = client.lock(key, timeout=ttl, blocking=False, thread_local=False)
        self._client = client
        self.key = key
        self.held_until = 0.0  # monotonic: until then the lock is surely ours (renewed, minus a margin)

    def acquire(self) -> bool:
        if self._lock.acquire(token=self.token):
            self.held_until = time.monotonic() + self.ttl * 0.8
            return True
        return False

    def holder(self) -> str:
        held = self._client.get(self.key)
        return held.decode(errors="replace") if isinstance(held, bytes) else str(held or "nobody")

    def renew(self) -> bool | None:
        """``True``: renewed; ``False``: another beat holds it; ``None``: the broker did not answer."""
        try:
            self._lock.reacquire()
        except LockNotOwnedError:
            return False
        except (redis.RedisError, LockError) as error:
            log.warning("cannot renew the beat lock: %s", error)
            return None
        self.held_until = time.monotonic() + self.ttl * 0.8
        return True

    def release(self) -> None:
        try:
            self._lock.release()
        except (redis.RedisError, LockError) as error:  # not ours any more, or the broker is gone: it expires
            log.info("beat lock not released (%s): it expires by itself", error)


def wait_for_lock(lock: BeatLock, files: ProbeFiles, interval: float, stop: threading.Event | None = None) -> bool:
    """Block until this beat holds the lock (alive, not ready, meanwhile); ``False`` when ``stop`` was set."""
    told = ""
    while stop is None or not stop.is_set():
        files.beat()
        try:
            if lock.acquire():
                if told:
                    log.warning("beat lock acquired: this beat runs now")
                return True
            holder = lock.holder()
            if holder != told:
                log.warning("another beat runs (%s holds %s): waiting for it to stop", holder, lock.key)
                told = holder
        except redis.RedisError as error:
            log.warning("cannot reach the broker for the beat lock: %s", error)
        time.sleep(interval)
    return False


# --- beat, supervised -------------------------------------------------------------------------------------------


class BeatSupervisor:
    """Guards every pass of the scheduler with the lock, keeps the probe files and publishes the forecast."""

    def __init__(self, app: Celery, config: BeatConfig, files: ProbeFiles, lock: BeatLock, client: redis.Redis):
        self.app = app
        self.config = config
        self.files = files
        self.lock = lock
        self.client = client
        self.lost = False  # another beat took the lock: stop without sending
        self._entries: list[Any] | None = None  # the scheduler's entries after its last pass
        self._published_at = 0.0
        self._published: list[Any] | None = None
        self._service: Any = None
        self._forecast_key = beat_forecast.forecast_key(config.app, _prefix(app))
        self.heartbeat = Heartbeat(config.heartbeat_interval, self._on_heartbeat, lambda: None)

    def connect(self) -> None:
        signals.beat_init.connect(self._on_beat_init, weak=False)

    def _on_beat_init(self, sender: Any = None, **_: Any) -> None:
        self._service = sender
        scheduler = sender.scheduler
        scheduler.tick = self._guarded(scheduler, scheduler.tick)

    def _guarded(self, scheduler: Any, tick: Callable[..., float]) -> Callable[..., float]:
        def guarded_tick(*args: Any, **kwargs: Any) -> float:
            self.files.beat()  # the loop is alive, whatever the broker does
            renewed = self.lock.renew()
            if renewed is False or self.lost:
                self._lose()
                raise SystemExit(EX_BEAT_LOCK_LOST)  # ends the service loop before anything is sent
            if renewed is None and time.monotonic() >= self.lock.held_until:
                return RETRY_PASS  # not sure the lock is still ours: send nothing until it is renewed
            interval = tick(*args, **kwargs)
            self._entries = list(scheduler.schedule.values())
            self.files.mark_ready()
            return interval

        return guarded_tick

    def _lose(self) -> None:
        if not self.lost:
            log.error("another beat holds the beat lock now (%s): stopping without sending", self.lock.holder())
        self.lost = True
        self.files.mark_not_ready()

    def _on_heartbeat(self) -> None:
        if self._service is None:
            return
        if self.lock.renew() is False:
            self._lose()
            self._service.stop()  # the guarded pass raises before sending
            return
        self._publish()

    def _publish(self) -> None:
        entries, now = self._entries, time.monotonic()
        if self.config.forecast_horizon <= 0 or entries is None or self.lost:
            return
        if entries is self._published and now - self._published_at < self.config.forecast_ttl / 3:
            return
        found = forecast(self.app, entries, beat=self.config.worker_name, horizon=self.config.forecast_horizon)
        try:
            self.client.set(self._forecast_key, beat_forecast.encode_forecast(found), ex=int(self.config.forecast_ttl))
        except redis.RedisError as error:
            log.warning("cannot publish the beat forecast: %s", error)
            return
        self._published, self._published_at = entries, now

    def finish(self) -> None:
        """Stop beating; remove the forecast and release the lock (unless another beat holds it by now)."""
        self.heartbeat.stop()
        self.files.clear()
        if not self.lost:
            with contextlib.suppress(redis.RedisError):  # it expires
                self.client.delete(self._forecast_key)
            self.lock.release()


def _prefix(app: Celery) -> str:
    options: Mapping[str, Any] = app.conf.broker_transport_options or {}
    return str(options.get("global_keyprefix", "") or "")


def run_beat(config: BeatConfig, files: ProbeFiles) -> int:
    """Load the app, check it has something to schedule, take the lock, run beat; the process exit code."""
    app = prepare_app(config)
    check_schedule(app, config)
    client, connection, prefix = broker_client(app)
    lock = BeatLock(client, beat_forecast.lock_key(config.app, prefix), config.lock_ttl, config.worker_name)
    try:
        wait_for_lock(lock, files, config.heartbeat_interval)
        supervisor = BeatSupervisor(app, config, files, lock, client)
        supervisor.connect()
        supervisor.heartbeat.start()
        try:
            code = app.start(argv=config.celery_argv())
        except click.UsageError as error:
            raise ConfigError(f"bad celery beat arguments: {error.format_message()}") from None
        finally:
            supervisor.finish()
    finally:
        client.close()
        connection.release()
    sys.stdout.flush()
    return EX_BEAT_LOCK_LOST if supervisor.lost else int(code or 0)
