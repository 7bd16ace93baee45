"""The pure parts of adopting what users run: the plan of a pool naming Deployments and groups, the status a
Shadow queue, a scale target and a group get, and the conditions about them (issue 24)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube import KubeCluster
from tests.operator_helpers import NS, api, pool_manifest
from workerpool_operator.engine import Decision, QueueState
from workerpool_operator.engine.execute import Actions
from workerpool_operator.kube import conditions as cond
from workerpool_operator.kube.backend import KubeBackend
from workerpool_operator.kube.plan import PlanError, plan
from workerpool_operator.kube.status import QueueFacts, build_status, queue_figures, write_needed
from workerpool_operator.observation import QueueObservation, WorkerLoad
from workerpool_operator.scaling_types import QueueResult
from workerpool_operator.spec import WorkerPool
from workerpool_operator.worker_env import worker_environment

URL = {"redis": {"url": b"redis://redis:6379/0"}}


def adopting(*queues: dict[str, Any], template: bool = False) -> dict[str, Any]:
    manifest = pool_manifest("shop", queues=list(queues), scaling={"mode": "Shadow"})
    manifest["metadata"]["uid"] = "uid-1"
    if not template:
        del manifest["spec"]["template"]
    return manifest


def test_a_scale_target_is_planned_not_rendered() -> None:
    made = plan(
        adopting(
            {"name": "emails", "scaleTargetRef": {"name": "shop-mailer"}},
            {"name": "spare", "celeryQueues": ["low", "emails"], "scaleTargetRef": {"name": "shop-spare"}},
        ),
        URL,
    )
    assert len(made.deployments) == 0 and made.targets == {"emails": "shop-mailer", "spare": "shop-spare"}
    assert made.deployment_names == {"emails": "shop-mailer", "spare": "shop-spare"}
    assert made.owned_names("Deployment") == {"shop-mailer", "shop-spare"}, "never deleted as left over"
    assert made.queues["spare"].celery_queues == ("low", "emails") and made.queues["emails"].shadow
    assert made.shadow("spare") and not made.shadow("nope")
    assert made.shared == {}, "emails counts for the group of that name only"


def test_a_scale_target_may_not_be_a_deployment_the_pool_renders() -> None:
    queues = ({"name": "emails"}, {"name": "spare", "scaleTargetRef": {"name": "shop-emails"}})
    with pytest.raises(PlanError) as raised:
        plan(adopting(*queues, template=True), URL)
    assert raised.value.problem.reason == cond.REASON_INVALID_SPEC and not raised.value.retry
    assert "shop-emails, which this pool renders for queue emails" in raised.value.problem.message


def test_two_groups_counting_one_queue_are_planned_as_shared() -> None:
    queues = ({"name": "a", "celeryQueues": ["a", "low"]}, {"name": "b", "celeryQueues": ["b", "low"]})
    made = plan(adopting(*queues, template=True), URL)
    assert made.shared == {"low": ("a", "b")}
    env = {e["name"]: e.get("value") for e in made.deployments["a"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WORKERPOOL_QUEUES"] == "a,low"


def test_a_pool_without_template_still_has_a_workers_environment_for_local_runs() -> None:
    pool = WorkerPool.from_object(adopting({"name": "emails", "scaleTargetRef": {"name": "shop-mailer"}}))
    env = {e["name"]: e.get("value") for e in worker_environment(pool, pool.spec.queues[0])}
    assert env["WORKERPOOL_QUEUES"] == "emails" and "WORKERPOOL_SOFT_SHUTDOWN_TIMEOUT" in env
    assert pool.spec.grace_seconds == 30, "Kubernetes' default, with no template to say otherwise"


def result(workers: int = 0, *, shadow: Actions | None = None, ok: bool = True, **obs: Any) -> QueueResult:
    loads = tuple(WorkerLoad(f"w{i}") for i in range(workers))
    observation = QueueObservation("spare", workers=loads, replicas=2, **obs)
    if not ok:
        observation = QueueObservation("spare", error="down")
    decision = Decision(5, "scale up: backlog 9", current_replicas=2, demand=9)
    return QueueResult("spare", observation, decision, QueueState(), shadow=shadow)


def test_how_a_scale_down_picks_its_pods_is_said_from_what_reports() -> None:
    assert queue_figures(result(2), 2).scale_down == "Drain"
    assert queue_figures(result(2), 2, facts=QueueFacts(drains=False)).scale_down == "IdlestFirst"
    assert queue_figures(result(0), 2).scale_down == "ReplicaSet", "ready pods, no report: the ReplicaSet picks"
    assert queue_figures(result(0), 0).scale_down is None, "no pod ready: cannot tell"
    assert queue_figures(result(ok=False), 2).scale_down is None


def test_a_shadow_queue_shows_what_it_would_set_beside_what_the_workload_has() -> None:
    backlogs = (("low", 9, True), ("normal", 4, False))
    shadow = result(1, shadow=Actions(scale_to=5), backlogs=backlogs, backlog=9)
    facts = QueueFacts(shadow=True, would_scale=True, scale_target="shop-spare")
    figures = {"spare": queue_figures(shadow, 1, facts=facts)}
    status = build_status(None, generation=1, queue_names=["spare"], conditions=[], figures=figures, now=0.0)
    (entry,) = status["queues"]
    assert (entry["replicas"], entry["desiredReplicas"], entry["mode"]) == (2, 5, "Shadow")
    assert entry["wouldScaleReason"] == "scale up: backlog 9" and "lastScaleTime" not in entry
    assert entry["scaleTarget"] == "shop-spare" and entry["scaleDown"] == "Drain"
    assert entry["celeryQueues"] == [
        {"name": "low", "backlog": 9, "counted": True},
        {"name": "normal", "backlog": 4, "counted": False},
    ]

    moved = (("low", 30, True), ("normal", 1, False))
    same = QueueFacts(shadow=True, scale_target="shop-spare")
    again = {"spare": queue_figures(result(1, backlogs=moved, backlog=30), 1, facts=same)}
    later = build_status(status, generation=1, queue_names=["spare"], conditions=[], figures=again, now=5.0)
    assert later["queues"][0]["wouldScaleTime"] == entry["wouldScaleTime"], "only a change of the count moves it"
    assert not write_needed(status, later, seconds_since_write=5.0), "a group's backlogs are figures"
    assert write_needed(status, later, seconds_since_write=60.0)

    active = {"spare": queue_figures(result(1), 1, facts=QueueFacts(scale_target="shop-spare"))}
    switched = build_status(later, generation=2, queue_names=["spare"], conditions=[], figures=active, now=9.0)
    assert not {"mode", "wouldScaleTime", "wouldScaleReason"} & set(switched["queues"][0])
    assert write_needed(later, switched, seconds_since_write=0.0)


def test_workload_conditions_say_what_is_missing_contested_shared_and_shadowed() -> None:
    ready = cond.Condition(cond.READY, "True", cond.REASON_SCALING)
    same, none = cond.workload_conditions(ready, cond.Workloads(targets={}, queue_count=1))
    assert (same, none) == (ready, [])

    workloads = cond.Workloads(
        targets={"emails": "shop-mailer", "spare": "shop-spare"},
        missing={"spare"},
        contested={"emails": ("shop-mailer", ("kube-controller-manager",))},
        shared={"low": ("a", "b")},
        queue_count=2,
    )
    not_ready, found = cond.workload_conditions(ready, workloads)
    assert (not_ready.status, not_ready.reason) == ("False", cond.REASON_SCALE_TARGET_NOT_FOUND)
    by_type = {c.type: c for c in found}
    assert by_type[cond.SCALE_TARGETS_FOUND].status == "False"
    assert "queue spare: Deployment shop-spare not found" in by_type[cond.SCALE_TARGETS_FOUND].message
    contested = by_type[cond.REPLICAS_CONTESTED]
    assert contested.reason == cond.REASON_OTHER_MANAGER and "written by kube-controller-manager" in contested.message
    assert "Celery queue low is counted by groups a and b" in by_type[cond.CELERY_QUEUES_SHARED].message

    shadow = cond.Workloads(targets={"emails": "shop-mailer"}, shadow=["emails"], queue_count=1)
    shown, (found_one,) = cond.workload_conditions(ready, shadow)
    assert (shown.status, shown.reason) == ("True", cond.REASON_SHADOW) and "every queue" in shown.message
    assert found_one.status == "True" and found_one.type == cond.SCALE_TARGETS_FOUND
    broken = cond.Condition(cond.READY, "False", cond.REASON_REDIS_UNREACHABLE)
    assert cond.workload_conditions(broken, shadow)[0] == broken, "a broken pool is not called Shadow"


def scale_target(replicas: int, version: int, *managers: tuple[str, str]) -> dict[str, Any]:
    """A scale target as the watch delivers it, with who holds ``spec.replicas`` (manager, subresource)."""
    entries: list[dict[str, Any]] = [
        {
            "manager": m,
            "operation": "Apply" if m.startswith("workerpool") else "Update",
            "subresource": sub,
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        }
        for m, sub in managers
    ]
    meta = {"namespace": NS, "name": "shop-mailer", "resourceVersion": str(version), "managedFields": entries}
    return {"metadata": meta, "spec": {"replicas": replicas}}


def test_a_contest_is_a_manager_taking_the_count_from_the_scaler_remembered_for_a_while() -> None:
    clock = [1000.0]
    backend = KubeBackend(None, clock=lambda: clock[0])  # type: ignore[arg-type]  # the cache needs no API
    backend.set_names(("apps", "shop"), {"mail": "shop-mailer"}, ["shop-mailer"])
    backend.observe_deployment(scale_target(2, 1, ("kubectl-client-side-apply", "")))
    assert backend.contested(NS, "shop-mailer") == (), "held before the scaler ever did: no contest"
    scaler = ("workerpool-operator-scaler", "scale")
    backend.observe_deployment(scale_target(2, 2, scaler, ("kubectl-client-side-apply", "")))
    assert backend.contested(NS, "shop-mailer") == (), "the same count, shared: no contest"
    backend.observe_deployment(scale_target(3, 3, scaler))
    backend.observe_deployment(scale_target(5, 4, ("kube-controller-manager", "scale")))
    assert backend.contested(NS, "shop-mailer") == ("kube-controller-manager",), "taken from the scaler"
    backend.observe_deployment(scale_target(3, 5, scaler))  # the operator's next write takes it back
    assert backend.contested(NS, "shop-mailer") == ("kube-controller-manager",), "still said: it fights"
    clock[0] += 301.0
    assert backend.contested(NS, "shop-mailer") == (), "forgotten five minutes after its last write"


async def test_a_missing_scale_target_is_read_once_until_the_watch_sees_it(kube: KubeCluster) -> None:
    client = api(kube)
    backend = KubeBackend(client)
    backend.set_names(("apps", "shop"), {"mail": "shop-mailer"}, ["shop-mailer"])
    assert backend.is_target(NS, "shop-mailer") and not backend.is_target(NS, "other")
    for _ in range(3):
        assert await backend.current_replicas(("apps", "shop"), "mail") is None
    assert backend.missing(NS, "shop-mailer")
    reads = sum(1 for r in kube.requests() if str(r.method) == "method.GET" and r.name == "shop-mailer")
    assert reads == 1, "one read, then the watch's word"
    backend.set_names(("apps", "shop"), {"mail": "shop-mailer"}, ["shop-mailer"])  # served again: still missing
    assert backend.missing(NS, "shop-mailer")
    backend.observe_deployment(scale_target(2, 7, ("kubectl-client-side-apply", "")))
    assert not backend.missing(NS, "shop-mailer")
    assert await backend.current_replicas(("apps", "shop"), "mail") == 2
    backend.forget(("apps", "shop"))
    assert not backend.is_target(NS, "shop-mailer")
