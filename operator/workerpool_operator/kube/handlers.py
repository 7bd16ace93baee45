"""kopf wiring: thin handlers that call the pure modules and the I/O adapters.

Run with ``kopf run -m workerpool_operator.kube.handlers`` (``workerpool-operator run`` does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import kopf

from workerpool_operator import API_GROUP, API_VERSION, PLURAL
from workerpool_operator.kube import metrics
from workerpool_operator.kube.backend import KubeApi
from workerpool_operator.kube.pools import PoolNotServed, PoolOperator
from workerpool_operator.kube.render import POOL_LABEL
from workerpool_operator.observe import Observer
from workerpool_operator.scaling_loop import ScalingLoop

logger = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """All kopf settings in one place."""
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    # kopf logs each handler's success at INFO: a line per Deployment status change. At the default level the
    # log keeps what a user needs (our scale decisions, every problem); --verbose shows everything again.
    default_level = logging.getLogger().level == logging.INFO
    logging.getLogger("kopf.objects").setLevel(logging.WARNING if default_level else logging.NOTSET)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    # With a list of watched namespaces the operator has no cluster-wide permission (see the Helm chart):
    # kopf must not list namespaces or watch CRDs, or it retries those refused calls before serving.
    settings.scanning.disabled = os.environ.get("WORKERPOOL_OPERATOR_NAMESPACED") == "1"


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then the kubeconfig named by ``KUBECONFIG`` (read at call time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def start_scaling(memo: kopf.Memo, **_: Any) -> None:
    """The scaling loop and the retry loop run beside kopf's watches, for as long as the operator runs;
    they act only on the pools served now (see :func:`serve`)."""
    metrics.serve()
    pools = PoolOperator(KubeApi())
    observer = Observer()
    pools.loop = ScalingLoop(pools.backend, pools.report, observer)
    stop = asyncio.Event()
    memo.pools = pools
    memo.observer = observer
    memo.stop = stop
    memo.tasks = [
        asyncio.create_task(pools.loop.run(stop), name="scaling loop"),
        asyncio.create_task(pools.run_retries(stop), name="retries"),
    ]


@kopf.on.cleanup()
async def stop_scaling(memo: kopf.Memo, **_: Any) -> None:
    memo.stop.set()
    await asyncio.gather(*memo.tasks, return_exceptions=True)
    await memo.observer.aclose()
    memo.pools.api.close()


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
async def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Deployments, scaling and status from the spec. A pool that cannot be served says why in its status
    and an Event, and is retried by the operator (no handler failure: one bad pool never blocks others)."""
    with contextlib.suppress(PoolNotServed):
        await memo.pools.reconcile(body)


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, cancellation_backoff=5.0, cancellation_timeout=5.0)
async def serve(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any) -> None:
    """While this runs, this operator serves the pool: it is in the scaling loop and retried. kopf stops it
    when a peer with a higher priority pauses this operator (and starts it again on resume), when the pool
    is deleted, and on exit; then the pool leaves the scaling loop, so two operators never both scale it."""
    key = (str(body.metadata.namespace), str(body.metadata.name))
    memo.pools.serve(key, dict(body.get("status") or {}))
    try:
        await stopped.wait()
    finally:
        memo.pools.unserve(key)


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
async def pool_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Forget a deleted pool (its Deployments are garbage-collected through their owner reference)."""
    if event.get("type") == "DELETED":
        meta = event["object"].get("metadata") or {}
        memo.pools.forget((meta.get("namespace"), meta.get("name")))


@kopf.on.event("apps", "v1", "deployments", labels={POOL_LABEL: kopf.PRESENT})
async def deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Keep the replica cache current and put back a Deployment edited or deleted by hand."""
    await memo.pools.deployment_changed(str(event.get("type")), event["object"])
