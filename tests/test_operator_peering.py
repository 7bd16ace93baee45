"""kopf peering pauses the operator, scaling included: a peer with a higher priority takes over the pools.

The operator runs with ``--peering`` (not ``--standalone``) against the emulator; the test plays the other
peer by writing a keep-alive into the peering object's status, in kopf's own format.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Iterator

import pytest
from kopf.testing import KopfRunner

from tests.conftest import RedisServer, _wait_for_watch
from tests.kube import KubeCluster
from tests.operator_helpers import api, create_pool, create_secret, enqueue, pool_manifest, replicas, wait_for

PEERING = "workerpool-test"
PEERING_PATH = f"/apis/kopf.dev/v1/clusterkopfpeerings/{PEERING}"
OTHER_PEER = "developer@laptop"  # e.g. a `kopf run --dev` on a workstation (priority 666)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def seen(self, fragment: str) -> bool:
        return any(fragment in message for message in self.messages)


@pytest.fixture
def peered_operator(kube: KubeCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Records]:
    """The operator as the chart runs it: peering on, in a ClusterKopfPeering that exists beforehand."""
    monkeypatch.setenv("WORKERPOOL_OPERATOR_METRICS_PORT", os.environ.get("WORKERPOOL_OPERATOR_METRICS_PORT", "0"))
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}}
    api(kube).request("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", body=peering)
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    args = ["run", "-m", "workerpool_operator.kube.handlers", "--all-namespaces", "--verbose"]
    args += ["--peering", PEERING, "--priority", "0"]
    try:
        with KopfRunner(args, timeout=60) as runner:
            _wait_for_watch(kube, "workerpools")
            yield records
    finally:
        root.removeHandler(records)
    assert runner.exception is None, f"the operator crashed: {runner.exception!r}"


def _keepalive(lifetime: int) -> dict[str, object]:
    """A peer's entry in the peering object's status, as kopf's ``touch()`` writes it."""
    lastseen = datetime.datetime.now(datetime.UTC).isoformat()
    return {"status": {OTHER_PEER: {"priority": 666, "lifetime": lifetime, "lastseen": lastseen}}}


def _patch_peering(kube: KubeCluster, body: dict[str, object]) -> None:
    api(kube).request("PATCH", PEERING_PATH, body=body, content_type="application/merge-patch+json")


def test_a_higher_priority_peer_pauses_scaling_until_it_is_gone(
    kube: KubeCluster, peered_operator: _Records, redis_server: RedisServer
) -> None:
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, pool_manifest("shop"))  # concurrency 2, max 5
    enqueue(redis_server.url, "default", 4)
    wait_for(lambda: replicas(kube, "shop-default") == 2, message="scaled to 2 while serving")

    _patch_peering(kube, _keepalive(lifetime=60))
    wait_for(lambda: peered_operator.seen("Pausing operations"), message="kopf paused by the other peer")
    wait_for(lambda: peered_operator.seen("apps/shop: no longer served"), message="the pool's daemon stopped")
    enqueue(redis_server.url, "default", 6)  # 10 messages: 5 replicas, if anyone were scaling
    time.sleep(3.0)  # six polls at 0.5 s
    assert replicas(kube, "shop-default") == 2, "a paused operator scaled a pool"

    _patch_peering(kube, {"status": {OTHER_PEER: None}})  # the other peer exits (kopf removes its entry)
    wait_for(lambda: peered_operator.seen("Resuming operations"), message="kopf resumed")
    wait_for(lambda: replicas(kube, "shop-default") == 5, message="scaling again after the pause")


def test_an_expired_peer_stops_pausing(kube: KubeCluster, peered_operator: _Records, redis_server: RedisServer) -> None:
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, pool_manifest("shop"))
    wait_for(lambda: peered_operator.seen("apps/shop: served"), message="served")
    _patch_peering(kube, _keepalive(lifetime=6))  # a peer that dies without saying so: its keep-alive expires
    wait_for(lambda: peered_operator.seen("apps/shop: no longer served"), message="paused")
    enqueue(redis_server.url, "default", 6)
    time.sleep(2.0)
    assert replicas(kube, "shop-default") == 0
    wait_for(lambda: replicas(kube, "shop-default") == 3, timeout=20, message="scaling once the keep-alive expired")
