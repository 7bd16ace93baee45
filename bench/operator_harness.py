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
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import kmock
import redis
from kmock._internal import rendering
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


@attrs.define(kw_only=True)
class TimedApiServer(BenchApiServer):
    """The bench's emulator, noting the wall-clock time at which each write setting a Deployment's replicas
    was stored: when "the replicas changed", without polling the emulator from the bench (which would take
    CPU from the operator on a small machine)."""

    replica_writes: list[ReplicaWrite] = attrs.field(factory=list, init=False)
    _written: threading.Condition = attrs.field(factory=threading.Condition, init=False)

    async def _handle(self, request: rendering.Request) -> Any:
        response = await super()._handle(request)
        replicas = _replicas_written(request)
        if replicas is not None and request.name is not None:
            with self._written:
                self.replica_writes.append(ReplicaWrite(time.time(), str(request.namespace), request.name, replicas))
                self._written.notify_all()
        return response

    def wait_for_write(self, name: str, after: float, timeout: float) -> ReplicaWrite | None:
        """The first write of ``name``'s replicas stored after wall-clock time ``after`` (None: none in time)."""

        def since() -> list[ReplicaWrite]:
            return [w for w in self.replica_writes if w.name == name and w.at > after]

        with self._written:
            self._written.wait_for(since, timeout)
            found = since()
            return found[0] if found else None


@dataclass(frozen=True, slots=True)
class ReplicaWrite:
    at: float  # wall-clock seconds (time.time()), as Redis' MONITOR stamps commands
    namespace: str
    name: str
    replicas: int


def _replicas_written(request: rendering.Request) -> int | None:
    """The replicas a PATCH or PUT of a Deployment (or of its scale subresource) sets, if it sets them."""
    if request.resource is None or request.resource.plural != "deployments" or request.action != kmock.action.UPDATE:
        return None
    spec = request.data.get("spec") if isinstance(request.data, dict) else None
    replicas = spec.get("replicas") if isinstance(spec, dict) else None
    return replicas if isinstance(replicas, int) else None


@contextmanager
def cluster_and_redis(
    realistic: bool = False, emulator: Callable[..., BenchApiServer] = BenchApiServer, **options: Any
) -> Iterator[tuple[KubeCluster, RedisServer, KubeApi]]:
    """The emulator (fast at scale; with ``realistic``, objects as a real API server returns them: see
    bench/api_server.py; ``emulator``: the class, e.g. :class:`TimedApiServer`; ``options``: its settings, such as
    ``controller_qps``), a redis-server, and a client that writes as ``kubectl`` would."""
    workdir = Path(tempfile.mkdtemp(prefix="workerpool-bench-"))
    kube = KubeCluster(workdir, emulator=lambda: emulator(realistic=realistic, **options)).start()
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


def pools_ready(kube: KubeCluster) -> int:
    """How many WorkerPools have the condition Ready True."""
    ready = 0
    for pool in kube.objects(f"{API_GROUP}/{API_VERSION}/{PLURAL}").values():
        conditions = (pool.get("status") or {}).get("conditions") or []
        ready += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready


def wait_settled(kube: KubeCluster, pools: int, quiet: float, timeout: float) -> float:
    """Until ``pools`` WorkerPools are Ready and then the operator writes nothing to the API for ``quiet``
    seconds (what it still does for the start-up is not rest). Returns the seconds it took."""
    started = time.monotonic()
    while pools_ready(kube) < pools:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"only {pools_ready(kube)} of {pools} pools Ready after {timeout:g} s")
        time.sleep(1.0)
    writes, since = api_writes(kube), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"the operator still writes {timeout:g} s after the pools were created")
        time.sleep(1.0)
        if (now := api_writes(kube)) != writes:
            writes, since = now, time.monotonic()
    return time.monotonic() - started


def create_secret(api: KubeApi, namespace: str, url: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "redis", "namespace": namespace},
        "data": {"url": base64.b64encode(url.encode()).decode()},
    }
    api.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body=body)


def create_pool(api: KubeApi, namespace: str, name: str, queues: list[str], scaling: dict[str, Any]) -> None:
    body = pool_body(namespace, name, queues, scaling)
    api.request("POST", f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}", body=body)


def pool_body(namespace: str, name: str, queues: list[str], scaling: dict[str, Any]) -> dict[str, Any]:
    """A WorkerPool of concurrency-1 queues (up to 1,000 replicas each) on the broker of Secret ``redis``."""
    return {
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


def redis_command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``), the bench's own INFO left out."""
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}
    calls.pop("info", None)
    return calls


@dataclass(frozen=True, slots=True)
class RestCost:
    """What the operator costs over a quiet window: Redis commands (per command), its CPU time, API writes."""

    seconds: float
    commands: dict[str, int]
    cpu_seconds: float
    api_writes: int

    @property
    def commands_per_second(self) -> float:
        return sum(self.commands.values()) / self.seconds

    @property
    def cpu_seconds_per_minute(self) -> float:
        return 60 * self.cpu_seconds / self.seconds

    def by_command(self) -> str:
        """``llen 2.0/s, hgetall 0.5/s, ...``, busiest first."""
        ranked = sorted(self.commands.items(), key=lambda item: -item[1])
        return ", ".join(f"{name} {calls / self.seconds:.1f}/s" for name, calls in ranked if calls) or "none"


def measure_rest(pid: int, client: redis.Redis, kube: KubeCluster, seconds: float) -> RestCost:
    """The operator's cost while nothing happens, over ``seconds``: Redis commands from ``INFO commandstats``
    deltas, CPU from /proc, writes from the emulator's request log."""
    writes = api_writes(kube)
    calls, cpu, started = redis_command_calls(client), process_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    after_calls, after_cpu, elapsed = redis_command_calls(client), process_cpu_seconds(pid), time.monotonic() - started
    delta = {name: count - calls.get(name, 0) for name, count in after_calls.items()}
    return RestCost(elapsed, delta, after_cpu - cpu, api_writes(kube) - writes)


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
    if "error" in found:
        raise RuntimeError(f"the operator's probe failed: {found['error']}")
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
