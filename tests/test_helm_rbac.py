"""RBAC is exactly enough: every API call the operator makes is allowed by the chart's rendered rules, and
nothing broader is granted.

The calls come from two places: the operator running for real on the emulator (every recorded request),
and ``expected_calls()`` below, which lists what the operator and kopf do (derived from their code) so
each granted permission is tied to a call that needs it. Any list of ``(method, url)`` pairs can be checked
with ``check_requests``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import helm_python
import kmock
import pytest

from tests import operator_helpers as h
from tests.conftest import RedisServer, RunningOperator
from tests.kube import KubeCluster
from tests.rbac import (
    BUILT_IN_ROLES,
    WRITE_VERBS,
    ApiRequest,
    Grant,
    aggregated_grants,
    allows,
    denied,
    granted_permissions,
    grants_for,
    parse_request,
)
from tests.test_helm_chart import CHART, FULLNAME, NAMESPACE, render
from workerpool_operator import API_GROUP, API_VERSION, PLURAL
from workerpool_operator.cli import build_parser, run_settings
from workerpool_operator.kube import handlers, preflight
from workerpool_operator.kube.api import KubeApi

WATCHED = ["apps", "jobs"]
NAMESPACED = {"watch": {"namespaces": WATCHED}}

# Cluster-scope reads kopf makes in namespaced mode and gives up on, with a warning, when forbidden: it then
# serves the namespaces it was given and notices CRD changes on restart only. Namespaced mode grants no
# cluster-wide permission at all, so these are denied there, on purpose.
KOPF_TOLERATES_FORBIDDEN = {
    ("list", "apiextensions.k8s.io/customresourcedefinitions"),
    ("watch", "apiextensions.k8s.io/customresourcedefinitions"),
    ("list", "core/namespaces"),
    ("watch", "core/namespaces"),
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def grants(chart: helm_python.Chart, values: dict[str, Any] | None = None, *, discovery: bool = True) -> list[Grant]:
    """What the chart grants the operator's ServiceAccount (plus, by default, what every cluster grants it)."""
    return grants_for(render(chart, values), FULLNAME, NAMESPACE, discovery=discovery)


def check_requests(grants: list[Grant], calls: Iterable[tuple[str, str]]) -> list[str]:
    """The calls the grants do not allow, readable; ``calls`` are ``(method, url)`` pairs."""
    return [str(request) for request in denied(grants, (parse_request(m, u) for m, u in calls))]


LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
# What leader election needs (the lead's side of #15, the `run` contract): create the Lease once, then
# read and renew it by name, in the release namespace.
# Leader election (kube/leader.py): create once, then read and patch (a patch conditional on resourceVersion).
LEASE_CALLS = [("POST", LEASES), ("GET", f"{LEASES}/{FULLNAME}"), ("PATCH", f"{LEASES}/{FULLNAME}")]


def expected_calls(namespace: str | None) -> list[tuple[str, str]]:
    """What the operator and kopf call, for one served namespace (``None``: all namespaces, cluster scope).

    Watches and lists are cluster-wide when the operator serves every namespace; object calls always name
    the object's namespace (``apps`` stands for any). The Lease is in the release namespace.
    """
    scope = f"namespaces/{namespace}/" if namespace else ""
    ns = namespace or "apps"
    wp = "/apis/workerpool.dev/v1alpha1"
    calls = [
        # kopf discovery (non-resource) and its watch of WorkerPools; it patches finalizers and annotations.
        ("GET", "/apis"),
        ("GET", "/api"),
        ("GET", "/api/v1"),
        ("GET", f"{wp}"),
        ("GET", f"{wp}/{scope}workerpools"),
        ("GET", f"{wp}/{scope}workerpools?watch=true"),
        ("PATCH", f"{wp}/namespaces/{ns}/workerpools/shop"),
        ("PATCH", f"{wp}/namespaces/{ns}/workerpools/shop/status"),
        # The operator reads a pool before it acts and watches its Deployments.
        ("GET", f"{wp}/namespaces/{ns}/workerpools/shop"),
        ("GET", f"/apis/apps/v1/{scope}deployments?labelSelector=workerpool.dev%2Fpool"),
        ("GET", f"/apis/apps/v1/{scope}deployments?watch=true"),
        ("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/shop-default"),
        # Server-Side Apply: a patch, and a create too when the Deployment is new (both verbs are checked).
        ("POST", f"/apis/apps/v1/namespaces/{ns}/deployments"),
        ("PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/shop-default"),
        # The scaler's apply of the replica count, through the scale subresource.
        ("PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/shop-default/scale"),
        ("DELETE", f"/apis/apps/v1/namespaces/{ns}/deployments/shop-removed"),
        # Flower's Service: read, applied, listed by the pool's label, watched for drift, deleted with spec.flower.
        ("GET", f"/api/v1/namespaces/{ns}/services/shop-flower"),
        ("GET", f"/api/v1/{scope}services?labelSelector=workerpool.dev%2Fpool"),
        ("GET", f"/api/v1/{scope}services?watch=true"),
        ("POST", f"/api/v1/namespaces/{ns}/services"),
        ("PATCH", f"/api/v1/namespaces/{ns}/services/shop-flower"),
        ("DELETE", f"/api/v1/namespaces/{ns}/services/shop-flower"),
        # Pod deletion cost before a scale-down: the idlest pods, named by the worker reports.
        ("PATCH", f"/api/v1/namespaces/{ns}/pods/shop-default-abc12"),
        # The broker URL Secret, by name.
        ("GET", f"/api/v1/namespaces/{ns}/secrets/shop-broker"),
        # Events (core v1, as kopf posts them too).
        ("POST", f"/api/v1/namespaces/{ns}/events"),
    ]
    if namespace is None:
        calls += [
            ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
            ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?watch=true"),
        ]
    return calls + LEASE_CALLS


# --- The evaluator itself -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("GET", "/apis", "get /apis"),
        ("GET", "/api/v1", "get /api/v1"),
        ("GET", "/apis/apps/v1/deployments", "list apps/deployments (cluster scope)"),
        ("GET", "/apis/apps/v1/deployments?watch=true", "watch apps/deployments (cluster scope)"),
        ("GET", "/apis/apps/v1/watch/namespaces/a/deployments", "watch apps/deployments in a"),
        ("GET", "/apis/apps/v1/namespaces/a/deployments/x", "get apps/deployments 'x' in a"),
        ("GET", "/api/v1/namespaces/a/secrets?fieldSelector=metadata.name%3Ds", "list core/secrets 's' in a"),
        ("POST", "/api/v1/namespaces/a/events", "create core/events in a"),
        ("PUT", "/apis/apps/v1/namespaces/a/deployments/x/scale", "update apps/deployments/scale 'x' in a"),
        ("PATCH", "/apis/workerpool.dev/v1alpha1/namespaces/a/workerpools/p/status", "patch"),
        ("DELETE", "/api/v1/namespaces/a/pods", "deletecollection core/pods in a"),
        ("DELETE", "/api/v1/namespaces/a/pods/p", "delete core/pods 'p' in a"),
        ("GET", "/api/v1/namespaces", "list core/namespaces (cluster scope)"),
        ("GET", "/api/v1/namespaces/a", "get core/namespaces 'a' in a"),
        ("GET", "/apis/kopf.dev/v1/clusterkopfpeerings/x", "get kopf.dev/clusterkopfpeerings 'x' (cluster scope)"),
    ],
)
def test_parse_request(method: str, url: str, expected: str) -> None:
    assert str(parse_request(method, url)).startswith(expected)


def test_evaluator_scopes_rules_like_the_api_server() -> None:
    rule = {"apiGroups": [""], "resources": ["pods", "*/status"], "verbs": ["get", "patch"]}
    named = {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "resourceNames": ["mine"], "verbs": ["patch"]}
    sa = [{"kind": "ServiceAccount", "name": "op", "namespace": "ops"}]
    docs = [
        {"kind": "Role", "metadata": {"name": "r", "namespace": "a"}, "rules": [rule, named]},
        {"kind": "ClusterRole", "metadata": {"name": "c"}, "rules": [rule]},
        {
            "kind": "RoleBinding",
            "metadata": {"name": "b1", "namespace": "a"},
            "roleRef": {"kind": "Role", "name": "r"},
            "subjects": sa,
        },
        {  # a ClusterRole bound in one namespace grants in that namespace only
            "kind": "RoleBinding",
            "metadata": {"name": "b2", "namespace": "b"},
            "roleRef": {"kind": "ClusterRole", "name": "c"},
            "subjects": sa,
        },
        {  # someone else's binding grants us nothing
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "other"},
            "roleRef": {"kind": "ClusterRole", "name": "c"},
            "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "elsewhere"}],
        },
    ]
    g = grants_for(docs, "op", "ops")
    ok = lambda method, url: allows(g, parse_request(method, url))  # noqa: E731
    assert ok("GET", "/api/v1/namespaces/a/pods/x") and ok("GET", "/api/v1/namespaces/b/pods/x")
    assert not ok("GET", "/api/v1/namespaces/c/pods/x")
    assert not ok("GET", "/api/v1/pods/x") and not ok("GET", "/api/v1/namespaces/a/pods")  # cluster scope, list
    assert ok("PATCH", "/api/v1/namespaces/a/pods/x/status") and not ok("PATCH", "/api/v1/namespaces/a/pods/x/log")
    assert ok("PATCH", "/apis/kopf.dev/v1/namespaces/a/kopfpeerings/mine")
    assert not ok("PATCH", "/apis/kopf.dev/v1/namespaces/a/kopfpeerings/theirs")
    assert not ok("POST", "/apis/kopf.dev/v1/namespaces/a/kopfpeerings")  # creates carry no name
    assert ok("GET", "/version") and ok("GET", "/apis/apps/v1") and not ok("GET", "/metrics")
    with pytest.raises(LookupError, match="missing Role nope"):
        grants_for([{**docs[2], "roleRef": {"kind": "Role", "name": "nope"}}], "op", "ops")


# --- The rendered rules ---------------------------------------------------------------------------------

MODES: dict[str, dict[str, Any]] = {
    "cluster-wide": {},
    "namespaced": NAMESPACED,
}


def is_lease(grant_or_request: Grant | ApiRequest) -> bool:
    if isinstance(grant_or_request, Grant):
        return grant_or_request.rule.resources == {"leases"}
    return grant_or_request.group_resource == "coordination.k8s.io/leases"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_no_wildcards_and_no_secret_listing(chart: helm_python.Chart, mode: str) -> None:
    chart_grants = grants(chart, MODES[mode], discovery=False)
    assert chart_grants
    for grant in chart_grants:
        assert not grant.rule.has_wildcard, grant
        if "secrets" in grant.rule.resources:
            assert grant.rule.verbs == {"get"}, f"Secrets must be get only: {grant}"


def test_namespaced_mode_grants_nothing_cluster_wide(chart: helm_python.Chart) -> None:
    for grant in grants(chart, NAMESPACED):
        if grant.namespace is None:
            assert grant.rule.non_resource_urls and not grant.rule.resources, f"cluster-wide grant: {grant}"
            assert not grant.rule.verbs & WRITE_VERBS
        elif is_lease(grant):
            assert grant.namespace == NAMESPACE, grant
        else:
            assert grant.namespace in WATCHED, grant


@pytest.mark.parametrize("mode", sorted(MODES))
def test_namespace_users_use_workerpools_through_the_built_in_roles(chart: helm_python.Chart, mode: str) -> None:
    """view reads WorkerPools; edit and admin, which write Deployments, write them too (a WorkerPool runs pods as a
    Deployment does); nobody but the operator writes their status; a binding in one namespace gives nothing in
    another; and the operator's own ServiceAccount gains nothing from these roles."""
    documents = render(chart, MODES[mode])
    pools = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/apps/{PLURAL}"
    reads = [("GET", pools), ("GET", f"{pools}/shop"), ("GET", f"{pools}?watch=true"), ("GET", f"{pools}/shop/status")]
    writes = [("POST", pools), ("PATCH", f"{pools}/shop"), ("PUT", f"{pools}/shop"), ("DELETE", f"{pools}/shop")]
    writes.append(("DELETE", pools))  # deletecollection
    status = [("PATCH", f"{pools}/shop/status"), ("PUT", f"{pools}/shop/status")]
    elsewhere = [(method, url.replace("/namespaces/apps/", "/namespaces/jobs/")) for method, url in reads + writes]
    view, edit, admin = (aggregated_grants(documents, role, "apps") for role in BUILT_IN_ROLES)
    assert check_requests(view, reads) == []
    assert check_requests(view, writes + status) == [str(parse_request(m, u)) for m, u in writes + status]
    for role in (edit, admin):
        assert check_requests(role, reads + writes) == []
        assert len(check_requests(role, status + elsewhere)) == len(status + elsewhere)
    assert not [g for g in view + edit + admin if g.rule.has_wildcard or g.rule.api_groups != {API_GROUP}]
    without = render(chart, {**MODES[mode], "rbac": {"create": True, "aggregateClusterRoles": False}})
    assert aggregated_grants(without, "admin", "apps") == []
    assert grants_for(documents, FULLNAME, NAMESPACE) == grants_for(without, FULLNAME, NAMESPACE)


def test_the_lease_is_granted_by_name_in_the_release_namespace_only(chart: helm_python.Chart) -> None:
    for mode in MODES.values():
        leases = [g for g in grants(chart, mode) if "leases" in g.rule.resources]
        assert {g.namespace for g in leases} == {NAMESPACE}
        assert {g.rule.api_groups for g in leases} == {frozenset({"coordination.k8s.io"})}
        named = [g for g in leases if g.rule.resource_names]
        assert [g.rule.resource_names for g in named] == [frozenset({FULLNAME})]
        assert [g.rule.verbs for g in leases if not g.rule.resource_names] == [frozenset({"create"})]
        other = f"{LEASES}/someone-else"
        assert check_requests(leases, [("GET", other), ("PUT", other), ("DELETE", f"{LEASES}/{FULLNAME}")]) == [
            f"get coordination.k8s.io/leases 'someone-else' in {NAMESPACE}",
            f"update coordination.k8s.io/leases 'someone-else' in {NAMESPACE}",
            f"delete coordination.k8s.io/leases '{FULLNAME}' in {NAMESPACE}",
        ]
        assert check_requests(leases, [("POST", "/apis/coordination.k8s.io/v1/namespaces/apps/leases")])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_operator_call_is_allowed(chart: helm_python.Chart, mode: str) -> None:
    values = MODES[mode]
    namespaces: list[str | None] = list(WATCHED) if mode == "namespaced" else [None]
    calls = [call for namespace in namespaces for call in expected_calls(namespace)]
    assert check_requests(grants(chart, values), calls) == []


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_permission_is_needed(chart: helm_python.Chart, mode: str) -> None:
    """Exactly enough: each granted (verb, resource, namespace) is used by some call the operator makes."""
    namespaces: list[str | None] = list(WATCHED) if mode == "namespaced" else [None]
    requests = [parse_request(m, u) for ns in namespaces for m, u in expected_calls(ns)]
    used = {(r.verb, r.group_resource, r.namespace if mode == "namespaced" or is_lease(r) else None) for r in requests}
    unused = granted_permissions(grants(chart, MODES[mode])) - used
    assert unused == set(), f"granted but never used: {sorted(unused, key=str)}"


def test_what_the_operator_must_not_do_is_denied(chart: helm_python.Chart) -> None:
    forbidden = [
        ("GET", "/api/v1/secrets"),
        ("GET", "/api/v1/namespaces/apps/secrets"),
        ("GET", "/api/v1/namespaces/apps/secrets?watch=true"),
        ("PATCH", "/api/v1/namespaces/apps/secrets/shop-broker"),
        ("POST", "/api/v1/namespaces/apps/pods"),
        ("DELETE", "/api/v1/namespaces/apps/pods/p"),
        ("PUT", "/apis/apps/v1/namespaces/apps/deployments/d"),
        ("DELETE", "/apis/apps/v1/namespaces/apps/deployments"),
        ("DELETE", "/apis/workerpool.dev/v1alpha1/namespaces/apps/workerpools/shop"),
        ("POST", "/apis/workerpool.dev/v1alpha1/namespaces/apps/workerpools"),
        ("PATCH", f"{LEASES}/someone-else"),
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/apps/leases/" + FULLNAME),
        ("GET", "/apis/coordination.k8s.io/v1/leases"),
        ("GET", "/apis/kopf.dev/v1/clusterkopfpeerings"),
        ("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
        ("GET", "/api/v1/namespaces/apps/configmaps"),
        ("PATCH", "/apis/events.k8s.io/v1/namespaces/apps/events/e"),
    ]
    for mode in MODES.values():
        g = grants(chart, mode)
        assert sorted(check_requests(g, forbidden)) == sorted(str(parse_request(m, u)) for m, u in forbidden)
    # Namespaced: nothing outside the watched namespaces, and no cluster-scope call beyond discovery.
    outside = [(m, u.replace("/apps/", "/other/")) for m, u in expected_calls("apps")]
    g = grants(chart, NAMESPACED)
    assert len(check_requests(g, outside)) == len([u for _, u in outside if "/namespaces/other/" in u])
    assert {(r.verb, r.group_resource) for r in denied(g, map(lambda c: parse_request(*c), expected_calls(None)))} >= (
        KOPF_TOLERATES_FORBIDDEN - {("list", "core/namespaces"), ("watch", "core/namespaces")}
    )


# --- What the operator really calls, recorded on the emulator -------------------------------------------


TEST_AGENT = "helm-rbac-test"  # the test's own calls (setting the scene) carry this User-Agent


def scene_api(kube: KubeCluster) -> KubeApi:
    client = kube.api_client()
    client.user_agent = TEST_AGENT
    return KubeApi(client)


def recorded(kube: KubeCluster) -> list[tuple[str, str]]:
    """Every ``(method, url)`` the operator (kopf and our own client) sent, the test's own calls left out. A patch
    that created its object (a Server-Side Apply answered 201) is a create as well: the API server authorizes both
    verbs for it, so it appears a second time as a POST to its collection."""
    calls = []
    for r in kube.requests():
        if r.headers.get("User-Agent") == TEST_AGENT:
            continue
        method, url = str(r.method.value).upper(), str(r.url.path_qs)
        calls.append((method, url))
        if method == "PATCH" and kube.answer(r) == 201:
            calls.append(("POST", str(r.url.path).rsplit("/", 1)[0]))
    return calls


@pytest.fixture
def elected(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `operator` fixture's operator elects itself leader through the chart's Lease (set before it starts)."""
    monkeypatch.setenv("WORKERPOOL_OPERATOR_LEASE", f"{NAMESPACE}/{FULLNAME}")
    monkeypatch.setenv("WORKERPOOL_OPERATOR_RETRY_PERIOD", "0.5")


def test_recorded_calls_of_a_pool_lifecycle_are_allowed_and_use_every_grant(
    chart: helm_python.Chart, elected: None, operator: RunningOperator, redis_server: RedisServer
) -> None:
    """The operator (elected through the chart's Lease) serves a pool's whole life within the rules, and every
    grant of the chart is used by a call it really made."""
    kube = operator.cluster
    api = scene_api(kube)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis"}}
    secret["data"] = {"url": base64.b64encode(redis_server.url.encode()).decode()}
    api.request("POST", f"/api/v1/namespaces/{h.NS}/secrets", body=secret)
    pools = f"/apis/workerpool.dev/v1alpha1/namespaces/{h.NS}/workerpools"
    # concurrency 1; drainTimeoutSeconds 0: the scale-down below marks the idlest pods at once (the reports
    # written by the test never confirm a drain)
    default = {"name": "default", "maxReplicas": 5, "scaling": {"drainTimeoutSeconds": 0}}
    queues: list[dict[str, Any]] = [default, {"name": "mail"}]
    api.request("POST", pools, body=h.pool_manifest("shop", queues=queues))
    h.wait_for(lambda: set(h.deployments(kube)) == {"shop-default", "shop-mail"}, message="the Deployments")
    h.wait_for(lambda: h.condition(kube, "shop", "Ready"), message="a Ready condition")
    h.enqueue(redis_server.url, "default", 3)
    h.wait_for(lambda: h.replicas(kube, "shop-default") == 3, message="a scale-up")

    # A scale-down: the worker reports name one busy pod and two idle ones, which get deletion costs.
    h.create_busy_and_idle_pods(api)
    h.drain_into_busy_and_idle_pods(redis_server.client())
    h.wait_for(lambda: h.replicas(kube, "shop-default") == 1, timeout=15, message="a scale-down")

    # A queue removed from the spec, then a Deployment deleted by hand (put back after reading the pool).
    edit = {"spec": {"queues": [{"name": "default", "maxReplicas": 5}]}}
    api.request("PATCH", f"{pools}/shop", body=edit, content_type="application/merge-patch+json")
    h.wait_for(lambda: set(h.deployments(kube)) == {"shop-default"}, message="the mail queue's Deployment deleted")
    api.request("DELETE", f"/apis/apps/v1/namespaces/{h.NS}/deployments/shop-default")
    h.wait_for(lambda: h.events(kube, "DeploymentRestored"), message="the Deployment put back")

    # A pool left by the first release, with its kopf finalizer: the operator takes the finalizer off.
    legacy = h.pool_manifest("old", queues=[{"name": "old"}])
    legacy["metadata"]["finalizers"] = ["workerpool.dev/finalizer"]
    api.request("POST", pools, body=legacy)
    h.wait_for(lambda: not h.get_pool(kube, "old")["metadata"].get("finalizers"), message="the old finalizer gone")

    api.request("DELETE", f"{pools}/shop")
    api.request("DELETE", f"{pools}/old")
    h.wait_for(lambda: not kube.objects("workerpool.dev/v1alpha1/workerpools", h.NS), message="deletion")
    beat_and_flower_lifecycle(kube, api)

    calls = recorded(kube)
    assert check_requests(grants(chart), calls) == []
    requests = [r for r in (parse_request(m, u) for m, u in calls) if r.is_resource]
    used = {(r.verb, r.group_resource, r.namespace if is_lease(r) else None) for r in requests}
    unused = granted_permissions(grants(chart, discovery=False)) - used
    assert any(is_lease(r) for r in requests), "the run took the Lease"
    assert unused == set(), f"granted but never used in a recorded run: {sorted(unused, key=str)}"


def beat_and_flower_lifecycle(kube: KubeCluster, api: KubeApi) -> None:
    """A pool with beat and Flower: created, its Service deleted by hand (put back), then both taken out."""
    pools = f"/apis/workerpool.dev/v1alpha1/namespaces/{h.NS}/workerpools"
    manifest = h.pool_manifest("cron", queues=[{"name": "periodic"}])
    manifest["spec"]["beat"] = {}
    manifest["spec"]["flower"] = {"auth": {"basicFrom": {"secretKeyRef": {"name": "flower", "key": "users"}}}}
    api.request("POST", pools, body=manifest)
    h.wait_for(lambda: "cron-flower" in kube.objects("v1/services", h.NS), message="Flower's Service")
    h.wait_for(lambda: h.condition(kube, "cron", "BeatReady"), message="a BeatReady condition")
    api.request("DELETE", f"/api/v1/namespaces/{h.NS}/services/cron-flower")
    h.wait_for(lambda: h.events(kube, "ServiceRestored"), message="the Service put back")
    edit = {"spec": {"beat": None, "flower": None}}
    api.request("PATCH", f"{pools}/cron", body=edit, content_type="application/merge-patch+json")
    h.wait_for(lambda: not kube.objects("v1/services", h.NS), message="Flower's Service deleted")
    h.wait_for(lambda: set(h.deployments(kube)) == {"cron-periodic"}, message="beat's and Flower's Deployments deleted")
    api.request("DELETE", f"{pools}/cron")


def test_recorded_calls_of_beat_and_flower_are_allowed_and_use_every_service_grant(
    chart: helm_python.Chart, operator: RunningOperator, redis_server: RedisServer
) -> None:
    """Beat's and Flower's workloads within the rules; every grant on Services is used by a call really made
    (the whole chart's grants are checked by the lifecycle test above, which runs this pool too)."""
    kube = operator.cluster
    api = scene_api(kube)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis"}}
    secret["data"] = {"url": base64.b64encode(redis_server.url.encode()).decode()}
    api.request("POST", f"/api/v1/namespaces/{h.NS}/secrets", body=secret)
    beat_and_flower_lifecycle(kube, api)
    calls = recorded(kube)
    assert check_requests(grants(chart), calls) == []
    used = {(r.verb, r.group_resource, None) for r in (parse_request(m, u) for m, u in calls) if r.is_resource}
    granted = granted_permissions(grants(chart, discovery=False))
    services = {g for g in granted if g[1] == "core/services"}
    assert services and services - used == set()
    assert {("patch", "apps/deployments", None), ("delete", "apps/deployments", None)} <= used


@contextlib.contextmanager
def _run_operator(chart_args: list[str]) -> Iterator[list[BaseException]]:
    """The operator started as `workerpool-operator <chart args>` starts it: the settings from those arguments and
    the chart's environment, the start-up check of the cluster, then kopf in this process (in a thread) until the
    block ends. Yields the exceptions it raised (none, if all went well)."""
    settings = run_settings(build_parser().parse_args(chart_args))
    preflight.check_cluster(preflight.cluster_configuration(), settings.crd_wait)
    stop, raised = threading.Event(), []

    def operator() -> None:
        try:
            handlers.run_operator(settings, stop_flag=stop)
        except BaseException as error:  # surfaced to the test
            raised.append(error)

    thread = threading.Thread(target=operator, name="operator", daemon=True)
    thread.start()
    try:
        yield raised
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the operator did not stop"


def _wait_for_accepted(kube: KubeCluster, verb: str, group_resource: str, timeout: float = 20.0) -> None:
    """Until the operator made a ``verb`` of ``group_resource`` that the API accepted (a refused one changes
    nothing: it proves the attempt, not that the operator got what it needed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sent in kube.requests():
            if sent.headers.get("User-Agent") == TEST_AGENT or (kube.answer(sent) or 500) >= 300:
                continue
            request = parse_request(str(sent.method.value).upper(), str(sent.url.path_qs))
            if request.verb == verb and request.is_resource and request.group_resource == group_resource:
                return
        time.sleep(0.05)
    raise AssertionError(f"the API never accepted a {verb} of {group_resource} from the operator")


def _enforce(kube: KubeCluster, g: list[Grant]) -> list[ApiRequest]:
    """Make the emulator answer 403 to every request the grants do not allow, as an API server would."""
    refused: list[ApiRequest] = []

    def forbidden(request: kmock.Request) -> bool:
        if request.headers.get("User-Agent") == TEST_AGENT:
            return False
        parsed = parse_request(str(request.method.value), str(request.url.path_qs))
        if allows(g, parsed):
            return False
        refused.append(parsed)
        return True

    status = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403}
    assert kube.emulator is not None
    kube.emulator[forbidden] << kmock.Response(status=403, payload=status)  # type: ignore[attr-defined]
    return refused


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_operator_as_the_chart_runs_it_stays_within_the_rules(
    chart: helm_python.Chart, kube: KubeCluster, mode: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The operator as the chart runs it (two replicas' arguments, leader election through the Lease), on an
    emulator that enforces the rendered RBAC: it takes the Lease, watches pools, and nothing is refused."""
    monkeypatch.setenv("WORKERPOOL_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("POD_NAMESPACE", NAMESPACE)  # what the chart's Deployment sets
    values = NAMESPACED if mode == "namespaced" else {}
    manifests = render(chart, values)
    refused = _enforce(kube, grants_for(manifests, FULLNAME, NAMESPACE))
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["workerpool-operator"]
    args = [a for a in container["args"] if not a.startswith("--liveness")]  # no health server in a test
    caplog.set_level(logging.WARNING)
    with _run_operator(args) as raised:
        _wait_for_accepted(kube, "create", "coordination.k8s.io/leases")
        _wait_for_accepted(kube, "watch", "workerpool.dev/workerpools")
        assert kube.objects("coordination.k8s.io/v1/leases", NAMESPACE)[FULLNAME]["spec"]["holderIdentity"]
    assert raised == []
    assert [str(r) for r in refused] == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
