"""How a worker is configured: the environment and arguments of ``workerpool-worker`` for one queue of a
WorkerPool, and for the pool's beat and Flower. Pure. Shared by the Kubernetes Deployments (``kube/render.py``,
``kube/components.py``) and the local runtime (``local/runtime.py``), so a local process runs exactly as a pod
would. Every ``WORKERPOOL_*`` name here is the worker contract's (:mod:`workerpool_operator.worker_contract`),
which the entrypoint parses with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from workerpool_operator import API_GROUP
from workerpool_operator import worker_contract as contract
from workerpool_operator.spec import BeatSpec, FlowerSpec, QueueSpec, SecretKeyRef, WorkerPool

STATE_DIR = contract.DEFAULT_STATE_DIR  # the worker's probe files
BROKER_URL_ENV = contract.BROKER_URL.name
# spec.broker.caFrom: the Secret's one key, as a file of a fixed name (mounted read-only in a pod).
BROKER_CA_DIR = "/etc/workerpool/broker-ca"
BROKER_CA_NAME = "ca.crt"
BROKER_CA_FILE = f"{BROKER_CA_DIR}/{BROKER_CA_NAME}"
BROKER_CA_ENV = contract.BROKER_CA_FILE.name
WORKER_NAME_ENV = contract.WORKER_NAME.name
STATE_DIR_ENV = contract.STATE_DIR.name
TASK_EVENTS_ENV = contract.TASK_EVENTS.name
# Beat's schedule file (the default shelve scheduler's): on spec.beat.scheduleVolume, else in the pod's /tmp.
BEAT_SCHEDULE_DIR = "/var/lib/celery-beat"
BEAT_SCHEDULE_FILE_ENV = contract.BEAT_SCHEDULE_FILE.name
BEAT_SCHEDULE_NAME = "celerybeat-schedule"
# Flower's state file with spec.flower.persistent: on spec.flower.stateVolume, else in the pod's /tmp.
FLOWER_STATE_DIR = "/var/lib/flower"
FLOWER_DB_NAME = "flower.db"
FLOWER_PORT = 5555
FLOWER_STATE_SAVE_INTERVAL_MS = 60_000  # besides the save at shutdown, so a killed pod loses a minute at most
FLOWER_AUTH_PROVIDERS = {
    "google": "flower.views.auth.GoogleAuth2LoginHandler",
    "github": "flower.views.auth.GithubLoginHandler",
    "gitlab": "flower.views.auth.GitLabLoginHandler",
    "okta": "flower.views.auth.OktaLoginHandler",
}


VERSION_LABEL = f"{API_GROUP}/version"  # a worker pod's template version (kube/render.py's template_version)
STOP_MARGIN = 30  # seconds a stopping worker's pod gets beyond its drain timeout: put messages back, exit


def worker_grace(pool: WorkerPool, queue: QueueSpec) -> int:
    """``terminationGracePeriodSeconds`` of a queue's pods: at least the queue's ``drainTimeoutSeconds`` plus
    :data:`STOP_MARGIN`, so that a worker stopped by anything other than a scale-down (a rollout of a new version,
    an eviction by ``kubectl drain`` or a node upgrade, a consolidation) gets as long to finish what it runs as a
    drained one does, instead of being killed at Kubernetes' default 30 s. One setting, the drain timeout, bounds
    them all; the template's grace only raises it. An idle worker exits at once whatever its grace: only a busy one
    uses it. With draining off (drain timeout 0), the template's."""
    grace = pool.spec.template.termination_grace_period_seconds
    drain_timeout = round(pool.spec.policy_for(queue.name).drain_timeout)
    return max(grace, drain_timeout + STOP_MARGIN) if drain_timeout > 0 else grace


def soft_shutdown_timeout(pool: WorkerPool, queue: QueueSpec | None = None) -> int:
    """Seconds running tasks get after SIGTERM: the grace period less a margin for the worker to put
    unstarted messages back before the kubelet's SIGKILL."""
    grace = pool.spec.template.termination_grace_period_seconds if queue is None else worker_grace(pool, queue)
    return grace - 5 if grace > 10 else max(grace // 2, 1)


def worker_environment(pool: WorkerPool, queue: QueueSpec) -> list[dict[str, Any]]:
    """The worker's settings; the user's ``template.env`` comes last, so it can override any of them."""
    env: list[dict[str, Any]] = [
        {"name": contract.APP.name, "value": pool.spec.app},
        {"name": contract.QUEUES.name, "value": queue.name},
        {"name": contract.POOL.name, "value": str(queue.pool.value)},
        {"name": contract.CONCURRENCY.name, "value": str(queue.concurrency)},
        {"name": contract.PREFETCH_MULTIPLIER.name, "value": str(queue.prefetch_multiplier)},
    ]
    if queue.max_tasks_per_child is not None:
        env.append({"name": contract.MAX_TASKS_PER_CHILD.name, "value": str(queue.max_tasks_per_child)})
    env.append({"name": contract.SOFT_SHUTDOWN_TIMEOUT.name, "value": str(soft_shutdown_timeout(pool, queue))})
    version = {"fieldPath": f"metadata.labels['{VERSION_LABEL}']"}  # the pod's own: one env for every version
    env.append({"name": contract.TEMPLATE_VERSION.name, "valueFrom": {"fieldRef": version}})
    if pool.spec.flower is not None and pool.spec.flower.task_events:
        env.append({"name": TASK_EVENTS_ENV, "value": "1"})
    env += _identity_and_broker(pool)
    return _with_user_env(env, pool.spec.template.env)


def _identity_and_broker(pool: WorkerPool) -> list[dict[str, Any]]:
    """What every process of the pool gets: its name (the pod's), its state directory and the broker."""
    env: list[dict[str, Any]] = [
        {"name": WORKER_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": STATE_DIR_ENV, "value": STATE_DIR},
    ]
    broker = pool.spec.broker
    if broker.url_from is not None:
        env.append({"name": BROKER_URL_ENV, "valueFrom": {"secretKeyRef": _ref(broker.url_from)}})
    elif broker.url is not None:
        env.append({"name": BROKER_URL_ENV, "value": broker.url})
    if broker.ca_from is not None:
        env.append({"name": BROKER_CA_ENV, "value": BROKER_CA_FILE})
    return env


def _ref(ref: SecretKeyRef) -> dict[str, str]:
    return {"name": ref.name, "key": ref.key}


def _with_user_env(env: list[dict[str, Any]], *user_lists: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``env`` followed by the user's lists, a later entry replacing an earlier one of the same name."""
    for user in user_lists:
        entries = [dict(e) for e in user]
        overridden = {e.get("name") for e in entries}
        env = [e for e in env if e.get("name") not in overridden] + entries
    return env


def worker_args(pool: WorkerPool) -> list[str]:
    """The container arguments: ``template.extraArgs`` for Celery, after ``--``."""
    extra = pool.spec.template.extra_args
    return ["--", *extra] if extra else []


# --- beat and Flower ---------------------------------------------------------------------------------------


def beat_schedule_file(beat: BeatSpec) -> str:
    """Where the default scheduler keeps its schedule: on the schedule volume, else in the pod's /tmp (kept
    across container restarts, lost with the pod)."""
    directory = BEAT_SCHEDULE_DIR if beat.schedule_volume is not None else "/tmp"
    return f"{directory}/{BEAT_SCHEDULE_NAME}"


def beat_environment(pool: WorkerPool, beat: BeatSpec) -> list[dict[str, Any]]:
    """``workerpool-worker beat``'s settings; ``template.env`` (the app's own settings) can override them."""
    env: list[dict[str, Any]] = [
        {"name": contract.APP.name, "value": pool.spec.app},
        {"name": contract.BEAT_MAX_INTERVAL.name, "value": str(beat.max_interval_seconds)},
        {"name": BEAT_SCHEDULE_FILE_ENV, "value": beat_schedule_file(beat)},
    ]
    if beat.scheduler is not None:
        env.append({"name": contract.BEAT_SCHEDULER.name, "value": beat.scheduler})
    env += _identity_and_broker(pool)
    return _with_user_env(env, pool.spec.template.env)


def beat_args(beat: BeatSpec) -> list[str]:
    """The container arguments: the ``beat`` mode, then ``beat.extraArgs`` for ``celery beat``."""
    return ["beat", "--", *beat.extra_args] if beat.extra_args else ["beat"]


def flower_db_file(flower: FlowerSpec) -> str:
    directory = FLOWER_STATE_DIR if flower.state_volume is not None else "/tmp"
    return f"{directory}/{FLOWER_DB_NAME}"


def flower_environment(pool: WorkerPool, flower: FlowerSpec) -> list[dict[str, Any]]:
    """``workerpool-worker flower``'s settings: Flower reads its own options from ``FLOWER_*`` variables. Secrets
    stay in Secrets (``valueFrom``). ``template.env`` and then ``flower.env`` can override any of them."""
    env: list[dict[str, Any]] = [
        {"name": contract.APP.name, "value": pool.spec.app},
        {"name": "FLOWER_PORT", "value": str(FLOWER_PORT)},
        # Never switch task events on for every worker of the broker (Flower's default): only the pool's own
        # workers send them, and only with flower.taskEvents (see worker_environment).
        {"name": "FLOWER_ENABLE_EVENTS", "value": "false"},
    ]
    auth = flower.auth
    if auth.basic_from is not None:
        env.append({"name": "FLOWER_BASIC_AUTH", "valueFrom": {"secretKeyRef": _ref(auth.basic_from)}})
    elif auth.oauth is not None:
        oauth = auth.oauth
        env += [
            {"name": "FLOWER_AUTH_PROVIDER", "value": FLOWER_AUTH_PROVIDERS[oauth.provider.value]},
            {"name": "FLOWER_AUTH", "value": oauth.allowed_emails},
            {"name": "FLOWER_OAUTH2_REDIRECT_URI", "value": oauth.redirect_uri},
            {"name": "FLOWER_OAUTH2_KEY", "valueFrom": {"secretKeyRef": _ref(oauth.client_id_from)}},
            {"name": "FLOWER_OAUTH2_SECRET", "valueFrom": {"secretKeyRef": _ref(oauth.client_secret_from)}},
        ]
    if flower.purge_offline_workers_seconds:
        env.append({"name": "FLOWER_PURGE_OFFLINE_WORKERS", "value": str(flower.purge_offline_workers_seconds)})
    if flower.persistent:
        env += [
            {"name": "FLOWER_PERSISTENT", "value": "true"},
            {"name": "FLOWER_DB", "value": flower_db_file(flower)},
            {"name": "FLOWER_STATE_SAVE_INTERVAL", "value": str(FLOWER_STATE_SAVE_INTERVAL_MS)},
        ]
    if flower.url_prefix is not None:
        env.append({"name": "FLOWER_URL_PREFIX", "value": flower.url_prefix})
    env += _identity_and_broker(pool)
    return _with_user_env(env, pool.spec.template.env, flower.env)


def flower_args(flower: FlowerSpec) -> list[str]:
    """The container arguments: the ``flower`` mode, then ``flower.extraArgs`` for Flower."""
    return ["flower", "--", *flower.extra_args] if flower.extra_args else ["flower"]


def flower_path(flower: FlowerSpec, path: str) -> str:
    """A path of Flower's web server, under ``flower.urlPrefix``."""
    return f"/{flower.url_prefix}{path}" if flower.url_prefix else path
