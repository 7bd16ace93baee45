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
  worker's own report), whether the grace period ran out, and when its process exited;
- rolls a changed pod template out as the Deployment controller's ``RollingUpdate`` does with the strategy the
  operator renders (``maxSurge`` 25 %, ``maxUnavailable`` 0): new pods up to the replicas plus the surge, and one
  old pod terminated (SIGTERM, its own template's grace) for each new one ready, so the ready pods never fall
  below the replicas; a template changed again during a rollout (a fix, a rollback) rolls the same way from what
  runs then. (Terminating pods are not counted, as the controller does not count them.)
- writes the Deployment's ``status.replicas`` and ``readyReplicas`` as they change, as the Deployment controller
  does (the operator's status and its wait condition read them).

What it leaves out of the real thing: pods start as soon as their process does (no scheduling, no image pull),
readiness is the worker's ready file, there are no restarts, the ranking ignores nodes and restart counts, and a
template is one ReplicaSet whatever its history (the controller would scale an old ReplicaSet of the same template
back up; here a rollback starts new pods of it, which is what the controller's scale-up does too).
"""

from __future__ import annotations

import base64
import json
import math
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
from workerpool_operator.worker_env import VERSION_LABEL


@dataclass
class Removal:
    pod: str
    at: float  # when the SIGTERM was sent
    running: int  # tasks the worker's report said it ran then
    pid: int  # the worker's process
    template: str = ""  # the version label of the template the pod ran
    killed: bool = False  # still running at the end of the grace period: SIGKILLed
    exited: float | None = None  # when its process was seen gone (time.time())


@dataclass
class _Pod:
    name: str
    worker: WorkerProcess
    created: float
    template: str  # its pod template, as JSON: what a rollout compares
    version: str  # the template's workerpool.dev/version label
    grace: float  # its template's terminationGracePeriodSeconds
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
    created: list[str] = field(default_factory=list)
    removals: list[Removal] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pods: dict[str, _Pod] = {}
        self._versions: dict[str, str] = {}
        self._pids: dict[int, str] = {}
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

    def versions(self) -> dict[str, str]:
        """Every pod created, with its template's version (removed ones included)."""
        return dict(self._versions)

    def pids(self) -> dict[int, str]:
        """Every worker process started, by pid, with its pod's name."""
        return dict(self._pids)

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
        self._reap()
        serving = [p for p in self._pods.values() if p.terminating_since is None]
        template = "" if found is None else _template_key(found)
        old = [p for p in serving if p.template != template]
        if found is not None and old:
            self._roll(found, wanted, [p for p in serving if p.template == template], old)
        elif found is not None and wanted > len(serving):
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

    def _roll(self, deployment: dict[str, Any], wanted: int, new: list[_Pod], old: list[_Pod]) -> None:
        """One step of a RollingUpdate (maxSurge 25 %, maxUnavailable 0), as the Deployment controller takes it."""
        surge = math.ceil(wanted * 0.25) if wanted else 0
        for _ in range(min(wanted - len(new), wanted + surge - len(new) - len(old))):
            self._start(deployment)
        ready = sum(1 for p in new if p.ready())
        for pod in self._ranked_for_removal(old)[: max(0, len(old) - max(0, wanted - ready))]:
            self._terminate(pod)

    def _start(self, deployment: dict[str, Any]) -> None:
        name = f"{self.deployment}-{len(self.created)}"
        template = deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        labels = template["metadata"].get("labels") or {}
        body = pod_manifest(name, NS, labels, container["image"])
        api(self.kube).request("POST", f"/api/v1/namespaces/{NS}/pods", body=body)
        state = self.workdir / f"state-{name}"
        env = entrypoint_env("unused", state, self._environment(container.get("env") or [], name, labels))
        env |= {"WORKERPOOL_STATE_DIR": str(state)} | self.extra_env
        worker = WorkerProcess(env, args=tuple(container.get("args") or ()), log=self.workdir / f"{name}.log")
        grace = float(template["spec"].get("terminationGracePeriodSeconds", 30))
        version = str(labels.get(VERSION_LABEL, ""))
        with self._lock:
            pod = self._pods[name] = _Pod(
                name, worker.start(), time.monotonic(), _template_key(deployment), version, grace
            )
        assert pod.worker.process is not None
        self._versions[name] = version
        self._pids[pod.worker.process.pid] = name
        self.created.append(name)

    def _environment(self, env: list[dict[str, Any]], pod: str, labels: dict[str, str]) -> dict[str, str]:
        resolved: dict[str, str] = {}
        for entry in env:
            source = entry.get("valueFrom")
            field_path = (source or {}).get("fieldRef", {}).get("fieldPath", "")
            if source is None:
                resolved[entry["name"]] = str(entry.get("value", ""))
            elif field_path == "metadata.name":
                resolved[entry["name"]] = pod
            elif field_path.startswith("metadata.labels['"):
                resolved[entry["name"]] = labels.get(field_path[len("metadata.labels['") : -2], "")
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
        raw = self.broker.hget(reports.report_key(self.queue), pod.name)
        load = None if raw is None else reports.decode_report(pod.name, raw)
        running = 0 if load is None else load.running
        assert pod.worker.process is not None
        pod.removal = Removal(pod.name, time.time(), running, pod.worker.process.pid, pod.version)
        self.removals.append(pod.removal)
        api(self.kube).request("DELETE", f"/api/v1/namespaces/{NS}/pods/{pod.name}")
        pod.terminating_since = time.monotonic()
        pod.worker.process.send_signal(signal.SIGTERM)

    def _reap(self) -> None:
        for pod in list(self._pods.values()):
            if pod.terminating_since is None:
                continue
            assert pod.worker.process is not None and pod.removal is not None
            if pod.worker.process.poll() is None and time.monotonic() - pod.terminating_since < pod.grace:
                continue
            if pod.worker.process.poll() is None:
                pod.removal.killed = True
            pod.removal.exited = time.time()
            pod.worker.close()  # SIGKILLs the process group if anything is left
            with self._lock:
                del self._pods[pod.name]


def _template_key(deployment: dict[str, Any]) -> str:
    """A Deployment's pod template, as one comparable text (what decides a rollout)."""
    return json.dumps(deployment["spec"]["template"], sort_keys=True)
