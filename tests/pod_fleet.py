"""What the ReplicaSet controller and the kubelet do for one worker Deployment, on the API emulator, with real
worker processes (test helper).

The emulator runs no controllers: a Deployment's ``replicas`` starts nothing. :class:`PodFleet` watches one
Deployment and, like a ReplicaSet and a kubelet together:

- for each replica wanted and missing, creates a Pod object (a ReplicaSet's name: ``<deployment>-<n>``) and
  starts a real ``workerpool-worker`` process with the Deployment's container environment (``fieldRef`` to
  the pod's name and ``secretKeyRef`` to the broker Secret resolved from the emulator's objects) and arguments;
- for each replica too many, picks the pod to remove as the ReplicaSet ranks them (a pod whose worker is not
  ready yet first, then the lowest ``controller.kubernetes.io/pod-deletion-cost``, then the newest), deletes the
  Pod object, sends its worker SIGTERM, and SIGKILLs it at the Deployment's ``terminationGracePeriodSeconds``
  if it is still running, as the kubelet does;
- notes, for every pod it removed, whether its worker was still running tasks at the SIGTERM (from the
  worker's own report) and whether the grace period ran out;
- writes the Deployment's ``status.replicas`` and ``readyReplicas`` as they change, as the Deployment controller
  does (the operator's status and its wait condition read them).

What it leaves out of the real thing: pods start as soon as their process does (no scheduling, no image pull),
readiness is the worker's ready file, there are no restarts, and the ranking ignores nodes and restart counts.
"""

from __future__ import annotations

import base64
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from tests.kube import KubeCluster, pod_manifest
from tests.operator_helpers import NS, api
from tests.worker_process import WorkerProcess, entrypoint_env
from workerpool_operator import reports
from workerpool_operator.kube.api import DELETION_COST


@dataclass
class Removal:
    pod: str
    at: float  # when the SIGTERM was sent
    running: int  # tasks the worker's report said it ran then
    pid: int  # the worker's process
    killed: bool = False  # still running at the end of the grace period: SIGKILLed


@dataclass
class _Pod:
    name: str
    worker: WorkerProcess
    created: float
    terminating_since: float | None = None
    removal: Removal | None = None

    def ready(self) -> bool:
        return (self.worker.state_dir / "ready").exists()


@dataclass
class PodFleet:
    kube: KubeCluster
    deployment: str
    queue: str
    broker: Redis
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    other_queues: tuple[str, ...] = ()  # a worker group's other Celery queues: what a worker runs from them counts
    created: list[str] = field(default_factory=list)
    removals: list[Removal] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pods: dict[str, _Pod] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fleet-{self.deployment}", daemon=True)
        self._lock = threading.Lock()
        self._status: tuple[int, int] | None = None  # (replicas, ready) last written to the Deployment's status

    # --- what a test reads ---------------------------------------------------------------------------------

    def serving(self) -> list[str]:
        """Pods not terminating (the ReplicaSet's count)."""
        with self._lock:
            return sorted(p.name for p in self._pods.values() if p.terminating_since is None)

    def ready(self) -> list[str]:
        with self._lock:
            return sorted(p.name for p in self._pods.values() if p.terminating_since is None and p.ready())

    def alive(self) -> int:
        """Worker processes still running, terminating ones included."""
        with self._lock:
            return len(self._pods)

    def outputs(self) -> str:
        with self._lock:
            return "\n".join(f"--- {p.name}\n{p.worker.output()[-1500:]}" for p in self._pods.values())

    # --- life ----------------------------------------------------------------------------------------------

    def __enter__(self) -> PodFleet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        with self._lock:
            for pod in self._pods.values():
                pod.worker.close()
            self._pods.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as error:  # the test reads errors; the fleet keeps going like a controller
                self.errors.append(repr(error))
            self._stop.wait(0.1)

    def _step(self) -> None:
        found = self.kube.objects("apps/v1/deployments", NS).get(self.deployment)
        wanted = 0 if found is None else int(found["spec"].get("replicas", 1))
        self._reap(found)
        serving = [p for p in self._pods.values() if p.terminating_since is None]
        if found is not None and wanted > len(serving):
            for _ in range(wanted - len(serving)):
                self._start(found)
        elif wanted < len(serving):
            for pod in self._ranked_for_removal(serving)[: len(serving) - wanted]:
                self._terminate(pod)
        if found is not None:
            self._write_status()

    def _write_status(self) -> None:
        counts = (len(self.serving()), len(self.ready()))
        if counts == self._status:
            return
        path = f"/apis/apps/v1/namespaces/{NS}/deployments/{self.deployment}/status"
        body = {"status": {"replicas": counts[0], "readyReplicas": counts[1], "availableReplicas": counts[1]}}
        api(self.kube).request("PATCH", path, body=body, content_type="application/merge-patch+json")
        self._status = counts

    def _start(self, deployment: dict[str, Any]) -> None:
        name = f"{self.deployment}-{len(self.created)}"
        template = deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        body = pod_manifest(name, NS, template["metadata"].get("labels"), container["image"])
        api(self.kube).request("POST", f"/api/v1/namespaces/{NS}/pods", body=body)
        state = self.workdir / f"state-{name}"
        env = entrypoint_env("unused", state, self._environment(container.get("env") or [], name))
        env |= {"WORKERPOOL_STATE_DIR": str(state)} | self.extra_env
        worker = WorkerProcess(env, args=tuple(container.get("args") or ()), log=self.workdir / f"{name}.log")
        with self._lock:
            self._pods[name] = _Pod(name, worker.start(), time.monotonic())
        self.created.append(name)

    def _environment(self, env: list[dict[str, Any]], pod: str) -> dict[str, str]:
        resolved: dict[str, str] = {}
        for entry in env:
            source = entry.get("valueFrom")
            if source is None:
                resolved[entry["name"]] = str(entry.get("value", ""))
            elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                resolved[entry["name"]] = pod
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.kube.objects("v1/secrets", NS)[ref["name"]]
                resolved[entry["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            else:
                raise AssertionError(f"the fleet cannot resolve {entry}")
        return resolved

    def _ranked_for_removal(self, serving: list[_Pod]) -> list[_Pod]:
        pods = self.kube.objects("v1/pods", NS)

        def cost(pod: _Pod) -> int:
            annotations = (pods.get(pod.name) or {}).get("metadata", {}).get("annotations") or {}
            return int(annotations.get(DELETION_COST, 0))

        return sorted(serving, key=lambda p: (p.ready(), cost(p), -p.created))

    def _terminate(self, pod: _Pod) -> None:
        running = 0
        for queue in (self.queue, *self.other_queues):
            raw = self.broker.hget(reports.report_key(queue), pod.name)
            load = None if raw is None else reports.decode_report(pod.name, raw)
            running += 0 if load is None else load.running
        assert pod.worker.process is not None
        pod.removal = Removal(pod.name, time.time(), running, pod.worker.process.pid)
        self.removals.append(pod.removal)
        api(self.kube).request("DELETE", f"/api/v1/namespaces/{NS}/pods/{pod.name}")
        pod.terminating_since = time.monotonic()
        pod.worker.process.send_signal(signal.SIGTERM)

    def _reap(self, deployment: dict[str, Any] | None) -> None:
        grace = 30.0
        if deployment is not None:
            grace = float(deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30))
        for pod in list(self._pods.values()):
            if pod.terminating_since is None:
                continue
            assert pod.worker.process is not None and pod.removal is not None
            if pod.worker.process.poll() is None and time.monotonic() - pod.terminating_since < grace:
                continue
            if pod.worker.process.poll() is None:
                pod.removal.killed = True
            pod.worker.close()  # SIGKILLs the process group if anything is left
            with self._lock:
                del self._pods[pod.name]
