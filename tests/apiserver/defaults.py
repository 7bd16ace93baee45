"""What the API server fills in and turns around on the kinds we use, in one place, each with its source. Pure.

Defaults (``SetDefaults_*`` in k8s.io/kubernetes ``pkg/apis/apps/v1/defaults.go`` and
``pkg/apis/core/v1/defaults.go``; the Service registry allocates the cluster IP):

- Deployment: ``replicas`` 1, ``strategy`` RollingUpdate with ``maxSurge``/``maxUnavailable`` 25%,
  ``revisionHistoryLimit`` 10, ``progressDeadlineSeconds`` 600, and its pod template's;
- pod spec (a template's or a Pod's): ``restartPolicy`` Always, ``dnsPolicy`` ClusterFirst, ``schedulerName``
  default-scheduler, ``terminationGracePeriodSeconds`` 30, ``securityContext`` {};
  a Pod also ``enableServiceLinks`` true (``SetDefaults_Pod``);
- each container and init container: ``terminationMessagePath`` /dev/termination-log,
  ``terminationMessagePolicy`` File, ``imagePullPolicy`` Always for ``:latest`` or no tag, else IfNotPresent,
  ``resources`` {}; each port ``protocol`` TCP; each probe ``timeoutSeconds`` 1, ``periodSeconds`` 10,
  ``successThreshold`` 1, ``failureThreshold`` 3 (0 counts as unset), ``httpGet.scheme`` HTTP and ``path`` /;
  ``env[].valueFrom.fieldRef.apiVersion`` v1;
- volumes: ``defaultMode`` 420 (0644) on secret, configMap, downwardAPI and projected sources; a volume without
  a source gets ``emptyDir: {}``;
- Service: ``type`` ClusterIP, ``sessionAffinity`` None, ports' ``protocol`` TCP and ``targetPort`` the port,
  ``internalTrafficPolicy`` Cluster, ``ipFamilyPolicy`` SingleStack, ``ipFamilies`` [IPv4], a ``clusterIP``
  (``clusterIPs``) from 10.96.0.0/12 (``None`` stays), and for LoadBalancer ``externalTrafficPolicy`` Cluster and
  ``allocateLoadBalancerNodePorts`` true, node ports from 30000-32767 for NodePort and LoadBalancer; ``status``
  ``{loadBalancer: {}}``;
- Secret: ``type`` Opaque; ``stringData`` merged into ``data`` (base64) and never stored or returned.

:data:`ZERO_IS_UNSET` lists fields of Go value types (not pointers) that JSON omits when zero and the defaults
above treat as unset. Validation (422) of the same kinds is in :mod:`tests.apiserver.validation`.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
from collections.abc import Iterator
from typing import Any

# Value-typed fields (Go ``int32``/``bool`` with ``omitempty``) that JSON omits when zero: a probe's timings
# before their defaults, a mount's ``readOnly``, a port's ``hostPort``.
ZERO_IS_UNSET: dict[str, frozenset[str]] = {
    "probe": frozenset(
        {"initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"}
    ),
    "volumeMount": frozenset({"readOnly"}),
    "port": frozenset({"hostPort"}),
    "container": frozenset({"stdin", "stdinOnce", "tty"}),
}
PROBE_DEFAULTS = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
MODE_DEFAULTED_SOURCES = ("secret", "configMap", "downwardAPI", "projected")
VOLUME_SOURCES = frozenset(
    {
        "emptyDir", "secret", "configMap", "downwardAPI", "projected", "persistentVolumeClaim", "hostPath", "nfs",
        "csi", "ephemeral", "image", "iscsi", "rbd", "cephfs", "fc", "azureFile", "azureDisk", "gcePersistentDisk",
        "awsElasticBlockStore", "gitRepo", "glusterfs", "flexVolume", "cinder", "flocker", "vsphereVolume",
        "quobyte", "photonPersistentDisk", "portworxVolume", "scaleIO", "storageos",
    }
)  # fmt: skip


def _drop_zero(obj: dict[str, Any], fields: frozenset[str]) -> None:
    for name in fields:
        if obj.get(name) in (0, False) and not isinstance(obj.get(name), str):
            del obj[name]


def image_pull_policy(image: str) -> str:
    """``Always`` for an image whose tag is ``latest`` or missing (and no digest), else ``IfNotPresent``."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _probe(probe: dict[str, Any]) -> None:
    _drop_zero(probe, ZERO_IS_UNSET["probe"])
    for key, value in PROBE_DEFAULTS.items():
        probe.setdefault(key, value)
    if isinstance(probe.get("httpGet"), dict):
        probe["httpGet"].setdefault("path", "/")
        probe["httpGet"].setdefault("scheme", "HTTP")


def _container(container: dict[str, Any]) -> None:
    _drop_zero(container, ZERO_IS_UNSET["container"])
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    if isinstance(container.get("image"), str) and "imagePullPolicy" not in container:
        container["imagePullPolicy"] = image_pull_policy(container["image"])
    container.setdefault("resources", {})
    for port in container.get("ports") or ():
        _drop_zero(port, ZERO_IS_UNSET["port"])
        port.setdefault("protocol", "TCP")
    for mount in container.get("volumeMounts") or ():
        _drop_zero(mount, ZERO_IS_UNSET["volumeMount"])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if isinstance(container.get(probe), dict):
            _probe(container[probe])
    for env in container.get("env") or ():
        field_ref = (env.get("valueFrom") or {}).get("fieldRef")
        if isinstance(field_ref, dict):
            field_ref.setdefault("apiVersion", "v1")


def _volume(volume: dict[str, Any]) -> None:
    if not VOLUME_SOURCES & volume.keys():
        volume["emptyDir"] = {}
    for source in MODE_DEFAULTED_SOURCES:
        if isinstance(volume.get(source), dict):
            volume[source].setdefault("defaultMode", 420)


def pod_spec(spec: dict[str, Any]) -> None:
    """``SetDefaults_PodSpec`` and what it calls, for the fields a pod template can carry."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in CONTAINER_LISTS:
        for container in spec.get(key) or ():
            _container(container)
    for volume in spec.get("volumes") or ():
        _volume(volume)


def deployment(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    template = spec.setdefault("template", {})
    pod_spec(template.setdefault("spec", {}))


def pod(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    pod_spec(spec)
    spec.setdefault("enableServiceLinks", True)


def secret(obj: dict[str, Any]) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


class Allocator:
    """The Service registry's cluster IPs (10.96.0.0/12, from .10 up) and node ports (30000-32767)."""

    def __init__(self) -> None:
        network = ipaddress.ip_network("10.96.0.0/12")
        self._ips: Iterator[Any] = itertools.islice(network.hosts(), 10, None)
        self._ports = itertools.count(30000)

    def service(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        kind = spec["type"]
        before = (old or {}).get("spec") or {}
        if kind != "ExternalName":
            if "clusterIP" not in spec:
                spec["clusterIP"] = before.get("clusterIP") or str(next(self._ips))
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            if spec["clusterIP"] != "None":
                spec.setdefault("ipFamilies", ["IPv4"])
                spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        if kind == "LoadBalancer":
            spec.setdefault("externalTrafficPolicy", "Cluster")
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p for p in before.get("ports") or ()}
        for port in spec.get("ports") or ():
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
            if kind in ("NodePort", "LoadBalancer") and "nodePort" not in port:
                previous = old_ports.get((port.get("port"), port["protocol"])) or {}
                port["nodePort"] = previous.get("nodePort") or next(self._ports)
        obj.setdefault("status", {"loadBalancer": {}})


DEFAULTERS = {("apps/v1", "Deployment"): deployment, ("v1", "Pod"): pod, ("v1", "Secret"): secret}
