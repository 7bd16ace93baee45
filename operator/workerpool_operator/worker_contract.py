"""The worker contract: every ``WORKERPOOL_*`` variable the operator renders into a worker, beat or Flower pod
(:mod:`workerpool_operator.worker_env`, also what ``local`` starts) and the ``workerpool-worker`` entrypoint parses
(:mod:`workerpool_operator.worker.config`, :mod:`workerpool_operator.worker.mode_config`): each one's name, the
entrypoint's flag for it, its meaning and the defaults that meaning names, defined once.

Why one module: the names used to be spelled on both sides, and the two sides ship in different images (the
operator's and the worker's) that can be upgraded apart; a name changed on one side only would be a setting
silently ignored. Both sides import this module, which imports nothing but the core's report and beat-forecast
defaults, so the worker image still needs neither kopf nor the Kubernetes client. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from workerpool_operator import beat_forecast
from workerpool_operator.reports import DEFAULT_INTERVAL, DEFAULT_TTL

POOLS = ("prefork", "threads", "solo", "gevent", "eventlet")
DEFAULT_STATE_DIR = "/tmp/workerpool"  # an emptyDir in the pod; readOnlyRootFilesystem-friendly
DEFAULT_SCHEDULE_FILE = "/tmp/celerybeat-schedule"  # the pod's /tmp: an emptyDir, writable under a read-only root
DEFAULT_MAX_INTERVAL = 5
DEFAULT_LOCK_TTL = 30.0


@dataclass(frozen=True, slots=True)
class Variable:
    """One setting of the entrypoint: ``name`` in the environment, ``dest`` its flag (``--dest-with-dashes``)."""

    name: str
    dest: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")


# --- every mode -----------------------------------------------------------------------------------------------
APP = Variable("WORKERPOOL_APP", "app", "the Celery app, as for `celery -A` (module:attribute or module)")
LOGLEVEL = Variable("WORKERPOOL_LOGLEVEL", "loglevel", "debug, info, warning, error or critical (default info)")
WORKER_NAME = Variable(
    "WORKERPOOL_WORKER_NAME", "worker_name", "this process's name in reports (default: the hostname, the pod name)"
)
BROKER_URL = Variable("WORKERPOOL_BROKER_URL", "broker_url", "overrides the app's broker_url")
BROKER_URL_FILE = Variable(
    "WORKERPOOL_BROKER_URL_FILE", "broker_url_file", "a file holding the broker URL (a mounted Secret)"
)
BROKER_CA_FILE = Variable(
    "WORKERPOOL_BROKER_CA_FILE",
    "broker_ca_file",
    "a CA bundle (PEM) to verify a rediss:// broker with (a mounted Secret; default: the app's TLS settings,"
    " else the system CAs)",
)
STATE_DIR = Variable("WORKERPOOL_STATE_DIR", "state_dir", f"where the probe files live (default {DEFAULT_STATE_DIR})")

# --- the worker (`workerpool-worker [run]`) ---------------------------------------------------------------------
QUEUES = Variable("WORKERPOOL_QUEUES", "queues", "comma-separated queues to consume (default: the app's default queue)")
POOL = Variable("WORKERPOOL_POOL", "pool", f"execution pool: {', '.join(POOLS)} (default prefork)")
CONCURRENCY = Variable(
    "WORKERPOOL_CONCURRENCY", "concurrency", "processes, threads or greenlets (default: Celery's, CPU count)"
)
PREFETCH_MULTIPLIER = Variable(
    "WORKERPOOL_PREFETCH_MULTIPLIER", "prefetch_multiplier", "messages reserved per unit of concurrency"
)
MAX_TASKS_PER_CHILD = Variable(
    "WORKERPOOL_MAX_TASKS_PER_CHILD", "max_tasks_per_child", "recycle a prefork child after N tasks"
)
SOFT_SHUTDOWN_TIMEOUT = Variable(
    "WORKERPOOL_SOFT_SHUTDOWN_TIMEOUT",
    "soft_shutdown_timeout",
    "seconds running tasks get after SIGTERM before they are cancelled (default 0: wait for them)",
)
LOG_FORMAT = Variable(
    "WORKERPOOL_LOG_FORMAT",
    "log_format",
    "plain (Celery's) or json (one JSON object per line, the operator's --log-format json keys)",
)
REPORT_INTERVAL = Variable(
    "WORKERPOOL_REPORT_INTERVAL", "report_interval", f"seconds between reports (default {DEFAULT_INTERVAL:g})"
)
REPORT_TTL = Variable("WORKERPOOL_REPORT_TTL", "report_ttl", f"seconds a report stays valid (default {DEFAULT_TTL:g})")
TASK_EVENTS = Variable(
    "WORKERPOOL_TASK_EVENTS", "task_events", "1: send task events (celery worker -E), for Flower (default 0)"
)
EXTRA_ARGS = Variable("WORKERPOOL_EXTRA_ARGS", "extra_args", "more `celery worker` arguments, shell-quoted")
TEMPLATE_VERSION = Variable(
    "WORKERPOOL_TEMPLATE_VERSION",
    "template_version",
    "the pod template's version (the operator sets it from the pod's workerpool.dev/version label), reported with"
    " the load so that a rollout tells old workers from new",
)

# --- beat (`workerpool-worker beat`) ---------------------------------------------------------------------------
BEAT_SCHEDULER = Variable(
    "WORKERPOOL_BEAT_SCHEDULER",
    "scheduler",
    "the beat scheduler class, like django_celery_beat.schedulers:DatabaseScheduler (default: the app's)",
)
BEAT_SCHEDULE_FILE = Variable(
    "WORKERPOOL_BEAT_SCHEDULE_FILE",
    "schedule_file",
    f"the default scheduler's schedule file (default {DEFAULT_SCHEDULE_FILE})",
)
BEAT_MAX_INTERVAL = Variable(
    "WORKERPOOL_BEAT_MAX_INTERVAL",
    "max_interval",
    f"most seconds between two looks at the schedule, and between heartbeats (default {DEFAULT_MAX_INTERVAL})",
)
BEAT_LOCK_TTL = Variable(
    "WORKERPOOL_BEAT_LOCK_TTL",
    "lock_ttl",
    f"seconds the beat lock outlives a beat that stopped renewing it (default {DEFAULT_LOCK_TTL:g})",
)
BEAT_FORECAST_HORIZON = Variable(
    "WORKERPOOL_BEAT_FORECAST_HORIZON",
    "forecast_horizon",
    f"seconds of fire times published ahead (default {beat_forecast.DEFAULT_HORIZON:g}; 0: publish none)",
)

SHARED = (APP, LOGLEVEL, WORKER_NAME, BROKER_URL, BROKER_URL_FILE, BROKER_CA_FILE, STATE_DIR)
WORKER = (
    APP,
    QUEUES,
    POOL,
    CONCURRENCY,
    PREFETCH_MULTIPLIER,
    MAX_TASKS_PER_CHILD,
    SOFT_SHUTDOWN_TIMEOUT,
    LOGLEVEL,
    LOG_FORMAT,
    WORKER_NAME,
    BROKER_URL,
    BROKER_URL_FILE,
    BROKER_CA_FILE,
    STATE_DIR,
    REPORT_INTERVAL,
    REPORT_TTL,
    TASK_EVENTS,
    EXTRA_ARGS,
    TEMPLATE_VERSION,
)
BEAT = (*SHARED, BEAT_SCHEDULER, BEAT_SCHEDULE_FILE, BEAT_MAX_INTERVAL, BEAT_LOCK_TTL, BEAT_FORECAST_HORIZON)
FLOWER = SHARED
EVERY = {variable.name: variable for variable in (*WORKER, *BEAT)}


def table(variables: tuple[Variable, ...]) -> tuple[tuple[str, str, str], ...]:
    """``(environment variable, flag destination, help)`` rows, as the entrypoint's parsers and docs read them."""
    return tuple((v.name, v.dest, v.help) for v in variables)
