"""kopf wiring: thin handlers over :class:`~workerpool_operator.kube.pools.PoolService` and its parts.

Two entries start the same handlers: :func:`run_operator` (``workerpool-operator run``: kopf in this process,
with the :class:`~workerpool_operator.kube.settings.OperatorSettings` the command built in kopf's memo), and
``kopf run -m workerpool_operator.kube.handlers`` (the tests' and a developer's: the settings come from the
environment alone). Only ``on.event`` handlers: they need no finalizer and write nothing to the objects they see
(kopf's change handlers store their progress and a copy of the spec in annotations), so a standby replica never
writes, and a pool can be deleted whether the operator runs or not.

With a Lease in the settings (``run`` sets one unless ``--standalone``), replicas elect a leader through it and
only the leader writes; without one this process writes alone. kopf itself never peers (``standalone``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
import uuid
from collections.abc import Iterable
from typing import Any, cast

import kopf

from workerpool_operator import API_GROUP, API_VERSION, PLURAL
from workerpool_operator.kube import metrics
from workerpool_operator.kube.api import API_THREADS, KubeApi
from workerpool_operator.kube.backend import KubeBackend
from workerpool_operator.kube.drift import DriftRepair
from workerpool_operator.kube.events import ApiEvents
from workerpool_operator.kube.heap import HeapSettler
from workerpool_operator.kube.leader import Alone, LeaseElector
from workerpool_operator.kube.pools import PoolService
from workerpool_operator.kube.reconcile import Reconciler
from workerpool_operator.kube.render import POOL_LABEL
from workerpool_operator.kube.reporter import StatusReporter
from workerpool_operator.kube.secrets import SecretReader
from workerpool_operator.kube.settings import OperatorSettings, SettingsError, load_settings
from workerpool_operator.kube.workers_watch import WorkersWatch
from workerpool_operator.observe import DrainWriter, Observer
from workerpool_operator.scaling_loop import ScalingLoop

logger = logging.getLogger(__name__)

IDLE_WORKER_SECONDS = 0.5  # kopf's per-object worker exits after this long without an event (see configure)


class NoDiffBase(kopf.DiffBaseStorage):
    """No essence kept or built. kopf keeps an object's essence to tell its change handlers what changed; this
    operator has none (only ``on.event``: it plans from the whole object), yet kopf builds the essence of every
    object on every event, a deep copy of it: a fifth of the operator's CPU at 1,000 pools (docs/benchmarks.md,
    "Operator at scale"). An empty one, never stored, tells kopf there is nothing to compare."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """All kopf settings in one place."""
    # No handler needs a finalizer; this name only keeps kopf away from the first release's, which the
    # operator removes itself (pools.LEGACY_FINALIZER).
    settings.persistence.finalizer = f"{API_GROUP}/kopf-finalizer"
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    # kopf logs each handler's success at INFO: a line per Deployment status change. At the default level the
    # log keeps what a user needs (our scale decisions, every problem); --verbose shows everything again.
    default_level = logging.getLogger().level == logging.INFO
    logging.getLogger("kopf.objects").setLevel(logging.WARNING if default_level else logging.NOTSET)
    # urllib3 (under the kubernetes client) logs a warning per connection retry, three per failed request,
    # before our own line about the failure: the failure is said once, by us.
    logging.getLogger("urllib3").setLevel(logging.ERROR if default_level else logging.NOTSET)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    # kopf's worker for an object keeps that object's last watch event (a whole Deployment, managedFields and
    # all) while it waits for the next one, then exits after this idle time (5 s by default). When every
    # Deployment changes at once (a start-up, a rollout) that is one event held per object: at 1,000 pools,
    # 2,000 workers and about 80 MiB, whose freed room Python's allocator keeps (docs/benchmarks.md).
    settings.queueing.idle_timeout = IDLE_WORKER_SECONDS
    # With a list of watched namespaces the operator has no cluster-wide permission (see the Helm chart):
    # kopf must not list namespaces or watch CRDs, or it retries those refused calls before serving. kopf has
    # set `clusterwide` from its arguments before any startup handler runs, in both entries.
    settings.scanning.disabled = not settings.peering.clusterwide


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then the kubeconfig named by ``KUBECONFIG`` (read at call time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def start(memo: kopf.Memo, **_: Any) -> None:
    """The operator's parts, and the tasks that run beside kopf's watches for as long as the operator runs."""
    config = operator_settings(memo)
    # every API call runs in a thread of this executor (KubeApi is synchronous): API_THREADS says why so many
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="kube-api")
    asyncio.get_running_loop().set_default_executor(executor)
    metrics.serve(config.metrics_port)
    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"  # the pod's name, and this process
    api = KubeApi(identity=identity)
    stop = asyncio.Event()
    elector: LeaseElector | None = None
    leadership: LeaseElector | Alone = Alone()
    lease = config.lease_config(identity)
    if lease is not None:
        leadership = elector = LeaseElector(
            api, lease, on_started=lambda: memo.pools.start_writing(), on_stopped=lambda: memo.pools.stop_writing()
        )
    may_write = leadership.holds
    backend = KubeBackend(api)
    events = ApiEvents(api, may_write)
    reporter = StatusReporter(api, backend, events, may_write, figures_refresh=config.status_refresh)
    observer = Observer()
    loop = ScalingLoop(backend, lambda result: memo.pools.report(result), observer, DrainWriter(observer.connections))
    if config.wakeups:
        observer.enable_wakeups(loop.wake)
    reconciler = Reconciler(api, backend, events)
    watch = WorkersWatch(api, events, may_write, protect_after=config.protect_busy_after)
    memo.pools = PoolService(
        api=api,
        loop=loop,
        reconciler=reconciler,
        reporter=reporter,
        secrets=SecretReader(api, recheck=config.secret_recheck),
        events=events,
        may_write=may_write,
        retry_delay=config.retry_delay,
        watch=watch,
    )
    memo.drift = DriftRepair(api, backend, events, reconciler, memo.pools.plan_of, may_write)
    memo.api, memo.observer, memo.stop = api, observer, stop
    memo.tasks = [
        asyncio.create_task(loop.run(stop), name="scaling loop"),
        asyncio.create_task(memo.pools.run_retries(stop), name="retries"),
        asyncio.create_task(HeapSettler(lambda: len(memo.pools.records) + loop.pool_count).run(stop), name="heap"),
    ]
    if elector is not None:
        memo.tasks.append(asyncio.create_task(elector.run(stop), name="leader election"))
    else:
        metrics.set_leader(True)


def operator_settings(memo: kopf.Memo) -> OperatorSettings:
    """The settings ``run`` put in the memo; under ``kopf run -m`` (no memo of ours), the environment's."""
    given = memo.get("settings")
    if isinstance(given, OperatorSettings):
        return given
    try:
        settings = load_settings()
    except SettingsError as error:  # one line, and kopf stops (it would retry any other exception)
        raise kopf.PermanentError(str(error)) from None
    memo.settings = settings
    return settings


def run_operator(settings: OperatorSettings, stop_flag: threading.Event | None = None) -> None:
    """kopf in this process, with these settings, until SIGINT or SIGTERM, or ``stop_flag`` (what
    ``workerpool-operator run`` starts after its checks). Logging is the caller's (:func:`configure_logging`)."""
    kopf.run(
        stop_flag=stop_flag,
        standalone=True,  # kopf never peers: replicas agree through the Lease (kube/leader.py)
        clusterwide=settings.clusterwide,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness,
        memo=kopf.Memo(settings=settings),
    )


def configure_logging(settings: OperatorSettings) -> None:
    """Logging as ``kopf run --log-format ... [--verbose]`` sets it up."""
    kopf.configure(verbose=settings.verbose, log_format=kopf.LogFormat[settings.log_format.upper()], log_prefix=None)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.stop.set()
    await asyncio.gather(*memo.tasks, return_exceptions=True)
    await memo.observer.aclose()
    memo.api.close()


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
async def pool_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Plan every pool; apply, scale and report the served ones (see PoolService.pool_changed)."""
    await memo.pools.pool_changed(event.get("type"), event["object"])


@kopf.on.event("apps", "v1", "deployments", labels={POOL_LABEL: kopf.PRESENT})
async def deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Keep the replica cache current, and put back a Deployment edited or deleted by hand."""
    await memo.drift.deployment_changed(str(event.get("type")), event["object"])


def is_scale_target(namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any) -> bool:
    """Whether a pool scales this Deployment without rendering it: kopf calls the handler below for those only."""
    drift = memo.get("drift")
    return isinstance(drift, DriftRepair) and drift.is_target(str(namespace), str(name))


@kopf.on.event("apps", "v1", "deployments", labels={POOL_LABEL: kopf.ABSENT}, when=is_scale_target)
async def scale_target_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Keep the replica cache current for the Deployments pools scale without rendering them (``scaleTargetRef``).
    kopf watches every Deployment of the watched namespaces already (it filters labels itself): no other watch,
    and the filter keeps other Deployments' events from reaching a handler."""
    memo.drift.target_changed(str(event.get("type")), event["object"])


@kopf.on.event("v1", "services", labels={POOL_LABEL: kopf.PRESENT})
async def service_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Put back Flower's Service when it is edited or deleted by hand."""
    await memo.drift.service_changed(str(event.get("type")), event["object"])
