"""The Helm chart, rendered by Helm's own engine (helm-python-sdk): defaults, every switch, lint, schema,
Kubernetes validation and the operator pod's security."""

from __future__ import annotations

import json
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python
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
    "monitoring": {
        "metrics": {
            "serviceMonitor": {
                "enabled": True,
                "relabelings": [{"targetLabel": "cluster", "replacement": "eu-1"}],
                "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "python_gc_.*", "action": "drop"}],
            }
        },
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    },
    "no-metrics": {"metrics": {"enabled": False}},
    "single": {"replicaCount": 1, "podDisruptionBudget": {"enabled": False}},
    "no-crds": {"crds": {"install": False}},
    "everything": {
        "watch": {"namespaces": ["apps"]},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
        "replicaCount": 3,
        "leaderElection": {"leaseName": "wpo-leader"},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
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


def test_the_chart_readme_promises_nothing_of_helm_show_crds() -> None:
    """The CRD is a template (so upgrades upgrade it): `helm show crds` prints nothing, and the chart's README and
    values say so and name the command that does print it; they tell how to let the release adopt a CRD applied
    before it (the "invalid ownership metadata" of `helm install`)."""
    readme = " ".join((CHART / "README.md").read_text().split())
    assert "`helm show crds` prints nothing" in readme and "--show-only templates/crd.yaml" in readme
    assert "invalid ownership metadata" in readme and "meta.helm.sh/release-name=" in readme
    for text in (readme, (CHART / "values.yaml").read_text()):
        assert "(`helm show crds` prints it)" not in text


def test_chart_crd_is_the_top_level_crd(chart: helm_python.Chart) -> None:
    """The chart carries the CRD generated from the model, as crds/workerpool.yaml, and renders it with its labels."""
    top_level, in_chart = REPO / "crds" / "workerpool.yaml", CHART / "files" / "workerpool-crd.yaml"
    assert in_chart.read_bytes() == top_level.read_bytes(), (
        f"{in_chart.relative_to(REPO)} differs from crds/workerpool.yaml: run `make crd` (both are generated)"
    )
    assert not (CHART / "crds").exists(), "no crds/ folder: Helm would install it once and never upgrade it"
    assert chart.crds == []
    crd = only(render(chart), "CustomResourceDefinition")
    source = yaml.safe_load(top_level.read_text())
    labels, annotations = crd["metadata"].pop("labels"), crd["metadata"].pop("annotations")
    assert source["metadata"]["labels"].items() <= labels.items() and labels["app.kubernetes.io/instance"] == RELEASE
    assert annotations == {"helm.sh/resource-policy": "keep"}
    del source["metadata"]["labels"]
    assert crd == source
    kubernetes_validate.validate(crd, KUBERNETES_VERSIONS[-1], strict=True)


def test_crd_switches(chart: helm_python.Chart) -> None:
    assert "CustomResourceDefinition" not in kinds(render(chart, SWITCHES["no-crds"]))
    crd = only(render(chart, {"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]


# --- Every manifest is valid Kubernetes -----------------------------------------------------------------


def check_prometheus_rule(rule: Manifest) -> None:
    """PrometheusRule is a Prometheus Operator custom resource: its groups are the promtool-tested rule file's."""
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())["groups"]


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
        assert set(endpoint) <= {
            "port",
            "path",
            "interval",
            "scrapeTimeout",
            "honorLabels",
            "relabelings",
            "metricRelabelings",
        }
        assert isinstance(endpoint["honorLabels"], bool)
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
        elif kind == "PrometheusRule":
            check_prometheus_rule(manifest)
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
        "ClusterRole",
        "ClusterRole",  # WorkerPools in the built-in view role (aggregated)
        "ClusterRole",  # ... and in edit and admin
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Pod",  # the `helm test` hook
        "PodDisruptionBudget",
        "Role",  # leader election, in the release namespace
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/name"] in ("workerpool-operator", "workerpool-operator-test")
        if manifest["kind"] != "Pod":
            assert labels["app.kubernetes.io/version"] == chart.metadata["appVersion"]

    deployment = only(manifests, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == only(manifests, "ServiceAccount")["metadata"]["name"] == FULLNAME
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [term["podAffinityTerm"]["topologyKey"] for term in anti] == ["kubernetes.io/hostname"]
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["podAntiAffinity"]

    operator = container(manifests)
    assert operator["image"] == f"ghcr.io/workerpool-dev/workerpool-operator:{chart.metadata['appVersion']}"
    assert operator["command"] == ["workerpool-operator"]
    assert operator["args"] == [
        "run",
        "--log-format=json",
        "--liveness=http://0.0.0.0:8080/healthz",
        f"--lease-name={FULLNAME}",
    ]
    env = {item["name"]: item.get("value") for item in operator["env"]}
    ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
    assert env["WORKERPOOL_OPERATOR_METRICS_PORT"] == str(ports["metrics"]) == "9847"
    assert operator["env"][2] == {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }
    probe = operator["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"} and ports["health"] == 8080
    assert set(operator["resources"]) == {"requests", "limits"}
    for part in operator["resources"].values():
        assert set(part) == {"cpu", "memory"}

    service = only(manifests, "Service")
    assert service["metadata"]["name"] == FULLNAME
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [
        {"name": "health", "port": 8080, "targetPort": "health", "protocol": "TCP"},
        {"name": "metrics", "port": 9847, "targetPort": "metrics", "protocol": "TCP"},
    ]
    pdb = only(manifests, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_leader_election_rbac_is_the_lease_by_name(chart: helm_python.Chart) -> None:
    for values, lease in (({}, FULLNAME), ({"leaderElection": {"leaseName": "wpo-leader"}}, "wpo-leader")):
        manifests = render(chart, values)
        (role,) = [m for m in manifests if m["kind"] == "Role"]
        assert role["metadata"] == {**role["metadata"], "namespace": NAMESPACE, "name": f"{FULLNAME}-leader-election"}
        assert role["rules"] == [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [lease],
                "verbs": ["get", "patch"],
            },
        ]
        assert f"--lease-name={lease}" in container(manifests)["args"]
        binding = next(m for m in manifests if m["kind"] == "RoleBinding")
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_no_kopf_peering_left(chart: helm_python.Chart) -> None:
    for switch in SWITCHES.values():
        manifests = render(chart, switch)
        assert not [m for m in manifests if m["apiVersion"].startswith("kopf.dev")]
        assert not [
            a for a in container(manifests)["args"] if a.startswith(("--peering", "--priority", "--standalone"))
        ]
        rules = [r for m in manifests if m["kind"] in ("Role", "ClusterRole") for r in m["rules"]]
        assert not [r for r in rules if "kopf.dev" in r["apiGroups"]]
    assert "peering" not in (CHART / "values.yaml").read_text().lower()


def test_affinity_replicas_and_metrics_switches(chart: helm_python.Chart) -> None:
    own: dict[str, Any] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    }
    assert only(render(chart, {"affinity": own}), "Deployment")["spec"]["template"]["spec"]["affinity"] == own
    assert only(render(chart, {"replicaCount": 5}), "Deployment")["spec"]["replicas"] == 5

    off = render(chart, SWITCHES["no-metrics"])
    operator = container(off)
    assert [p["name"] for p in operator["ports"]] == ["health"]
    assert {e["name"]: e.get("value") for e in operator["env"]}["WORKERPOOL_OPERATOR_METRICS_PORT"] == "0"
    assert [p["name"] for p in only(off, "Service")["spec"]["ports"]] == ["health"]
    assert "/metrics" not in only(off, "Pod")["spec"]["containers"][0]["args"][0]


def test_helm_test_checks_health_and_metrics_through_the_service(chart: helm_python.Chart) -> None:
    manifests = render(chart)
    test = only(manifests, "Pod")
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    deployment = only(manifests, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= test["metadata"]["labels"].items(), "the test pod must not look like an operator pod"
    check = test["spec"]["containers"][0]
    assert check["image"] == container(manifests)["image"] and check["command"] == ["python", "-c"]
    script = check["args"][0]
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:8080/healthz" in script
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:9847/metrics" in script and "workerpool_build_info" in script
    compile(script, "helm-test", "exec")  # the script is valid Python
    assert_restricted(test)
    assert "Pod" not in kinds(render(chart, {"test": {"enabled": False}}))


def test_monitoring_switches(chart: helm_python.Chart) -> None:
    assert not {"PrometheusRule", "ConfigMap", "ServiceMonitor"} & set(kinds(render(chart)))
    manifests = render(chart, SWITCHES["monitoring"])
    rule = only(manifests, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    check_prometheus_rule(rule)
    dashboard = only(manifests, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = dashboard["data"].values()
    assert json.loads(text) == json.loads((REPO / "monitoring" / "dashboard.json").read_text())
    endpoint = only(manifests, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["honorLabels"] is True
    assert endpoint["relabelings"] == SWITCHES["monitoring"]["metrics"]["serviceMonitor"]["relabelings"]
    assert endpoint["metricRelabelings"][0]["action"] == "drop"


def test_notes_tell_the_user_what_to_do_next(chart: helm_python.Chart) -> None:
    text = notes(chart)
    assert "kubectl apply -f crds/" not in text and "helm upgrade` upgrades it" in text
    assert "create secret generic" in text and f"helm test {RELEASE}" in text
    assert "every namespace" in text and "elect a leader" in text
    assert "apps, jobs" in notes(chart, SWITCHES["namespaced"])
    assert "--show-only templates/crd.yaml" in notes(chart, SWITCHES["no-crds"])
    assert "helm show crds` prints nothing" in notes(chart, SWITCHES["no-crds"])
    assert "exit and restart" in notes(chart, SWITCHES["no-crds"])  # the operator started before its CRD
    assert "`edit` and `admin` roles may create WorkerPools" in text
    assert "may create WorkerPools" not in notes(chart, {"rbac": {"create": True, "aggregateClusterRoles": False}})
    assert "elect a leader" not in notes(chart, SWITCHES["single"])


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
    # The only cluster-scoped RBAC: the users' roles aggregated into view, edit and admin, bound to nobody by the
    # chart (tests/test_helm_rbac.py checks they give the operator nothing).
    cluster_scoped = [m for m in manifests if m["kind"].startswith("Cluster")]
    assert {m["kind"] for m in cluster_scoped} == {"ClusterRole"}, "cluster-scoped objects in namespaced mode"
    for role in cluster_scoped:
        assert any(key.startswith("rbac.authorization.k8s.io/aggregate-to-") for key in role["metadata"]["labels"])
    no_aggregation = {**SWITCHES["namespaced"], "rbac": {"create": True, "aggregateClusterRoles": False}}
    assert not [m for m in render(chart, no_aggregation) if m["kind"].startswith("Cluster")]
    operator = [m for m in manifests if m["kind"] in ("Role", "RoleBinding") and m["metadata"]["name"] == FULLNAME]
    roles = {m["metadata"]["namespace"]: m for m in operator if m["kind"] == "Role"}
    bindings = {m["metadata"]["namespace"]: m for m in operator if m["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"apps", "jobs"}
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
    # No metrics port without metrics, and then no ServiceMonitor either.
    off = render(chart, {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    assert "ServiceMonitor" not in kinds(off)


def test_pod_disruption_budget_switch(chart: helm_python.Chart) -> None:
    assert "PodDisruptionBudget" not in kinds(render(chart, SWITCHES["single"]))
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
    tester = only(manifests, "Pod")["metadata"]["labels"]
    assert policy["ingress"] == [
        {
            "ports": [{"port": "health", "protocol": "TCP"}, {"port": "metrics", "protocol": "TCP"}],
            "from": [{"podSelector": {"matchLabels": tester}}],
        },
        {
            "ports": [{"port": "metrics", "protocol": "TCP"}],
            "from": SWITCHES["networkpolicy"]["networkPolicy"]["metricsFrom"],
        },
    ]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"), (6379, "TCP"), (26379, "TCP")}
    api_rule = next(rule for rule in policy["egress"] if {"port": 443, "protocol": "TCP"} in rule["ports"])
    assert api_rule["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]


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
    names = {m["metadata"]["name"] for m in manifests if m["kind"] != "CustomResourceDefinition"}
    assert names == {"wpo", "wpo-leader-election", "wpo-test", "wpo-view", "wpo-edit"}


# --- values.schema.json ---------------------------------------------------------------------------------

BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicaCount": -1}, "at '/replicaCount': minimum: got -1, want 0"),
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
    ({"peering": {"enabled": True}}, "additional properties 'peering' not allowed"),
    ({"leaderElection": {"leaseName": "Not A Name"}}, "at '/leaderElection/leaseName'"),
    ({"crds": {"install": "yes"}}, "at '/crds/install': got string, want boolean"),
    ({"metrics": {"serviceMonitor": {"relabelings": {"a": 1}}}}, "at '/metrics/serviceMonitor/relabelings'"),
    ({"metrics": {"serviceMonitor": {"honorLabels": "true"}}}, "at '/metrics/serviceMonitor/honorLabels'"),
    ({"prometheusRule": {"labels": {"release": 1}}}, "at '/prometheusRule/labels/release'"),
    ({"grafanaDashboard": {"namespace": "Not_A_Namespace"}}, "at '/grafanaDashboard/namespace'"),
    ({"test": {"enabled": 1}}, "at '/test/enabled': got number, want boolean"),
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


def _leaves(value: Any, path: str = "") -> Iterator[str]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    else:
        yield path


def _schema_paths(schema: dict[str, Any], path: str = "") -> Iterator[str]:
    properties = schema.get("properties")
    if properties:
        for key, item in properties.items():
            yield from _schema_paths(item, f"{path}.{key}" if path else key)
    elif path:
        yield path


def test_schema_and_values_name_the_same_settings() -> None:
    """The schema declares every value in values.yaml, and values.yaml has every top-level setting."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    in_values = set(_leaves(values))
    in_schema = set(_schema_paths(schema)) - {"global"}
    # Maps whose keys are the user's (labels, resources) are leaves in the schema, containers in values.
    assert {p for p in in_values if not any(p == s or p.startswith(f"{s}.") for s in in_schema)} == set()
    assert set(schema["properties"]) - {"global"} == set(values)  # optional settings deeper down may be unset


def test_chart_readme_is_generated_from_values() -> None:
    """README.md's Parameters are what @bitnami/readme-generator-for-helm makes of the values.yaml comments (it
    also refuses a value without a `@param`). `make chart-readme` writes it again."""
    generator = REPO / "node_modules" / ".bin" / "readme-generator"
    assert generator.is_file(), "the README generator is missing: `make node-tools` (npm ci) installs it"
    with tempfile.TemporaryDirectory() as tmp:
        readme = Path(tmp) / "README.md"
        readme.write_bytes((CHART / "README.md").read_bytes())
        result = subprocess.run(
            [str(generator), "--values", str(CHART / "values.yaml"), "--readme", str(readme)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert readme.read_text() == (CHART / "README.md").read_text(), "README.md is stale: run `make chart-readme`"


def test_dashboard_in_the_chart_is_the_generated_one() -> None:
    from monitoring import dashboard

    assert dashboard.main(["--check"]) == 0, "the dashboard JSON is stale: run `python -m monitoring.dashboard`"
