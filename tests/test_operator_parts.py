"""Each part of the operator on its own: the pure plan without any API, then the reconciler, the reporter and the
pool service constructed directly (the emulator as the API, a list as the Event sink, no kopf)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import pytest

from tests.kube import KubeCluster
from tests.operator_helpers import NS, api, pool_manifest
from workerpool_operator.engine import Decision, QueueState, ScalingPolicy
from workerpool_operator.kube import conditions as cond
from workerpool_operator.kube.backend import KubeBackend
from workerpool_operator.kube.plan import PlanError, PoolPlan, plan, removed_deployments, secrets_named
from workerpool_operator.kube.pools import PoolService
from workerpool_operator.kube.reconcile import ApplyError, Reconciler
from workerpool_operator.kube.reporter import StatusReporter
from workerpool_operator.kube.secrets import SecretReader
from workerpool_operator.observation import QueueObservation, WorkerLoad
from workerpool_operator.scaling_loop import ScalingLoop
from workerpool_operator.scaling_types import PoolResult, QueueResult

URL = "redis://redis.apps.svc:6379/0"


def _pool(**spec: Any) -> dict[str, Any]:
    obj = pool_manifest("shop", queues=[{"name": "default", "maxReplicas": 5}, {"name": "mail", "minReplicas": 1}])
    obj["metadata"].update(uid="uid-1", generation=3)
    obj["spec"].update(spec)
    return obj


# --- the plan: pure ----------------------------------------------------------------------------------------


def test_a_plan_is_made_in_one_pass_from_the_object_and_its_secrets() -> None:
    made = plan(_pool(), {"redis": {"url": f"{URL}\n".encode()}})
    assert made.key == (NS, "shop") and (made.uid, made.generation) == ("uid-1", 3)
    assert made.broker.url == URL, "a Secret written from a file keeps its newline; the plan does not"
    assert made.queue_names == ["default", "mail"]
    assert made.deployment_names == {"default": "shop-default", "mail": "shop-mail"}
    assert made.bounds("default") == (0, 5) and made.bounds("mail") == (1, 10)
    assert made.queues["default"].interval == 0.5 and made.uses_secrets
    owner = made.deployments["mail"]["metadata"]["ownerReferences"][0]
    assert (owner["uid"], owner["controller"]) == ("uid-1", True)


def test_a_plans_manifests_cannot_be_changed_through_what_it_hands_out() -> None:
    """The plan keeps its manifests as text (kube/plan.py says why): each access is a new dict, and what the
    rendering said is what every later access gets."""
    made = plan(
        _pool(flower={"auth": {"basicFrom": {"secretKeyRef": {"name": "f", "key": "users"}}}}),
        {"redis": {"url": URL.encode()}},
    )
    handed = made.deployments["mail"]
    handed["spec"]["template"]["spec"]["containers"][0]["image"] = "changed"
    assert made.deployments["mail"]["spec"]["template"]["spec"]["containers"][0]["image"] != "changed"
    assert made.deployments.named("Deployment", "shop-mail") == "mail"
    assert made.components.named("Service", "shop-flower") == "flower-service"
    assert made.components.named("Deployment", "shop-flower-x") is None
    assert made.owned_names("Service") == {"shop-flower"}
    assert made == plan(
        _pool(flower={"auth": {"basicFrom": {"secretKeyRef": {"name": "f", "key": "users"}}}}),
        {"redis": {"url": URL.encode()}},
    )
    text = sum(len(json.dumps(made.deployments[queue], separators=(",", ":"))) for queue in made.deployments)
    assert made.deployments.stored_bytes < text / 2, "kept compressed: a manifest's keys repeat"


def test_the_secrets_a_pool_reads_each_once() -> None:
    from workerpool_operator.kube.plan import parse

    ca = {"secretKeyRef": {"name": "redis", "key": "ca"}}
    assert secrets_named(parse(_pool())) == ["redis"]
    assert secrets_named(
        parse(_pool(broker={"urlFrom": {"secretKeyRef": {"name": "redis", "key": "u"}}, "caFrom": ca}))
    ) == ["redis"]
    assert secrets_named(parse(_pool(broker={"url": "redis://r:6379/0"}))) == []


@pytest.mark.parametrize(
    ("secrets", "reason", "fragment", "retry"),
    [
        ({}, cond.REASON_SECRET_NOT_FOUND, "Secret apps/redis not found", True),
        ({"redis": {"other": b"x"}}, cond.REASON_SECRET_KEY_NOT_FOUND, "has no key 'url'", True),
        ({"redis": {"url": b"\xff"}}, cond.REASON_INVALID_BROKER_URL, "is not text", True),
        ({"redis": {"url": b"http://nope"}}, cond.REASON_INVALID_BROKER_URL, "invalid broker URL", True),
        ({"redis": {"url": b"  "}}, cond.REASON_INVALID_BROKER_URL, "empty", True),
    ],
)
def test_what_a_user_can_fix_is_a_plan_error_with_its_reason(
    secrets: dict[str, Any], reason: str, fragment: str, retry: bool
) -> None:
    with pytest.raises(PlanError) as error:
        plan(_pool(), secrets)
    assert error.value.problem.reason == reason and fragment in error.value.problem.message
    assert error.value.retry is retry


def test_an_invalid_spec_is_not_retried() -> None:
    bad = _pool()
    bad["spec"]["queues"][0]["concurrency"] = 0
    with pytest.raises(PlanError) as error:
        plan(bad, {"redis": {"url": URL.encode()}})
    assert error.value.problem.reason == cond.REASON_INVALID_SPEC and not error.value.retry


def test_removed_deployments_are_the_pools_own_that_the_plan_dropped() -> None:
    made = plan(_pool(), {"redis": {"url": URL.encode()}})

    def owned(name: str, pool: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": {"workerpool.dev/pool": pool}}}

    listed = [owned("shop-default", "shop"), owned("shop-old", "shop"), owned("shopx-old", "shopx")]
    assert [d["metadata"]["name"] for d in removed_deployments(listed, made)] == ["shop-old"]


# --- the parts with I/O, on the emulator ----------------------------------------------------------------------


def made_secrets() -> dict[str, Any]:
    return {"redis": {"url": URL.encode()}}


class Events(list[tuple[str, str, str]]):
    async def __call__(self, pool: Any, uid: str | None, type_: str, reason: str, message: str) -> None:
        self.append((type_, reason, message))


async def test_the_reconciler_applies_a_plan_and_refuses_what_the_api_refuses(kube: KubeCluster) -> None:
    client = api(kube)
    events = Events()
    reconciler = Reconciler(client, KubeBackend(client), events)
    # The pool exists: its Deployments' owner (else the garbage collector takes them, as a cluster's would).
    created = client.request("POST", f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools", body=_pool())
    made = plan(created, {"redis": {"url": URL.encode()}})
    assert await asyncio.wait_for(reconciler.apply(made), 30) == []
    live = kube.objects("apps/v1/deployments", NS)
    assert {n: d["spec"]["replicas"] for n, d in live.items()} == {"shop-default": 0, "shop-mail": 1}

    fewer = plan(
        {**created, "spec": {**created["spec"], "queues": [{"name": "mail", "minReplicas": 1}]}}, made_secrets()
    )
    assert await reconciler.apply(fewer) == ["default"]
    assert set(kube.objects("apps/v1/deployments", NS)) == {"shop-mail"}
    assert events == [("Normal", "QueueRemoved", "queue default: Deployment deleted")]

    refused = {"apiVersion": "v1", "kind": "Status", "code": 422, "message": "spec.template: Invalid value"}
    assert kube.emulator is not None
    kube.emulator["patch", "/apis/apps/v1/namespaces/apps/deployments/shop-mail"] << (lambda _: _respond(refused))  # type: ignore[attr-defined]
    before = kube.objects("apps/v1/deployments", NS)["shop-mail"]
    changed = plan(
        {**created, "spec": {**created["spec"], "queues": [{"name": "mail", "minReplicas": 1, "concurrency": 3}]}},
        made_secrets(),
    )
    with pytest.raises(ApplyError) as error:
        await reconciler.apply(changed)
    assert error.value.problem.reason == cond.REASON_APPLY_FAILED and "spec.template" in error.value.problem.message
    assert kube.objects("apps/v1/deployments", NS)["shop-mail"] == before, "a refused write changes nothing"


class Counted(list[tuple[str, str]]):
    """Every request a KubeApi sends, as (method, path)."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        sent = client.request

        def request(method: str, path: str, **kwargs: Any) -> Any:
            self.append((method, path))
            return sent(method, path, **kwargs)

        client.request = request


async def test_a_pool_never_applied_is_created_without_reads_or_lists(kube: KubeCluster) -> None:
    """A new pool's objects are applied as creations at once (no read finding each missing, no list of what its
    spec dropped): 6 writes for two queues where a pool applied before also sends 2 reads and 2 lists."""
    client = api(kube)
    sent = Counted(client)
    reconciler = Reconciler(client, KubeBackend(client), Events())
    created = client.request("POST", f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools", body=_pool())
    sent.clear()
    assert await reconciler.apply(plan(created, made_secrets()), fresh=True) == []
    live = kube.objects("apps/v1/deployments", NS)
    assert {n: d["spec"]["replicas"] for n, d in live.items()} == {"shop-default": 0, "shop-mail": 1}
    assert [method for method, _ in sent] == ["PATCH"] * 4, sent  # per Deployment: the apply, the scaler's apply

    other = api(kube)
    again = Counted(other)
    assert await Reconciler(other, KubeBackend(other), Events()).apply(plan(created, made_secrets())) == []
    assert sorted(method for method, _ in again) == ["GET"] * 4 + ["PATCH"] * 2, again  # 2 reads, 2 lists


async def test_a_fresh_creation_that_finds_its_deployment_there_reads_it_and_keeps_its_count(
    kube: KubeCluster,
) -> None:
    """The operator restarted before it wrote the pool's status: its Deployments are there, one scaled to 4 by the
    scaler. The creation's apply conflicts with the scaler's count (and changes nothing); the Deployment is read
    and updated as any other, its count kept. The one at its low bound is applied as it is."""
    client = api(kube)
    created = client.request("POST", f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools", body=_pool())
    made = plan(created, made_secrets())
    await Reconciler(client, KubeBackend(client), Events()).apply(made, fresh=True)
    client.apply_replicas(NS, "shop-default", 4)

    restarted = api(kube)
    sent = Counted(restarted)
    events = Events()
    assert await Reconciler(restarted, KubeBackend(restarted), events).apply(made, fresh=True) == []
    live = kube.objects("apps/v1/deployments", NS)
    assert {n: d["spec"]["replicas"] for n, d in live.items()} == {"shop-default": 4, "shop-mail": 1}
    reads = [path for method, path in sent if method == "GET"]
    assert reads == [f"/apis/apps/v1/namespaces/{NS}/deployments/shop-default"], sent
    assert events == [], "a conflict of the creation is not a field taken back"


def _respond(status: dict[str, Any]) -> Any:
    import kmock

    return kmock.Response(status=status["code"], payload=status)  # type: ignore[attr-defined]


async def test_the_reporter_writes_only_what_changed_and_only_when_it_may(kube: KubeCluster) -> None:
    client = api(kube)
    client.request("POST", f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools", body=_pool())
    may_write = [False]
    events, clock = Events(), [1_800_000_000.0]
    reporter = StatusReporter(
        client, KubeBackend(client), events, lambda: may_write[0], clock=lambda: clock[0], figures_refresh=30
    )
    made = plan(_pool(), {"redis": {"url": URL.encode()}})

    facts = _facts(made, made.queue_names)

    observation = QueueObservation("default", backlog=4, replicas=1)
    decision = Decision(2, "scale up: backlog 4", current_replicas=1, demand=4)
    queue = QueueResult("default", observation, decision, QueueState(), scaled_from=1)
    result = PoolResult((NS, "shop"), None, (queue,), observed_at=clock[0], poll_duration=0.01)

    await reporter.report(result, facts)
    assert "status" not in kube.objects("workerpool.dev/v1alpha1/workerpools", NS)["shop"], "a standby writes nothing"
    may_write[0] = True
    await reporter.report(result, facts)
    status = kube.objects("workerpool.dev/v1alpha1/workerpools", NS)["shop"]["status"]
    assert status["queues"][0]["replicas"] == 2 and status["queues"][0]["lastScaleReason"] == "scale up: backlog 4"
    assert status["conditions"][0]["status"] == "True" and status["observedGeneration"] == 3
    assert ("Normal", "Scaled", "queue default: 1 -> 2 replicas (scale up: backlog 4)") in events

    writes = client.writes
    held = QueueResult("default", observation, decision._replace(desired_replicas=1), QueueState())
    steady = PoolResult((NS, "shop"), None, (held,), clock[0], 0.01)
    await reporter.report(steady, facts)
    assert client.writes == writes + 1, "a change of replicas is state: written at once"
    await reporter.report(steady, facts)
    assert client.writes == writes + 1, "nothing changed: nothing written"
    assert reporter.persisted_states((NS, "shop"), ["default"]) == {"default": QueueState()}


async def test_a_pool_at_rest_is_reported_once_and_anything_new_in_full(
    kube: KubeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll that brings what the last one did (the time of the engine's latest recommendation apart, which is
    never written on its own) builds no status: at 10,000 pools that was most of a tick's CPU. Anything new (the
    Deployment's ready pods, a backlog) is reported in full, and a figure held back until the refresh is not lost."""
    from workerpool_operator.kube.status import build_status as real_build

    client = api(kube)
    client.request("POST", f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools", body=_pool())
    clock = [1_800_000_000.0]
    backend = KubeBackend(client)
    reporter = StatusReporter(client, backend, Events(), lambda: True, clock=lambda: clock[0], figures_refresh=30)
    made = plan(_pool(), {"redis": {"url": URL.encode()}})
    backend.set_names((NS, "shop"), made.deployment_names)
    built: list[int] = []

    def counting_build(*args: Any, **kwargs: Any) -> dict[str, Any]:
        built.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr("workerpool_operator.kube.reporter.build_status", counting_build)

    facts = _facts(made)

    def poll(in_flight: int = 0) -> PoolResult:
        observation = QueueObservation("default", in_flight=in_flight, replicas=1)
        decision = Decision(1, "hold", current_replicas=1, demand=in_flight)
        state = QueueState(recommendations=((clock[0], 1),))  # its time moves with every poll
        return PoolResult((NS, "shop"), None, (QueueResult("default", observation, decision, state),), clock[0], 0.01)

    def status() -> dict[str, Any]:
        found: dict[str, Any] = kube.objects("workerpool.dev/v1alpha1/workerpools", NS)["shop"]["status"]
        return found

    backend.observe_deployment(
        {"metadata": {"namespace": NS, "name": "shop-default", "resourceVersion": "5"}, "spec": {"replicas": 1}}
    )
    await reporter.report(poll(), facts)
    writes = client.writes
    await reporter.report(poll(), facts)  # the first at rest: built, found equal, remembered
    for _ in range(3):
        clock[0] += 5
        await reporter.report(poll(), facts)
    assert len(built) == 2 and client.writes == writes, "at rest: built twice in all, never written"

    backend.observe_deployment(  # its pod became ready: state, written at once
        {
            "metadata": {"namespace": NS, "name": "shop-default", "resourceVersion": "6"},
            "spec": {"replicas": 1},
            "status": {"readyReplicas": 1},
        }
    )
    clock[0] += 5
    await reporter.report(poll(), facts)
    assert client.writes == writes + 1 and status()["queues"][0]["readyReplicas"] == 1

    writes = client.writes
    clock[0] += 5
    await reporter.report(poll(in_flight=2), facts)  # a figure: held back until the refresh
    assert client.writes == writes, "a figure alone waits for the refresh"
    clock[0] += 5
    await reporter.report(poll(in_flight=2), facts)  # the same poll again, but a figure is still to be written
    clock[0] += 30
    await reporter.report(poll(in_flight=2), facts)
    assert client.writes == writes + 1 and status()["queues"][0]["inFlight"] == 2, "and is written then"


async def test_the_scaling_loops_reports_write_the_status_in_the_background(kube: KubeCluster) -> None:
    """The loop reports pools one after the other: a report returns before its status write is done (the tick does
    not wait an API round trip per pool), the write lands, and one that failed is written again at the next poll."""
    import threading

    client = api(kube)
    client.request("POST", f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools", body=_pool())
    gate, failures = threading.Event(), [1]
    real_patch = client.patch_pool_status

    def patch(namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        assert gate.wait(10)
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("the API server went away")
        return real_patch(namespace, name, body)

    client.patch_pool_status = patch  # type: ignore[method-assign,assignment]
    clock = [1_800_000_000.0]
    reporter = StatusReporter(client, KubeBackend(client), Events(), lambda: True, clock=lambda: clock[0])
    made = plan(_pool(), {"redis": {"url": URL.encode()}})
    facts = _facts(made)
    observation = QueueObservation("default", replicas=0)
    result = PoolResult(
        (NS, "shop"),
        None,
        (QueueResult("default", observation, Decision(0, "idle", current_replicas=0), QueueState()),),
        clock[0],
        0.01,
    )

    def status() -> dict[str, Any] | None:
        found: dict[str, Any] | None = kube.objects("workerpool.dev/v1alpha1/workerpools", NS)["shop"].get("status")
        return found

    await reporter.report(result, facts, wait=False)
    assert status() is None, "returned before the write"
    gate.set()
    await reporter.sent()
    assert status() is None, "the write failed"
    clock[0] += 5
    await reporter.report(dataclasses.replace(result, observed_at=clock[0]), facts, wait=False)
    await reporter.sent()
    found = status()
    assert found is not None and found["conditions"][0]["type"] == "Ready", "written again at the next poll"

    # A write that must land (a problem: the pool leaves the loop, no later poll) while one is on its way: it waits
    # for that one, and lands after it.
    gate.clear()
    clock[0] += 5
    facts.problem = cond.Problem("BrokerSecretMissing", "first")
    await reporter.report(dataclasses.replace(result, observed_at=clock[0]), facts, wait=False)
    facts.problem = cond.Problem("BrokerSecretMissing", "second")
    must = asyncio.create_task(reporter.write(facts))
    await asyncio.sleep(0.2)
    assert not must.done(), "waits for the write on its way"
    gate.set()
    assert await must
    await reporter.sent()
    found = status()
    assert found is not None and found["conditions"][0]["message"] == "second"


def _facts(made: PoolPlan, queue_names: list[str] | None = None) -> Any:
    """What the reporter needs to know of the test pool besides a poll (``reporter.PoolFacts``)."""
    names = queue_names if queue_names is not None else ["default"]

    class Facts:
        key, uid, generation, queue_names, problem = (NS, "shop"), "uid-1", 3, names, None
        broker_label = made.broker.redacted_url
        beat_deployment: str | None = None
        beat_duplicates: tuple[str, ...] = ()
        targets: dict[str, str] = {}
        shared_queues: dict[str, tuple[str, ...]] = {}
        versions = made.versions

        def bounds(self, queue: str) -> tuple[int, int] | None:
            return made.bounds(queue)

        def shadow(self, queue: str) -> bool:
            return False

        def drains(self, queue: str) -> bool:
            return True

        def policy(self, queue: str) -> ScalingPolicy | None:
            return made.queues[queue].policy

    return Facts()


async def test_a_new_leader_goes_on_with_a_broken_target_wait_without_a_second_warning(kube: KubeCluster) -> None:
    """The leader posts the Warning once the oldest task has been above the target for longer than a start-up
    delay, and writes since when; a new leader reads that from the status it saw, keeps the condition (and its
    transition time) and posts no second Warning, only the Normal Event once the wait is back within the target."""
    client = api(kube)
    manifest = _pool()
    manifest["spec"]["queues"][0]["scaling"] = {"targetWaitSeconds": 10, "startupSeconds": 5}
    client.request("POST", f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools", body=manifest)
    made = plan(manifest, made_secrets())
    clock = [1_800_000_000.0]

    facts = _facts(made, made.queue_names)

    def poll(age: float | None) -> PoolResult:
        workers = tuple(WorkerLoad(f"w{number}", running=2, concurrency=2) for number in range(5))
        seen = QueueObservation("default", backlog=30 if age else 0, workers=workers, oldest_age=age, replicas=5)
        queue = QueueResult("default", seen, Decision(5, "hold 5", current_replicas=5), QueueState())
        idle = QueueResult(
            "mail", QueueObservation("mail", replicas=1), Decision(1, "steady", current_replicas=1), QueueState()
        )
        return PoolResult((NS, "shop"), None, (queue, idle), observed_at=clock[0], poll_duration=0.01)

    def status() -> dict[str, Any]:
        found: dict[str, Any] = kube.objects("workerpool.dev/v1alpha1/workerpools", NS)["shop"]["status"]
        return found

    leader_events = Events()
    leader = StatusReporter(client, KubeBackend(client), leader_events, lambda: True, clock=lambda: clock[0])
    for age in (4.0, 12.0, 18.0):  # above the target since 2 s before the second poll, broken 6 s later
        await leader.report(poll(age), facts)
        clock[0] += 6
    assert [(t, r) for t, r, _ in leader_events if r.startswith("Wait")] == [("Warning", "WaitAboveTarget")]
    broken = cond.condition(status()["conditions"], "WaitsWithinTarget")
    assert broken is not None and (broken["status"], broken["reason"]) == ("False", "MaxReplicasReached")
    assert status()["queues"][0]["waitAboveTargetSince"] == "2027-01-15T08:00:04Z"

    follower_events = Events()
    follower = StatusReporter(client, KubeBackend(client), follower_events, lambda: True, clock=lambda: clock[0])
    follower.seen((NS, "shop"), kube.objects("workerpool.dev/v1alpha1/workerpools", NS)["shop"]["status"])
    await follower.report(poll(24.0), facts)
    assert [r for _, r, _ in follower_events if r.startswith("Wait")] == [], "no second Warning"
    still = cond.condition(status()["conditions"], "WaitsWithinTarget")
    assert still is not None and (still["status"], still["lastTransitionTime"]) == (
        "False",
        broken["lastTransitionTime"],
    )
    clock[0] += 2
    await follower.report(poll(None), facts)
    assert [(t, r) for t, r, _ in follower_events] == [("Normal", "WaitWithinTarget")]
    kept = cond.condition(status()["conditions"], "WaitsWithinTarget")
    assert kept is not None and (kept["status"], kept["reason"]) == ("True", "WithinTarget")
    assert "waitAboveTargetSince" not in status()["queues"][0]


async def test_the_pool_service_serves_only_while_it_may_write(kube: KubeCluster) -> None:
    client = api(kube)
    client.request("POST", f"/api/v1/namespaces/{NS}/secrets", body=_secret())
    created = client.request("POST", f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools", body=_pool())
    backend, events, may_write = KubeBackend(client), Events(), [False]

    async def on_result(result: PoolResult) -> None:
        return None

    loop = ScalingLoop(backend, on_result, _NoObserver(), _NoObserver())
    reporter = StatusReporter(client, backend, events, lambda: may_write[0])
    service = PoolService(
        api=client,
        loop=loop,
        reconciler=Reconciler(client, backend, events),
        reporter=reporter,
        secrets=SecretReader(client),
        events=events,
        may_write=lambda: may_write[0],
    )
    await service.pool_changed("ADDED", created)
    assert service.records[(NS, "shop")].plan is not None, "a standby plans"
    assert loop.registered() == [] and not kube.objects("apps/v1/deployments", NS), "and writes nothing"

    may_write[0] = True
    await service.start_writing()
    assert loop.registered() == [(NS, "shop")]
    assert set(kube.objects("apps/v1/deployments", NS)) == {"shop-default", "shop-mail"}, "a new generation applied"
    await service.stop_writing()
    assert loop.registered() == []

    await service.pool_changed("DELETED", created)
    assert service.records == {}


async def test_pools_arriving_together_are_applied_a_few_at_a_time(kube: KubeCluster) -> None:
    """At start-up the watch hands every pool over at once: they are applied APPLIES_AT_ONCE at a time, each done
    before the next starts, so the first pools are served early instead of all at the end."""
    from workerpool_operator.kube import pools as pools_module

    client = api(kube)
    client.request("POST", f"/api/v1/namespaces/{NS}/secrets", body=_secret())
    backend, events = KubeBackend(client), Events()
    reconciler = Reconciler(client, backend, events)
    at_once, most = [0], [0]
    real_apply = reconciler.apply

    async def counting_apply(made: PoolPlan, *, fresh: bool = False) -> list[str]:
        at_once[0] += 1
        most[0] = max(most[0], at_once[0])
        try:
            return await real_apply(made, fresh=fresh)
        finally:
            at_once[0] -= 1

    reconciler.apply = counting_apply  # type: ignore[method-assign,assignment]

    async def on_result(result: PoolResult) -> None:
        return None

    service = PoolService(
        api=client,
        loop=ScalingLoop(backend, on_result, _NoObserver(), _NoObserver()),
        reconciler=reconciler,
        reporter=StatusReporter(client, backend, events, lambda: True),
        secrets=SecretReader(client),
        events=events,
        may_write=lambda: True,
    )
    count = pools_module.APPLIES_AT_ONCE * 2 + 1
    created = []
    for number in range(count):
        body = _pool()
        body["metadata"] = {"name": f"shop{number}", "namespace": NS}
        created.append(client.request("POST", f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools", body=body))
    await asyncio.gather(*(service.pool_changed("ADDED", body) for body in created))
    assert most[0] == pools_module.APPLIES_AT_ONCE, "never more at once, and that many"
    assert all(record.plan is not None and record.problem is None for record in service.records.values())
    assert len(kube.objects("apps/v1/deployments", NS)) == 2 * count


async def test_reporting_many_pools_lets_the_event_loop_run_between_slices(kube: KubeCluster) -> None:
    """The scaling loop hands the service every pool's result in turn; reporting one rarely waits for anything, so
    without a pause now and then 10,000 reports would hold the event loop for their whole length."""
    from workerpool_operator.kube.pools import REPORTS_BETWEEN_YIELDS

    client = api(kube)
    backend, events = KubeBackend(client), Events()

    async def on_result(result: PoolResult) -> None:
        return None

    loop = ScalingLoop(backend, on_result, _NoObserver(), _NoObserver())
    service = PoolService(
        api=client,
        loop=loop,
        reconciler=Reconciler(client, backend, events),
        reporter=StatusReporter(client, backend, events, lambda: True),
        secrets=SecretReader(client),
        events=events,
        may_write=lambda: True,
    )
    ran: list[int] = []
    asyncio.get_running_loop().call_soon(lambda: ran.append(len(ran)))
    result = PoolResult(pool=(NS, "unknown"), broker_error=None, queues=(), observed_at=0.0, poll_duration=0.0)
    for _ in range(REPORTS_BETWEEN_YIELDS - 1):
        await service.report(result)
    assert ran == [], "no pause yet: nothing else ran"
    await service.report(result)
    assert ran == [0], "the event loop ran what waited"


def _secret() -> dict[str, Any]:
    import base64

    return {"metadata": {"name": "redis", "namespace": NS}, "data": {"url": base64.b64encode(URL.encode()).decode()}}


class _NoObserver:
    async def observe(
        self,
        wanted: Any,
        timeout: float,  # noqa: ASYNC109
        beats: Any = None,
        aged: Any = None,
    ) -> dict[Any, Any]:
        return {}

    async def forget(self, keep: Any = ()) -> None:
        return None

    async def send_drains(self, *args: Any) -> None:
        return None


async def test_drift_repair_skips_the_version_its_own_apply_answered_with(
    kube: KubeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch event of the version our apply returned is not compared again (every manifest field was ours);
    the scaler's version is, and a hand edit after our apply is still found and applied again."""
    from workerpool_operator.kube import drift as drift_module

    client = api(kube)
    backend, events = KubeBackend(client), Events()
    reconciler = Reconciler(client, backend, events)
    created = client.request("POST", f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools", body=_pool())
    made = plan(created, made_secrets())
    await reconciler.apply_object(made, made.deployments["mail"], bounds=made.bounds("mail"), fresh=True)
    scaled = kube.objects("apps/v1/deployments", NS)["shop-mail"]  # the creation's apply, then the scaler's
    compared: list[str] = []
    real_edits = drift_module.edits

    def counting_edits(obj: Mapping[str, Any], manifest: Mapping[str, Any]) -> list[str]:
        compared.append(str(obj["metadata"]["resourceVersion"]))
        return real_edits(obj, manifest)

    monkeypatch.setattr(drift_module, "edits", counting_edits)
    repair = drift_module.DriftRepair(client, backend, events, reconciler, lambda key: changed, lambda: True)
    changed = plan(
        {**created, "spec": {**created["spec"], "queues": [{"name": "mail", "minReplicas": 1, "concurrency": 3}]}},
        made_secrets(),
    )
    applied = await reconciler.apply_object(changed, changed.deployments["mail"], bounds=changed.bounds("mail"))
    assert int(applied["metadata"]["resourceVersion"]) > int(scaled["metadata"]["resourceVersion"])
    await repair.deployment_changed("MODIFIED", scaled)  # older than what the cache knows: skipped, as before
    await repair.deployment_changed("MODIFIED", applied)
    assert compared == [], "the apply's own answer is not compared again"

    edited = client.merge_patch(
        f"/apis/apps/v1/namespaces/{NS}/deployments/shop-mail", {"spec": {"revisionHistoryLimit": 7}}
    )
    assert backend.cached(NS, "shop-mail").applied  # type: ignore[union-attr]
    await repair.deployment_changed("MODIFIED", edited)
    assert compared == [edited["metadata"]["resourceVersion"]]
    assert [reason for _, reason, _ in events] == ["DeploymentRestored"], events
    assert kube.objects("apps/v1/deployments", NS)["shop-mail"]["spec"]["revisionHistoryLimit"] != 7


def test_the_api_client_keeps_a_connection_for_each_thread_of_api_calls(
    kube: KubeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """API calls run in API_THREADS threads at once (kube/handlers.py); with fewer pooled connections than that,
    urllib3 opens a connection for each call over the pool's size and throws it away after."""
    from workerpool_operator.kube.api import API_THREADS, KubeApi

    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    client = KubeApi()
    try:
        pool = client._client.rest_client.pool_manager.connection_pool_kw
        assert pool["maxsize"] == API_THREADS
    finally:
        client.close()
