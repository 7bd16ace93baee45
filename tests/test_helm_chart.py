"""The Helm chart, rendered by Helm's own engine (helm-python-sdk): defaults, every switch, lint, schema,
Kubernetes validation and the operator pod's security."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.pss import assert_restricted, restricted_violations

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "workerpool-operator"
RELEASE, NAMESPACE = "wp", "ops"
FULLNAME = "wp-workerpool-operator"
# The Kubernetes versions we support; the chart says so too (Chart.yaml kubeVersion).
KUBERNETES_VERSIONS = ("1.30", "1.31", "1.32", "1.33")

Manifest = dict[str, Any]

SWITCHES: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watch": {"namespaces": ["apps", "jobs"]}},
    "servicemonitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "pdb": {"podDisruptionBudget": {"enabled": True}},
    "networkpolicy": {
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "apiServer": {"cidrs": ["10.0.0.1/32"]},
        }
    },
    "standalone": {"peering": {"enabled": False}},
    "everything": {
        "watch": {"namespaces": ["apps"]},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
        "networkPolicy": {"enabled": True},
        "operator": {"verbose": True, "extraEnv": [{"name": "TZ", "value": "UTC"}]},
        "podAnnotations": {"example.com/owner": "platform"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "imagePullSecrets": [{"name": "regcred"}],
    },
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm_python.Chart, values: Mapping[str, Any] | None = None) -> list[Manifest]:
    """Every manifest the chart renders for ``values`` (NOTES.txt and empty documents left out)."""
    rendered = chart.render(dict(values or {}), name=RELEASE, namespace=NAMESPACE)
    return [
        doc
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def notes(chart: helm_python.Chart, values: Mapping[str, Any] | None = None) -> str:
    rendered = chart.render(dict(values or {}), name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def only(manifests: list[Manifest], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def container(manifests: list[Manifest]) -> Manifest:
    containers = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    result: Manifest = containers[0]
    return result


def load_yaml_documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- Chart metadata, lint, CRDs -------------------------------------------------------------------------


def test_app_version_is_the_project_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert metadata["appVersion"] == project


def test_helm_lint_is_clean() -> None:
    for values in SWITCHES.values():
        report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
        assert problems == [] and report["errors"] == [], (values, report)


def test_chart_crd_is_the_top_level_crd() -> None:
    top_level, in_chart = REPO / "crds" / "workerpool.yaml", CHART / "crds" / "workerpool.yaml"
    assert top_level.is_file(), "crds/workerpool.yaml is missing"
    assert in_chart.is_file(), f"copy crds/workerpool.yaml to {in_chart.relative_to(REPO)}"
    assert in_chart.read_bytes() == top_level.read_bytes(), (
        "the chart's CRD differs from crds/workerpool.yaml: copy it again (one source of truth)"
    )


def test_chart_ships_only_the_workerpool_crd_and_kopf_peering(chart: helm_python.Chart) -> None:
    names = sorted(doc["metadata"]["name"] for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc)
    shipped = sorted(
        doc["metadata"]["name"] for path in sorted((CHART / "crds").glob("*.yaml")) for doc in load_yaml_documents(path)
    )
    assert shipped == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev", "workerpools.workerpool.dev"]
    assert names == shipped  # what Helm itself sees in crds/
    for path in (CHART / "crds").glob("*.yaml"):
        for doc in load_yaml_documents(path):
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


# --- Every manifest is valid Kubernetes -----------------------------------------------------------------


def _custom_resource_schema(kind: str) -> dict[str, Any]:
    for path in (CHART / "crds").glob("*.yaml"):
        for crd in load_yaml_documents(path):
            if crd["spec"]["names"]["kind"] == kind:
                schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                return schema
    raise LookupError(kind)


def check_service_monitor(monitor: Manifest, manifests: list[Manifest]) -> None:
    """ServiceMonitor is a Prometheus Operator custom resource: check its shape and that it finds our Service."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    service = only(manifests, "Service")
    labels = service["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items(), "the ServiceMonitor selects no Service"
    assert spec["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            assert isinstance(endpoint[key], str) and endpoint[key][-1] in "smh", endpoint


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_every_manifest_validates_for_supported_kubernetes_versions(chart: helm_python.Chart, switch: str) -> None:
    manifests = render(chart, SWITCHES[switch])
    assert manifests
    for manifest in manifests:
        kind = manifest["kind"]
        if kind == "ServiceMonitor":
            check_service_monitor(manifest, manifests)
        elif manifest["apiVersion"] == "kopf.dev/v1":
            jsonschema.validate(manifest, _custom_resource_schema(kind))
            assert set(manifest["metadata"]) <= {"name", "namespace", "labels"}
        else:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(manifest, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    pytest.fail(f"{kind} {manifest['metadata']['name']} invalid for {version}: {error.message}")


def test_the_validator_rejects_what_it_should(chart: helm_python.Chart) -> None:
    """The validation above can fail: a rendered manifest with one unknown field is refused."""
    deployment = only(render(chart), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# --- Defaults -------------------------------------------------------------------------------------------


def test_default_install(chart: helm_python.Chart) -> None:
    manifests = render(chart)
    assert kinds(manifests) == [
        "ClusterKopfPeering",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "workerpool-operator"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == chart.metadata["appVersion"]

    deployment = only(manifests, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == only(manifests, "ServiceAccount")["metadata"]["name"] == FULLNAME

    operator = container(manifests)
    assert operator["image"] == f"workerpool-operator:{chart.metadata['appVersion']}"
    assert operator["command"] == ["workerpool-operator"]
    assert operator["args"] == [
        "run",
        "--log-format=json",
        "--liveness=http://0.0.0.0:8080/healthz",
        f"--peering={FULLNAME}",
        "--priority=0",
    ]
    env = {item["name"]: item.get("value") for item in operator["env"]}
    ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
    assert env["WORKERPOOL_OPERATOR_METRICS_PORT"] == str(ports["metrics"]) == "9090"
    probe = operator["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"} and ports["health"] == 8080
    assert set(operator["resources"]) == {"requests", "limits"}
    for part in operator["resources"].values():
        assert set(part) == {"cpu", "memory"}

    service = only(manifests, "Service")
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert only(manifests, "ClusterKopfPeering")["metadata"]["name"] == FULLNAME


def test_notes_tell_the_user_what_to_do_next(chart: helm_python.Chart) -> None:
    text = notes(chart)
    assert "kubectl apply -f crds/" in text
    assert "create secret generic" in text
    assert "every namespace" in text
    assert "apps, jobs" in notes(chart, SWITCHES["namespaced"])


# --- Security of the operator pod -----------------------------------------------------------------------


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_operator_pod_is_pss_restricted(chart: helm_python.Chart, switch: str) -> None:
    assert_restricted(only(render(chart, SWITCHES[switch]), "Deployment"))


def test_operator_pod_secure_defaults_beyond_pss(chart: helm_python.Chart) -> None:
    deployment = only(render(chart), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize(
    ("mutation", "fragment"),
    [
        (lambda pod: pod["containers"][0]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot: must be true"),
        (lambda pod: pod["securityContext"].update(runAsUser=0), "spec.securityContext.runAsUser: must not be 0"),
        (
            lambda pod: (
                pod["securityContext"].pop("seccompProfile")
                and pod["containers"][0]["securityContext"].pop("seccompProfile")
            ),
            "seccompProfile.type: must be set",
        ),
        (
            lambda pod: pod["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
            "'Unconfined'",
        ),
        (
            lambda pod: pod["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
            "allowPrivilegeEscalation: must be false",
        ),
        (
            lambda pod: pod["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
            "capabilities.drop: must contain ALL",
        ),
        (
            lambda pod: pod["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
            "'SYS_ADMIN' not allowed",
        ),
        (lambda pod: pod["containers"][0]["securityContext"].update(privileged=True), "privileged: must be unset"),
        (lambda pod: pod.update(hostNetwork=True), "spec.hostNetwork"),
        (lambda pod: pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "hostPath volumes"),
        (lambda pod: pod["containers"][0]["ports"][0].update(hostPort=9090), "hostPort: must be unset"),
        (lambda pod: pod["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "unsafe sysctl"),
        (lambda pod: pod["containers"][0]["securityContext"].update(procMount="Unmasked"), "procMount"),
        (
            lambda pod: pod.setdefault("initContainers", []).append({"name": "init", "image": "busybox"}),
            "initContainers[0](init).securityContext.allowPrivilegeEscalation",
        ),
    ],
)
def test_pss_check_catches_each_violation(chart: helm_python.Chart, mutation: Any, fragment: str) -> None:
    deployment = only(render(chart), "Deployment")
    assert restricted_violations(deployment) == []
    mutation(deployment["spec"]["template"]["spec"])
    problems = restricted_violations(deployment)
    assert any(fragment in problem for problem in problems), problems


# --- Each switch ----------------------------------------------------------------------------------------


def test_namespaced_mode_has_roles_only(chart: helm_python.Chart) -> None:
    manifests = render(chart, SWITCHES["namespaced"])
    assert not [m for m in manifests if m["kind"].startswith("Cluster")], "cluster-scoped objects in namespaced mode"
    roles = {m["metadata"]["namespace"]: m for m in manifests if m["kind"] == "Role"}
    bindings = {m["metadata"]["namespace"]: m for m in manifests if m["kind"] == "RoleBinding"}
    peerings = {m["metadata"]["namespace"]: m for m in manifests if m["kind"] == "KopfPeering"}
    assert set(roles) == set(bindings) == set(peerings) == {"apps", "jobs"}
    for binding in bindings.values():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    args = container(manifests)["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=apps", "--namespace=jobs"]


def test_service_monitor_switch(chart: helm_python.Chart) -> None:
    assert "ServiceMonitor" not in kinds(render(chart))
    manifests = render(chart, SWITCHES["servicemonitor"])
    monitor = only(manifests, "ServiceMonitor")
    check_service_monitor(monitor, manifests)
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["interval"] == "30s"
    # No Service without metrics, and then no ServiceMonitor either.
    off = render(chart, {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    assert "Service" not in kinds(off) and "ServiceMonitor" not in kinds(off)


def test_pod_disruption_budget_switch(chart: helm_python.Chart) -> None:
    assert "PodDisruptionBudget" not in kinds(render(chart))
    manifests = render(chart, SWITCHES["pdb"])
    pdb = only(manifests, "PodDisruptionBudget")
    pod_labels = only(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    pdb = only(render(chart, {"podDisruptionBudget": {"enabled": True, "minAvailable": 1}}), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]


def test_network_policy_switch(chart: helm_python.Chart) -> None:
    assert "NetworkPolicy" not in kinds(render(chart))
    manifests = render(chart, SWITCHES["networkpolicy"])
    policy = only(manifests, "NetworkPolicy")["spec"]
    pod_labels = only(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [
        {
            "ports": [{"port": "metrics", "protocol": "TCP"}],
            "from": SWITCHES["networkpolicy"]["networkPolicy"]["metricsFrom"],
        }
    ]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"), (6379, "TCP"), (26379, "TCP")}
    api_rule = next(rule for rule in policy["egress"] if {"port": 443, "protocol": "TCP"} in rule["ports"])
    assert api_rule["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]


def test_standalone_switch(chart: helm_python.Chart) -> None:
    manifests = render(chart, SWITCHES["standalone"])
    assert not [m for m in manifests if m["apiVersion"].startswith("kopf.dev")]
    args = container(manifests)["args"]
    assert "--standalone" in args and not [a for a in args if a.startswith(("--peering", "--priority"))]
    rules = only(manifests, "ClusterRole")["rules"]
    assert not [r for r in rules if "kopf.dev" in r["apiGroups"]]


def test_service_account_and_rbac_switches(chart: helm_python.Chart) -> None:
    manifests = render(chart, {"serviceAccount": {"create": False, "name": "existing"}})
    assert "ServiceAccount" not in kinds(manifests)
    assert only(manifests, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing"
    assert only(manifests, "ClusterRoleBinding")["subjects"][0]["name"] == "existing"
    with pytest.raises(helm_python.HelmRenderError, match=r"serviceAccount\.name is required"):
        render(chart, {"serviceAccount": {"create": False}})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & set(
        kinds(render(chart, {"rbac": {"create": False}}))
    )


def test_image_tag_and_names(chart: helm_python.Chart) -> None:
    manifests = render(
        chart, {"image": {"repository": "registry.example/wpo", "tag": "1.2.3"}, "fullnameOverride": "wpo"}
    )
    assert container(manifests)["image"] == "registry.example/wpo:1.2.3"
    assert {m["metadata"]["name"] for m in manifests} == {"wpo", "wpo-metrics"}


# --- values.schema.json ---------------------------------------------------------------------------------

BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicaCount": 2}, "at '/replicaCount': maximum: got 2, want 1"),
    ({"replicaCount": "one"}, "at '/replicaCount': got string, want integer"),
    ({"unknownKey": True}, "additional properties 'unknownKey' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
    ({"image": {"tag": "has space"}}, "at '/image/tag'"),
    ({"watch": {"namespaces": "apps"}}, "at '/watch/namespaces': got string, want array"),
    ({"watch": {"namespaces": ["Not_A_Namespace"]}}, "at '/watch/namespaces/0'"),
    ({"watch": {"namespaces": ["apps", "apps"]}}, "at '/watch/namespaces'"),
    ({"watch": {"namespace": ["apps"]}}, "additional properties 'namespace' not allowed"),
    ({"operator": {"logFormat": "xml"}}, "at '/operator/logFormat'"),
    ({"operator": {"healthPort": 0}}, "at '/operator/healthPort'"),
    ({"peering": {"priority": "high"}}, "at '/peering/priority': got string, want integer"),
    ({"peering": {"enabled": "yes"}}, "at '/peering/enabled': got string, want boolean"),
    ({"metrics": {"port": 70000}}, "at '/metrics/port': maximum"),
    ({"metrics": {"port": "9090"}}, "at '/metrics/port': got string, want integer"),
    ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "at '/metrics/serviceMonitor/interval'"),
    ({"resources": {"requests": None}}, "at '/resources': missing property 'requests'"),
    ({"resources": {"limits": {"cpu": "lots"}}}, "at '/resources/limits/cpu'"),
    ({"podSecurity": {"runAsUser": 0}}, "at '/podSecurity/runAsUser': minimum"),
    ({"podSecurity": {"runAsUser": "app"}}, "at '/podSecurity/runAsUser': got string, want integer"),
    ({"podDisruptionBudget": {"enabled": True, "maxUnavailable": "half"}}, "at '/podDisruptionBudget/maxUnavailable'"),
    ({"networkPolicy": {"apiServer": {"cidrs": ["kubernetes"]}}}, "at '/networkPolicy/apiServer/cidrs/0'"),
    ({"networkPolicy": {"brokerPorts": [6379, -1]}}, "at '/networkPolicy/brokerPorts/1'"),
    ({"serviceAccount": {"annotations": {"a": 1}}}, "at '/serviceAccount/annotations/a': got number, want string"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_schema_rejects_bad_values_readably(chart: helm_python.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as info:
        chart.validate_schema(values)
    assert message in str(info.value)
    # Installing refuses them too, with the same message, before any template runs.
    with pytest.raises(helm_python.HelmValuesError, match="workerpool-operator"):
        render(chart, values)


def test_schema_accepts_every_switch(chart: helm_python.Chart) -> None:
    for values in SWITCHES.values():
        chart.validate_schema(values)
    chart.validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_every_value_is_commented() -> None:
    """Each key of values.yaml has a comment right above it, or sits in a block that has one."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing blocks
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        documented = [(i, d) for i, d in documented if i < indent]
        commented = index > 0 and lines[index - 1].strip().startswith("#")
        inherited = any(d for _, d in documented)
        if stripped.endswith(":"):
            documented.append((indent, commented or inherited))
        else:
            assert commented or inherited, f"values.yaml line {index + 1} has no comment: {line!r}"
