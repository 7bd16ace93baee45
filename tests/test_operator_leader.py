"""Two operator replicas on one API: one leader writes, the other stands by warm, and takes over when the leader is
killed or cut off. Each replica is a process of its own (SIGKILL is a lost node), electing through the emulator's
Lease API with short timings so each story takes seconds; bench/bench_failover.py measures the defaults.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.conftest import RedisServer
from tests.kube import KubeCluster
from tests.operator_helpers import (
    OperatorProcess,
    api,
    condition,
    create_pool,
    create_secret,
    enqueue,
    events,
    pool_manifest,
    replicas,
    request_identity,
    wait_for,
)
from workerpool_operator.kube.leader import micro_time

LEASE_NS, LEASE_NAME = "workerpool-system", "workerpool-operator"
LEASE = {
    "WORKERPOOL_OPERATOR_LEASE": f"{LEASE_NS}/{LEASE_NAME}",
    "WORKERPOOL_OPERATOR_LEASE_DURATION": "3",
    "WORKERPOOL_OPERATOR_RENEW_DEADLINE": "2",
    "WORKERPOOL_OPERATOR_RETRY_PERIOD": "0.5",
}
POLL = 0.5


def holder(kube: KubeCluster) -> str | None:
    lease = kube.objects("coordination.k8s.io/v1/leases", LEASE_NS).get(LEASE_NAME)
    return (lease or {}).get("spec", {}).get("holderIdentity") or None


def writes_by(kube: KubeCluster, since: float = 0.0) -> dict[str, list[str]]:
    """The write requests (anything but GET) each replica made, by identity, after ``since`` (request index)."""
    found: dict[str, list[str]] = {}
    for request in kube.requests()[int(since) :]:
        identity = request_identity(request)
        if identity is None:
            continue
        found.setdefault(identity, [])
        if str(request.method.value).upper() != "GET":
            found[identity].append(f"{request.method.value} {request.url.path}")
    return found


def scale_writes(kube: KubeCluster, deployment: str) -> list[tuple[str | None, int]]:
    """Every replica count the scaler wrote to a Deployment (its apply of the ``scale`` subresource) and the API
    server accepted, in order, with the replica that wrote it. (A refused write changes nothing on the emulator, as
    on a real server, but it is still in the request log.)"""
    return [
        (request_identity(request), request.data["spec"]["replicas"])
        for request in kube.requests()
        if request.name == deployment
        and request.subresource == "scale"
        and str(request.method.value).upper() == "PATCH"
        and isinstance(request.data, dict)
        and (kube.answer(request) or 500) < 300
    ]


@pytest.fixture
def two_replicas(kube: KubeCluster, redis_server: RedisServer, tmp_path: Path) -> Iterator[list[OperatorProcess]]:
    create_secret(kube, "redis", {"url": redis_server.url})
    queues: list[dict[str, Any]] = [{"name": "default", "concurrency": 1, "maxReplicas": 20}]
    create_pool(kube, pool_manifest("shop", queues=queues, scaling={"pollIntervalSeconds": POLL}))
    replicas_ = [OperatorProcess(kube, tmp_path / f"operator-{i}.log", **LEASE) for i in range(2)]
    try:
        wait_for(lambda: holder(kube), timeout=30, message="a leader")
        wait_for(lambda: len(writes_by(kube)) == 2, timeout=30, message="both replicas at the Lease")
        wait_for(lambda: (condition(kube, "shop", "Ready") or {}).get("status") == "True", message="Ready")
        yield replicas_
    finally:
        for replica in replicas_:
            replica.stop()


def test_one_replica_writes_and_a_killed_leader_is_replaced_within_a_lease(
    kube: KubeCluster, redis_server: RedisServer, two_replicas: list[OperatorProcess]
) -> None:
    enqueue(redis_server.url, "default", 3)
    wait_for(lambda: replicas(kube, "shop-default") == 3, message="the leader scales up")
    wait_for(lambda: events(kube, "Scaled"), message="its Event (posted after the scale)")
    leader = holder(kube)
    assert leader is not None
    seen = writes_by(kube)
    assert len(seen) == 2, f"both replicas talk to the API: {sorted(seen)}"
    standby = next(identity for identity in seen if identity != leader)
    # Both may have tried to create the Lease at the start (one got 409): that is the election, not a write.
    assert [w for w in seen[standby] if "/leases" not in w] == [], f"a standby writes nothing: {seen[standby]}"
    assert seen[leader], "the leader wrote the Deployment, the status and the Lease"

    killed = next(r for r in two_replicas if f"as {leader}" in r.output())
    killed.kill()  # a lost node: no release, no goodbye
    started = time.monotonic()
    enqueue(redis_server.url, "default", 4)  # the burst goes on: 7 tasks, 7 replicas
    wait_for(lambda: replicas(kube, "shop-default") == 7, timeout=30, message="the new leader scales up")
    took = time.monotonic() - started
    assert holder(kube) == standby
    # lease duration + one poll, and the slack of a loaded machine (two operators, the emulator, Redis, Celery)
    assert took < 3 + POLL + 5, f"failover took {took:.1f} s"

    # The first write is the count the Deployment was created with (0), taken by the scaler at creation.
    # (The emulator records a request's answer after storing its object: wait for the answers, then compare.)
    expected = [(leader, 0), (leader, 3), (standby, 7)]
    writes = wait_for(lambda: (w := scale_writes(kube, "shop-default")) and len(w) >= len(expected) and w, 5, "answers")
    assert writes == expected, "a decision applied twice, or reverted"
    wait_for(lambda: len(events(kube, "Scaled")) == 2, message="2 Scaled Events")
    scaled = [e["message"] for e in events(kube, "Scaled")]
    assert ["0 -> 3" in scaled[0], "3 -> 7" in scaled[1]] == [True, True], scaled


def test_a_partitioned_leader_stops_writing_before_the_standby_starts(
    kube: KubeCluster, redis_server: RedisServer, two_replicas: list[OperatorProcess]
) -> None:
    leader = holder(kube)
    assert leader is not None

    def cut_off(request: kmock.Request) -> bool:
        return request_identity(request) == leader

    unavailable = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "ServiceUnavailable"}
    assert kube.emulator is not None
    kube.emulator[cut_off] << kmock.Response(status=503, payload={**unavailable, "code": 503})  # type: ignore[attr-defined]
    cut_at = time.monotonic()
    enqueue(redis_server.url, "default", 2)
    new_leader = wait_for(lambda: holder(kube) not in (None, leader) and holder(kube), 30, "the standby takes over")
    taken_at, taken = time.monotonic(), len(kube.requests())
    wait_for(lambda: replicas(kube, "shop-default") == 2, timeout=30, message="the new leader scales up")
    # The cut-off leader may have tried the same scale in its renew deadline: refused, it changed nothing.
    # (0: the count the first leader created the Deployment with.)
    expected = [(leader, 0), (new_leader, 2)]
    writes = wait_for(lambda: (w := scale_writes(kube, "shop-default")) and len(w) >= len(expected) and w, 5, "answers")
    assert writes == expected, "the new leader scaled, and only it"

    assert taken_at - cut_at >= 3 - POLL, "the standby waited out the lease duration"
    old = next(r for r in two_replicas if f"as {leader}" in r.output())
    wait_for(lambda: "no longer the leader" in old.output(), timeout=10, message="the old leader steps down")
    assert "could not renew the Lease" in old.output()
    # It may have tried to write in the 2 s of its renew deadline (and got 503s); not once the standby led.
    assert writes_by(kube, since=taken).get(leader, []) == []


def test_run_says_it_stands_by_while_another_holds_the_lease_then_leads(
    kube: KubeCluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    """`workerpool-operator run` (no --standalone) never idles silently: a standby says whose the Lease is."""
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, pool_manifest("shop", scaling={"pollIntervalSeconds": POLL}))
    client = api(kube)
    spec = {"holderIdentity": "someone-else", "leaseDurationSeconds": 3, "renewTime": micro_time(time.time())}
    lease = client.create_lease(LEASE_NS, LEASE_NAME, spec, timeout=5)
    timings = ["--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.5"]
    argv = ["-m", "workerpool_operator.cli", "run", "--lease-namespace", LEASE_NS, *timings]
    operator = OperatorProcess(kube, tmp_path / "run.log", argv=argv)
    try:
        deadline = time.monotonic() + 6  # someone else renews for a while
        while time.monotonic() < deadline:
            lease = client.update_lease(lease, {**spec, "renewTime": micro_time(time.time())}, timeout=5)
            time.sleep(0.5)
        output = operator.output()
        assert f"standby: the Lease {LEASE_NS}/{LEASE_NAME} is held by someone-else" in output, output
        assert "became the leader" not in output
        assert [w for ws in writes_by(kube).values() for w in ws] == [], "a standby writes nothing"
        # Someone else is gone: after the lease duration, run takes over and serves the pool.
        wait_for(lambda: holder(kube) not in (None, "someone-else"), timeout=60, message="taken over")
        wait_for(lambda: (condition(kube, "shop", "Ready") or {}).get("status") == "True", timeout=60, message="Ready")
        assert "taking it over" in operator.output() and "became the leader" in operator.output()
    finally:
        operator.stop()
