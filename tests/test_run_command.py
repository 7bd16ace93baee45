"""`workerpool-operator run` as the chart starts it (kopf in the command's own process), against the API emulator:
it serves pools; started before its CRD it waits a little, then exits with code 3 so that its pod restarts and
serves the pools once the CRD exists (both of the chart's modes); and an API server that goes away while it runs
is said once, in one line, never with a traceback, while the operator keeps running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.kube import RESOURCES, KubeCluster
from tests.operator_helpers import NS, api, condition, create_pool, create_secret, deployments, pool_manifest, wait_for
from workerpool_operator import API_GROUP, API_VERSION, PLURAL, exit_codes
from workerpool_operator.local.embedded_redis import stop_process

WORKERPOOLS = f"{API_GROUP}/{API_VERSION}/{PLURAL}"


class RunProcess:
    """``workerpool-operator run ARGS`` in a process of its own, its output (stdout and stderr) in a file."""

    def __init__(self, kube: KubeCluster, log: Path, *args: str, **env: str) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("WORKERPOOL_", "KUBERNETES_"))}
        environment |= {"KUBECONFIG": str(kube.kubeconfig), "WORKERPOOL_OPERATOR_METRICS_PORT": "0", **env}
        self.log = log
        self._file = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workerpool_operator.cli", "run", *args],
            env=environment,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def exited(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        stop_process(self.process, timeout=30)
        self._file.close()


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[list[RunProcess]]:
    started: list[RunProcess] = []
    yield started
    for run in started:
        run.stop()


def serves_workerpools(kube: KubeCluster) -> bool:
    found = api(kube).get(f"/apis/{API_GROUP}/{API_VERSION}")
    return found is not None and PLURAL in {resource.get("name") for resource in found.get("resources") or ()}


def set_workerpools_served(kube: KubeCluster, served: bool) -> None:
    """The WorkerPool CRD installed or not, as the API server's discovery shows it (the emulator's resources)."""
    assert kube.emulator is not None
    resources = kube.emulator.resources

    def change() -> None:
        if served:
            resources[WORKERPOOLS] = RESOURCES[WORKERPOOLS]
        elif WORKERPOOLS in resources:
            del resources[WORKERPOOLS]

    kube.call(change)
    wait_for(lambda: serves_workerpools(kube) is served, timeout=10, message=f"discovery served={served}")


@pytest.mark.parametrize("mode", ["namespaced", "cluster-wide"])
def test_started_before_its_crd_it_exits_3_then_serves_pools_once_the_crd_exists(
    kube: KubeCluster, redis_server: RedisServer, runs: list[RunProcess], tmp_path: Path, mode: str
) -> None:
    # The chart's modes: a list of namespaces (kopf scans no CRDs) or every namespace.
    args = ["--standalone", "--namespace", NS] if mode == "namespaced" else ["--standalone"]
    set_workerpools_served(kube, False)
    create_secret(kube, "redis", {"url": redis_server.url})

    # No CRD within the wait: one clear line, exit 3 (the pod restarts, with Kubernetes' back-off).
    first = RunProcess(kube, tmp_path / "first.log", *args, WORKERPOOL_OPERATOR_CRD_WAIT="2")
    runs.append(first)
    code = wait_for(first.exited, timeout=30, message="the first run exits")
    assert code == exit_codes.UNAVAILABLE, first.output()
    last = first.output().strip().splitlines()[-1]
    assert last.startswith("workerpool-operator run: the API server at ") and "does not serve WorkerPools" in last
    assert f"the CRD {PLURAL}.{API_GROUP} is not installed (waited 2 s)" in last
    assert "Traceback" not in first.output()

    # The restarted pod: the CRD is applied while it waits; it starts and serves the pool created after.
    second = RunProcess(kube, tmp_path / "second.log", *args, WORKERPOOL_OPERATOR_CRD_WAIT="60")
    runs.append(second)
    wait_for(lambda: "does not serve WorkerPools yet" in second.output(), timeout=20, message="waiting, said once")
    set_workerpools_served(kube, True)
    create_pool(kube, pool_manifest("shop"))
    wait_for(lambda: "shop-default" in deployments(kube), timeout=30, message="the pool's Deployment")
    wait_for(lambda: (condition(kube, "shop", "Ready") or {}).get("status") == "True", timeout=30, message="Ready")
    assert second.exited() is None
    assert second.output().count("does not serve WorkerPools yet") == 1
    assert "Traceback" not in second.output() and "Unresolved resources" not in second.output()


def test_an_api_server_that_goes_away_is_retried_one_line_at_a_time(
    redis_server: RedisServer, runs: list[RunProcess], tmp_path: Path
) -> None:
    kube = KubeCluster(tmp_path).start()  # not the fixture's: this test stops it, and a cluster stops once
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, pool_manifest("shop"))
    timings = ["--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.5"]
    run = RunProcess(kube, tmp_path / "run.log", "--lease-namespace", NS, *timings)
    runs.append(run)
    wait_for(lambda: (condition(kube, "shop", "Ready") or {}).get("status") == "True", timeout=30, message="Ready")
    served = len(run.output().splitlines())

    kube.stop()
    wait_for(lambda: "no longer the leader" in run.output(), timeout=30, message="the leader steps down")
    time.sleep(5)  # more failed attempts: the Lease every 0.5 s, the scaling loop's writes
    assert run.exited() is None, "the operator keeps running and retrying"
    after = run.output().splitlines()[served:]
    assert "Traceback" not in run.output(), run.output()
    assert [line for line in after if line.startswith(" ")] == [], "every message is one line"
    failures = [line for line in after if "cannot read or write the Lease" in line]
    assert len(failures) == 1, after  # said once, not once per attempt
    assert "Connection refused" in failures[0]
    assert len(after) < 20, after
