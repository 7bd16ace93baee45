"""The Kubernetes API calls the operator makes: synchronous (call them through :func:`asyncio.to_thread`, so the
event loop never blocks), plain JSON dicts. Objects the operator renders are written with Server-Side Apply (one
field manager for the manifests, another for a queue's replica count: ``fields.py``); the rest (pod marks, pool
status, Leases) with JSON merge patches under the same field manager.

Why not the client's typed APIs (``AppsV1Api`` and friends) for everything: they build a model object for every
response. For a Deployment as a real API server returns it (managed fields, status), that costs 1.39 ms against
0.074 ms for ``json.loads`` (18.8x, measured on this project's rendered Deployment), and the operator handles a
Deployment on every watch event and every apply; and our renderers, status builder and drift check all work
with plain dicts and merge patches, which the typed models would only wrap and unwrap. So requests go through
the client's own ``ApiClient`` (its configuration, authentication and connection pool) with plain bodies.
Events are the exception: rare, and built with the client's typed ``CoreV1Event``.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import kubernetes

from workerpool_operator import API_GROUP, API_VERSION, KIND, PLURAL, __version__
from workerpool_operator.kube import metrics
from workerpool_operator.kube.fields import FIELD_MANAGER, SCALER_MANAGER

MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # Server-Side Apply (JSON is YAML)
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
COMPONENT = "workerpool-operator"
# Threads the API calls run in (the event loop's default executor, kube/handlers.py) and connections kept to the API
# server, one per thread. The calls wait on the network nearly all their time, with the GIL released; asyncio's
# default, min(32, CPUs + 4), is 6 threads on a 2-CPU node, and the client keeps 5 connections per CPU (10): at
# 10,000 new pools their start-ups, status writes and the scaling loop's writes queued behind 6 threads
# (docs/benchmarks.md: all Ready 300 -> 259 s after the first was created, with APPLIES_AT_ONCE 16).
API_THREADS = 16


class ApiError(Exception):
    """A non-2xx answer from the API server, with its status code and the server's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class NoClusterConfiguration(Exception):
    """Neither an in-cluster service account nor a kubeconfig: ``str()`` says what was looked for."""


def load_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account first, else the kubeconfig named by ``KUBECONFIG`` now (not at import).

    Raises :class:`NoClusterConfiguration` with one line naming both places when neither is there."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        return configuration
    except kubernetes.config.ConfigException as in_cluster:
        in_cluster_error = in_cluster
    kubeconfig = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        kubernetes.config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
        )
    except (kubernetes.config.ConfigException, OSError, TypeError) as error:
        raise NoClusterConfiguration(
            f"no Kubernetes configuration: not in a pod with a service account ({in_cluster_error}), "
            f"and no usable kubeconfig at {kubeconfig} ({str(error).strip() or type(error).__name__}); "
            "set KUBECONFIG or run in a pod"
        ) from None
    return configuration


def int_or_none(value: object) -> int | None:
    """``value`` as an int (a resourceVersion, a count), or ``None`` when it is not one."""
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


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


def deployment_path(namespace: str, name: str = "") -> str:
    base = f"/apis/apps/v1/namespaces/{_q(namespace)}/deployments"
    return f"{base}/{_q(name)}" if name else base


def service_path(namespace: str, name: str = "") -> str:
    base = f"/api/v1/namespaces/{_q(namespace)}/services"
    return f"{base}/{_q(name)}" if name else base


def object_path(kind: str, namespace: str, name: str = "") -> str:
    """The path of a Deployment or a Service (the kinds of workload the operator renders)."""
    return service_path(namespace, name) if kind == "Service" else deployment_path(namespace, name)


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{_q(namespace)}/pods/{_q(name)}"


def pool_path(namespace: str, name: str) -> str:
    return f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{_q(namespace)}/{PLURAL}/{_q(name)}"


def lease_path(namespace: str, name: str = "") -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{_q(namespace)}/leases"
    return f"{base}/{_q(name)}" if name else base


class KubeApi:
    """The few API calls the operator makes, synchronous (call them through :func:`asyncio.to_thread`)."""

    def __init__(
        self, client: kubernetes.client.ApiClient | None = None, timeout: float = 30.0, identity: str = ""
    ) -> None:
        if client is None:
            configuration = load_configuration()
            configuration.connection_pool_maxsize = API_THREADS
            client = kubernetes.client.ApiClient(configuration)
        self._client = client
        if identity:  # which replica made a request, in the API server's audit log
            self._client.user_agent = f"{COMPONENT}/{__version__} ({identity})"
        self._events = kubernetes.client.CoreV1Api(self._client)
        self.timeout = timeout
        self.writes = 0  # API writes made (patch, create, update, delete), for the benchmark and tests

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
        timeout: float | None = None,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = self._client.param_serialize(
            method, path, query_params=list(query) or None, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )  # fmt: skip
        if method != "GET":
            self.writes += 1
        response = self._client.call_api(*params, _request_timeout=timeout or self.timeout)
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

    def get(self, path: str, timeout: float | None = None) -> dict[str, Any] | None:
        """The object at ``path``, or ``None`` when it does not exist."""
        try:
            found: dict[str, Any] = self.request("GET", path, timeout=timeout)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        query = [("fieldManager", FIELD_MANAGER)]
        patched: dict[str, Any] = self.request("PATCH", path, query=query, body=dict(body), content_type=MERGE_PATCH)
        return patched

    def apply(
        self, manifest: Mapping[str, Any], *, manager: str = FIELD_MANAGER, force: bool = False
    ) -> dict[str, Any]:
        """Server-Side Apply of a Deployment or Service (its ``kind``): created when missing, its fields owned by
        ``manager``; the fields this manager applied before and ``manifest`` leaves out are released (and removed
        when nobody else owns them). Without ``force``, a field another manager owns with another value is a 409
        Conflict naming them; with it, ours. Returns the object as stored."""
        kind, namespace, name = manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        query = [("fieldManager", manager), ("force", "true" if force else "false")]
        body = json.dumps(manifest, separators=(",", ":"))
        applied: dict[str, Any] = self.request(
            "PATCH", object_path(kind, namespace, name), query=query, body=body, content_type=APPLY_PATCH
        )
        return applied

    def apply_replicas(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """The scaler's apply: a Deployment's ``spec.replicas`` through its ``scale`` subresource (never more, and a
        404 when the Deployment is gone, where an apply of the object would try to create it), taken back from
        anyone who changed it (``force``). Returns the ``autoscaling/v1`` Scale as stored."""
        scale = {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        query = [("fieldManager", SCALER_MANAGER), ("force", "true")]
        body = json.dumps(scale, separators=(",", ":"))
        path = f"{deployment_path(namespace, name)}/scale"
        applied: dict[str, Any] = self.request("PATCH", path, query=query, body=body, content_type=APPLY_PATCH)
        return applied

    def patch_if_unchanged(self, kind: str, live: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch ``live`` (a Deployment or Service) if it is still at its resourceVersion (a 409 otherwise)."""
        meta = live["metadata"]
        body = {**patch, "metadata": {**(patch.get("metadata") or {}), "resourceVersion": meta["resourceVersion"]}}
        return self.merge_patch(object_path(kind, meta["namespace"], meta["name"]), body)

    # --- Secrets, Deployments and Services -------------------------------------------------------------------------

    def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's decoded data, or ``None`` when it does not exist."""
        secret = self.get(f"/api/v1/namespaces/{_q(namespace)}/secrets/{_q(name)}")
        if secret is None:
            return None
        data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        data.update({key: value.encode() for key, value in (secret.get("stringData") or {}).items()})
        return data

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(deployment_path(namespace, name))

    def list_deployments(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        items = self.request("GET", deployment_path(namespace), query=[("labelSelector", label_selector)])
        return [item for item in items.get("items") or () if isinstance(item, dict)]

    def get_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(object_path(kind, namespace, name))

    def list_services(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        items = self.request("GET", service_path(namespace), query=[("labelSelector", label_selector)])
        return [item for item in items.get("items") or () if isinstance(item, dict)]

    def delete_object(self, kind: str, namespace: str, name: str) -> None:
        try:
            self.request("DELETE", object_path(kind, namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        return self.apply_replicas(namespace, name, replicas)

    def set_deletion_cost(self, namespace: str, pod: str, cost: int | None) -> bool:
        """Mark a pod for the ReplicaSet (``None`` removes the mark); ``False`` when the pod is gone already."""
        body = {"metadata": {"annotations": {DELETION_COST: None if cost is None else str(cost)}}}
        try:
            self.merge_patch(pod_path(namespace, pod), body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # --- WorkerPools -------------------------------------------------------------------------------------

    def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(pool_path(namespace, name))

    def patch_pool_status(self, namespace: str, name: str, status_patch: Mapping[str, Any]) -> dict[str, Any]:
        return self.merge_patch(f"{pool_path(namespace, name)}/status", {"status": dict(status_patch)})

    def set_pool_finalizers(self, namespace: str, name: str, finalizers: Sequence[str], version: str) -> None:
        """Replace the pool's finalizers, if it is still at ``version`` (a conflict is a 409)."""
        body = {"metadata": {"finalizers": list(finalizers) or None, "resourceVersion": version}}
        self.merge_patch(pool_path(namespace, name), body)

    # --- Leases (leader election) ----------------------------------------------------------------------------

    def get_lease(self, namespace: str, name: str, timeout: float | None = None) -> dict[str, Any] | None:
        return self.get(lease_path(namespace, name), timeout=timeout)

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        meta = {"name": name, "namespace": namespace}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": dict(spec)}
        created: dict[str, Any] = self.request("POST", lease_path(namespace), body=body, timeout=timeout)
        return created

    def update_lease(self, lease: Mapping[str, Any], spec: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """Merge-patch the Lease's spec, on condition that it is still at the ``resourceVersion`` it was read at: a
        compare-and-swap (409 Conflict when someone wrote it meanwhile)."""
        meta = lease["metadata"]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "spec": dict(spec)}
        path = lease_path(meta["namespace"], meta["name"])
        updated: dict[str, Any] = self.request("PATCH", path, body=body, content_type=MERGE_PATCH, timeout=timeout)
        return updated

    # --- Events --------------------------------------------------------------------------------------------

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``involved`` (an object reference), built with the client's model."""
        namespace = str(involved.get("namespace") or "default")
        now = datetime.datetime.now(tz=datetime.UTC)
        instance = os.environ.get("HOSTNAME", COMPONENT)
        event = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{involved.get('name')}.", namespace=namespace),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=involved.get("apiVersion"),
                kind=involved.get("kind"),
                name=involved.get("name"),
                namespace=namespace,
                uid=involved.get("uid"),
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            source=kubernetes.client.V1EventSource(component=COMPONENT, host=instance),
            reporting_component=COMPONENT,
            reporting_instance=instance,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        self.writes += 1
        self._events.create_namespaced_event(namespace, event, _request_timeout=self.timeout, _preload_content=False)
