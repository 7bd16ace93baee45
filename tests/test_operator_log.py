"""The operator's log at its default level says what a user needs (scale decisions, problems), not a line per
Kubernetes event: it runs in a process of its own, as `workerpool-operator run` starts it, with its output in a file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.api_server import controller_status

from tests.conftest import RedisServer, _wait_for_watch
from tests.kube import KubeCluster
from tests.operator_helpers import (
    NS,
    api,
    condition,
    create_pool,
    create_secret,
    deployments,
    pool_manifest,
    wait_for,
)
from workerpool_operator.local.embedded_redis import stop_process

STATUS_UPDATES = 40


@pytest.fixture
def operator_log(kube: KubeCluster, tmp_path: Path) -> Iterator[Path]:
    """The operator in its own process at the default log level; yields the file its output goes to."""
    log = tmp_path / "operator.log"
    environment = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "WORKERPOOL_OPERATOR_METRICS_PORT": "0"}
    args = [sys.executable, "-m", "kopf", "run", "-m", "workerpool_operator.kube.handlers", "--standalone", "-A"]
    with log.open("wb") as output:
        process = subprocess.Popen(args, env=environment, stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_for_watch(kube, "workerpools")
            yield log
        finally:
            stop_process(process, timeout=30)


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_deployment_status_changes_leave_the_log_quiet(
    kube: KubeCluster, redis_server: RedisServer, operator_log: Path
) -> None:
    create_secret(kube, "redis", {"url": redis_server.url})
    queues = [{"name": "default", "concurrency": 2, "minReplicas": 1, "maxReplicas": 5}]
    create_pool(kube, pool_manifest("shop", queues=queues, scaling={"pollIntervalSeconds": 5}))
    wait_for(lambda: (condition(kube, "shop", "Ready") or {}).get("status") == "True", 30, "the pool Ready")
    (name,) = deployments(kube)
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/{name}"
    client = api(kube)
    before = len(_lines(operator_log))

    # A burst of status updates, as the controller-manager writes them while pods start and fail.
    live = client.request("GET", path)
    for number in range(STATUS_UPDATES):
        status = controller_status(live, ready=bool(number % 2))
        client.request("PATCH", f"{path}/status", body={"status": status}, content_type="application/merge-patch+json")
        time.sleep(0.05)
    # Then something a user must hear of: the Deployment deleted by hand. kopf handles one object's events in
    # order, so once its restoration is in the log, so would be any line about the burst before it.
    client.request("DELETE", path)
    wait_for(lambda: any("DeploymentRestored" in line for line in _lines(operator_log)), 30, "the restoration")

    during = _lines(operator_log)[before:]
    assert not [line for line in during if "deployment_event" in line], "\n".join(during)
    assert len(during) == 1 and "Deployment deleted by hand, recreated" in during[0], "\n".join(during)
