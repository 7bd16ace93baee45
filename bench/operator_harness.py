"""What the operator benchmarks share: the API emulator, a redis-server and the operator in a process of its own
(so its CPU time and memory are its own), as in production: `kopf run -m workerpool_operator.kube.handlers`."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import RedisServer
from tests.kube import KubeCluster

from bench.api_server import BenchApiServer
from workerpool_operator import API_GROUP, API_VERSION, PLURAL
from workerpool_operator.kube.api import KubeApi
from workerpool_operator.local.embedded_redis import stop_process


class RequestLog:
    """Counts the emulator's requests and then forgets them. kmock matches each request against its whole
    request history (quadratic), which at thousands of objects would measure the emulator, not the
    operator; its fallback reactions do not depend on the history, so dropping it changes no answer."""

    def __init__(self, kube: KubeCluster, every: float = 0.2) -> None:
        self.kube = kube
        self.writes = 0
        self.watched: set[str] = set()
        self._every = every
        self._stopped = False
        assert kube.emulator is not None
        kube._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        assert self.kube.emulator is not None
        try:
            taken = self.kube.emulator.requests()
            self.kube.emulator.forget_requests(len(taken))
            for request in taken:
                if str(request.method) not in ("GET", "method.GET"):
                    self.writes += 1
                elif request.resource is not None and (request.params or {}).get("watch"):
                    self.watched.add(str(request.resource.plural))
        finally:
            if not self._stopped:
                self.kube._loop.call_later(self._every, self._drain)

    def stop(self) -> None:
        self._stopped = True


@contextmanager
def cluster_and_redis(realistic: bool = False) -> Iterator[tuple[KubeCluster, RedisServer, KubeApi]]:
    """The emulator (fast at scale; with ``realistic``, objects as a real API server returns them: see
    bench/api_server.py), a redis-server, and a client that writes as ``kubectl`` would."""
    workdir = Path(tempfile.mkdtemp(prefix="workerpool-bench-"))
    kube = KubeCluster(workdir, emulator=lambda: BenchApiServer(realistic=realistic)).start()
    kube.log = RequestLog(kube)  # type: ignore[attr-defined]
    redis = RedisServer(workdir=workdir / "redis").start()
    client = kube.api_client()
    client.user_agent = "kubectl/v1.33.0"
    api = KubeApi(client)
    try:
        yield kube, redis, api
    finally:
        kube.log.stop()  # type: ignore[attr-defined]
        api.close()
        redis.stop()
        kube.stop()


@contextmanager
def operator_process(kube: KubeCluster, probe: Path | None = None, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """The operator in a process of its own, as `kopf run -m workerpool_operator.kube.handlers` runs it; with
    ``probe``, through bench/operator_probe.py, which writes its measurements there on SIGUSR1."""
    environment = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "WORKERPOOL_OPERATOR_METRICS_PORT": "0", **env}
    run = ["-m", "bench.operator_probe", str(probe)] if probe is not None else ["-m", "kopf"]
    args = [sys.executable, *run, "run", "-m", "workerpool_operator.kube.handlers", "--standalone", "-A"]
    log = open(kube.kubeconfig.parent / "operator.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(args, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process, timeout=30)
        log.close()


def wait_watching(kube: KubeCluster, plural: str = "workerpools", timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if plural in kube.log.watched:  # type: ignore[attr-defined]
            return
        time.sleep(0.1)
    raise RuntimeError(f"the operator never watched {plural}: see {kube.kubeconfig.parent / 'operator.log'}")


def create_secret(api: KubeApi, namespace: str, url: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "redis", "namespace": namespace},
        "data": {"url": base64.b64encode(url.encode()).decode()},
    }
    api.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body=body)


def create_pool(api: KubeApi, namespace: str, name: str, queues: list[str], scaling: dict[str, Any]) -> None:
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "WorkerPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "broker": {"urlFrom": {"secretKeyRef": {"name": "redis", "key": "url"}}},
            "app": "shop.celery:app",
            "template": {"image": "registry.example/shop-worker:1.0"},
            "queues": [{"name": q, "maxReplicas": 1000} for q in queues],
            "scaling": scaling,
        },
    }
    api.request("POST", f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}", body=body)


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def process_rss_mib(pid: int, field: str = "VmRSS") -> float:
    """The process' resident memory now (``VmHWM``: its peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def api_writes(kube: KubeCluster) -> int:
    time.sleep(0.5)  # let the log catch up
    writes: int = kube.log.writes  # type: ignore[attr-defined]
    return writes


def operator_log_lines(kube: KubeCluster) -> int:
    with open(kube.kubeconfig.parent / "operator.log", "rb") as log:
        return sum(1 for _ in log)


def probe_now(
    process: subprocess.Popen[bytes], probe: Path, timeout: float = 600.0, *, memory: bool = True
) -> dict[str, Any]:
    """Ask the probed operator for its measurements (SIGUSR1) and wait for them; ``memory=False``: only the loop
    lag and GC pauses (which start anew), without the memory walk, whose allocations would stay in the RSS."""
    probe.unlink(missing_ok=True)
    if not memory:
        probe.with_name(probe.name + ".reset").touch()
    process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not probe.exists() or not probe.stat().st_size:
        if time.monotonic() > deadline:
            raise RuntimeError("the operator's probe did not answer")
        time.sleep(0.5)
    time.sleep(0.5)  # written at once, but let the writer close it
    found: dict[str, Any] = json.loads(probe.read_text())
    return found


def scrape(port: int) -> dict[str, float]:
    """The operator's /metrics, summed by metric name (label sets added up)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            metric = name.split("{", 1)[0]
            sums[metric] = sums.get(metric, 0.0) + float(value)
    sums["_series"] = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return sums
