"""The Kubernetes side of the operator: API calls (from threads, so the event loop never blocks) and the
:class:`~workerpool_operator.scaling_loop.WorkloadBackend` that scales Deployments.

Everything is plain JSON dicts. Writes are JSON merge patches (``application/merge-patch+json``), so
applying the same manifest twice changes nothing. Secrets are only ever read with ``get``.

At steady state the backend makes no API calls at all: replica counts come from a cache that the
operator's Deployment watch keeps current (:meth:`KubeBackend.observe_deployment`), and only a change
of the decision leads to a write.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import kubernetes

from workerpool_operator import API_GROUP, API_VERSION, KIND, PLURAL
from workerpool_operator.kube import metrics
from workerpool_operator.scaling_loop import PoolKey

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
COMPONENT = "workerpool-operator"


class ApiError(Exception):
    """A non-2xx answer from the API server, with its status code and the server's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def load_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account first, else the kubeconfig named by ``KUBECONFIG`` now (not at import)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
        )
    return configuration


class KubeApi:
    """The few API calls the operator makes, synchronous (call them through :func:`asyncio.to_thread`)."""

    def __init__(self, client: kubernetes.client.ApiClient | None = None, timeout: float = 30.0) -> None:
        self._client = client or kubernetes.client.ApiClient(load_configuration())
        self._timeout = timeout
        self.writes = 0  # API writes made (patch, create, delete), for the benchmark and tests

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = self._client.param_serialize(
            method,
            path,
            query_params=list(query) or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        if method != "GET":
            self.writes += 1
        response = self._client.call_api(*params, _request_timeout=self._timeout)
        metrics.record_api_request(method, response.status)
        response.read()
        raw = response.data or b"{}"
        if response.status >= 400:
            try:
                message = json.loads(raw).get("message") or raw.decode(errors="replace")
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace")
            raise ApiError(response.status, str(message))
        return json.loads(raw) if raw else {}

    # --- reads -----------------------------------------------------------------------------------------

    def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's decoded data, or ``None`` when it does not exist."""
        try:
            secret = self.request("GET", f"/api/v1/namespaces/{_q(namespace)}/secrets/{_q(name)}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        data.update({key: value.encode() for key, value in (secret.get("stringData") or {}).items()})
        return data

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", _deployment_path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def list_deployments(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        path = f"/apis/apps/v1/namespaces/{_q(namespace)}/deployments"
        items = self.request("GET", path, query=[("labelSelector", label_selector)]).get("items") or []
        return [item for item in items if isinstance(item, dict)]

    # --- writes ----------------------------------------------------------------------------------------

    def apply_deployment(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create the Deployment, or merge-patch it to the manifest. Returns the object as stored."""
        namespace = manifest["metadata"]["namespace"]
        name = manifest["metadata"]["name"]
        try:
            patched: dict[str, Any] = self.request(
                "PATCH", _deployment_path(namespace, name), body=dict(manifest), content_type=MERGE_PATCH
            )
            return patched
        except ApiError as exc:
            if exc.status != 404:
                raise
        try:
            created: dict[str, Any] = self.request(
                "POST", f"/apis/apps/v1/namespaces/{_q(namespace)}/deployments", body=dict(manifest)
            )
            return created
        except ApiError as exc:
            if exc.status != 409:  # created meanwhile (by our own drift handler): patch it
                raise
        again: dict[str, Any] = self.request(
            "PATCH", _deployment_path(namespace, name), body=dict(manifest), content_type=MERGE_PATCH
        )
        return again

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        body = {"spec": {"replicas": replicas}}
        scaled: dict[str, Any] = self.request(
            "PATCH", _deployment_path(namespace, name), body=body, content_type=MERGE_PATCH
        )
        return scaled

    def delete_deployment(self, namespace: str, name: str) -> None:
        try:
            self.request("DELETE", _deployment_path(namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise

    def set_deletion_cost(self, namespace: str, pod: str, cost: int | None) -> bool:
        """Mark a pod for the ReplicaSet (``None`` removes the mark); ``False`` when the pod is gone already."""
        body = {"metadata": {"annotations": {DELETION_COST: None if cost is None else str(cost)}}}
        try:
            self.request(
                "PATCH", f"/api/v1/namespaces/{_q(namespace)}/pods/{_q(pod)}", body=body, content_type=MERGE_PATCH
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def patch_pool_status(self, namespace: str, name: str, status_patch: Mapping[str, Any]) -> dict[str, Any]:
        path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{_q(namespace)}/{PLURAL}/{_q(name)}/status"
        patched: dict[str, Any] = self.request(
            "PATCH", path, body={"status": dict(status_patch)}, content_type=MERGE_PATCH
        )
        return patched

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``involved`` (an object reference)."""
        namespace = str(involved.get("namespace") or "default")
        stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{involved.get('name')}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": dict(involved),
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", COMPONENT),
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self.request("POST", f"/api/v1/namespaces/{_q(namespace)}/events", body=event)


def pool_reference(namespace: str, name: str, uid: str | None) -> dict[str, Any]:
    """The object reference of a WorkerPool, for Events."""
    ref: dict[str, Any] = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "namespace": namespace,
        "name": name,
    }
    if uid:
        ref["uid"] = uid
    return ref


def _q(part: str) -> str:
    return quote(part, safe="")


def _deployment_path(namespace: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{_q(namespace)}/deployments/{_q(name)}"


@dataclass(frozen=True, slots=True)
class DeploymentReplicas:
    replicas: int
    ready: int
    version: int | None  # resourceVersion, when numeric: older watch events never overwrite newer facts


class KubeBackend:
    """Scales the Deployment of each (pool, queue). Implements ``WorkloadBackend``.

    ``names`` maps a pool and queue to their Deployment's name; the operator registers it when it
    applies the Deployments and forgets it when a queue or pool goes away.
    """

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self._names: dict[tuple[PoolKey, str], str] = {}
        self._replicas: dict[tuple[str, str], DeploymentReplicas] = {}
        self._marked: dict[tuple[str, str], set[str]] = {}  # pods given a deletion cost, per Deployment

    # --- names and cache ---------------------------------------------------------------------------

    def set_names(self, pool: PoolKey, names: Mapping[str, str]) -> None:
        """The Deployment name of every queue of ``pool`` (replaces the previous mapping)."""
        for key in [k for k in self._names if k[0] == pool and k[1] not in names]:
            name = self._names.pop(key)
            self._replicas.pop((pool[0], name), None)
            self._marked.pop((pool[0], name), None)
        for queue, name in names.items():
            self._names[(pool, queue)] = name

    def forget(self, pool: PoolKey) -> None:
        self.set_names(pool, {})

    def deployment_name(self, pool: PoolKey, queue: str) -> str | None:
        return self._names.get((pool, queue))

    def observe_deployment(self, obj: Mapping[str, Any], deleted: bool = False) -> None:
        """Feed a Deployment seen by the watch (or returned by a write) into the replica cache."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if deleted:
            self._replicas.pop(key, None)
            return
        version = _int_or_none(meta.get("resourceVersion"))
        known = self._replicas.get(key)
        if known is not None and known.version is not None and version is not None and version < known.version:
            return
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        self._replicas[key] = DeploymentReplicas(
            replicas=int(spec.get("replicas", 1)),  # the API server's default
            ready=int(status.get("readyReplicas") or 0),
            version=version,
        )

    def cached(self, namespace: str, name: str) -> DeploymentReplicas | None:
        return self._replicas.get((namespace, name))

    # --- WorkloadBackend ---------------------------------------------------------------------------

    async def current_replicas(self, pool: PoolKey, queue: str) -> int | None:
        name = self._names.get((pool, queue))
        if name is None:
            return None
        known = self._replicas.get((pool[0], name))
        if known is None:
            found = await asyncio.to_thread(self.api.get_deployment, pool[0], name)
            if found is None:
                return None
            self.observe_deployment(found)
            known = self._replicas.get((pool[0], name))
        return None if known is None else known.replicas

    async def scale(self, pool: PoolKey, queue: str, replicas: int, remove_first: Sequence[str]) -> None:
        name = self._names.get((pool, queue))
        if name is None:
            raise LookupError(f"queue {queue!r} of {pool[0]}/{pool[1]} has no Deployment")
        namespace = pool[0]
        known = self._replicas.get((namespace, name))
        if known is not None and replicas < known.replicas and remove_first:
            chosen = [worker.rsplit("@", 1)[-1] for worker in list(remove_first)[: known.replicas - replicas]]
            # A pod marked for an earlier scale-down that is still here may be busy now: unmark it first.
            for pod in self._marked.pop((namespace, name), set()) - set(chosen):
                await asyncio.to_thread(self.api.set_deletion_cost, namespace, pod, None)
            marked = set()
            for rank, pod in enumerate(chosen):  # lowest cost goes first: the engine lists the idlest first
                if await asyncio.to_thread(self.api.set_deletion_cost, namespace, pod, -1000 + rank):
                    marked.add(pod)
            self._marked[(namespace, name)] = marked
        scaled = await asyncio.to_thread(self.api.scale_deployment, namespace, name, replicas)
        self.observe_deployment(scaled)


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None
