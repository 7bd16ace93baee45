"""The Lease loop on its own: two candidates on the emulator's real Lease API, with a clock the test moves.

The emulator refuses an update carrying a stale resourceVersion (409), as an API server does, so two candidates
racing for the Lease are decided the way a cluster decides them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from tests.kube import KubeCluster
from tests.operator_helpers import api
from workerpool_operator.kube.api import KubeApi
from workerpool_operator.kube.leader import LeaseConfig, LeaseElector

NS, NAME = "workerpool-system", "workerpool-operator"


@dataclass
class Candidate:
    elector: LeaseElector
    transitions: list[str] = field(default_factory=list)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def candidate(client: KubeApi, identity: str, clock: Clock) -> Candidate:
    config = LeaseConfig(NS, NAME, identity, lease_duration=8.0, renew_deadline=6.0, retry_period=2.0)
    made = Candidate(None)  # type: ignore[arg-type]

    async def started() -> None:
        made.transitions.append("started")

    async def stopped() -> None:
        made.transitions.append("stopped")

    made.elector = LeaseElector(client, config, on_started=started, on_stopped=stopped, monotonic=clock)
    return made


def holder(kube: KubeCluster) -> str | None:
    lease = kube.objects("coordination.k8s.io/v1/leases", NS).get(NAME)
    return None if lease is None else lease["spec"].get("holderIdentity")


async def test_one_leader_a_standby_and_a_takeover_after_the_lease_duration(kube: KubeCluster) -> None:
    clock = Clock()
    a, b = candidate(api(kube), "a", clock), candidate(api(kube), "b", clock)
    await a.elector.step()
    await b.elector.step()
    assert holder(kube) == "a" and a.elector.holds() and not b.elector.holds()
    assert a.transitions == ["started"] and b.transitions == []

    for _ in range(5):  # a renews every retry period; b keeps seeing fresh renewals
        clock.now += 2.0
        await a.elector.step()
        await b.elector.step()
    assert holder(kube) == "a" and not b.elector.holds()
    lease = kube.objects("coordination.k8s.io/v1/leases", NS)[NAME]["spec"]
    assert lease["leaseDurationSeconds"] == 8 and lease["leaseTransitions"] == 0

    # a stops renewing (killed): b waits the whole duration from when it last saw a change, then takes over.
    clock.now += 7.0
    await b.elector.step()
    assert holder(kube) == "a" and not b.elector.holds()
    clock.now += 1.5
    await b.elector.step()
    assert holder(kube) == "b" and b.elector.holds() and b.transitions == ["started"]
    assert kube.objects("coordination.k8s.io/v1/leases", NS)[NAME]["spec"]["leaseTransitions"] == 1


async def test_a_leader_that_cannot_renew_stops_writing_before_anyone_may_take_over(kube: KubeCluster) -> None:
    clock = Clock()
    a = candidate(api(kube), "a", clock)
    await a.elector.step()
    assert a.elector.holds()
    renewed = clock.now
    unreachable = candidate(KubeApi(_client_to_nowhere(), timeout=1.0), "a", clock)  # same identity, no API
    unreachable.elector._leading, unreachable.elector._renewed_at = True, renewed  # a's state, network gone
    clock.now = renewed + 5.9
    await unreachable.elector.step()
    assert unreachable.elector.holds(), "still inside the renew deadline"
    clock.now = renewed + 6.0
    assert not unreachable.elector.holds(), "the fence closes at the renew deadline, without another attempt"
    await unreachable.elector.step()
    assert unreachable.transitions == ["stopped"]
    # A standby that saw the last renewal cannot take over earlier than the lease duration after it.
    assert unreachable.elector.config.renew_deadline < unreachable.elector.config.lease_duration


async def test_only_one_of_two_racing_candidates_wins(kube: KubeCluster) -> None:
    clock = Clock()
    a, b = candidate(api(kube), "a", clock), candidate(api(kube), "b", clock)
    await asyncio.gather(a.elector.step(), b.elector.step())
    assert [a.elector.holds(), b.elector.holds()].count(True) == 1
    winner = "a" if a.elector.holds() else "b"
    assert holder(kube) == winner

    # The holder dies; two standbys see it expire at the same moment and both try to take over.
    c, d = candidate(api(kube), "c", clock), candidate(api(kube), "d", clock)
    await asyncio.gather(c.elector.step(), d.elector.step())
    clock.now += 9.0
    await asyncio.gather(c.elector.step(), d.elector.step())
    assert [c.elector.holds(), d.elector.holds()].count(True) == 1, "the resourceVersion decides: one 409"
    assert holder(kube) == ("c" if c.elector.holds() else "d")


async def test_release_on_shutdown_hands_over_at_the_next_attempt(kube: KubeCluster) -> None:
    clock = Clock()
    a, b = candidate(api(kube), "a", clock), candidate(api(kube), "b", clock)
    stop = asyncio.Event()
    stop.set()  # run() makes no attempt, steps down and releases
    await a.elector.step()
    await b.elector.step()
    await a.elector.run(stop)
    assert a.transitions == ["started", "stopped"] and not a.elector.holds()
    assert not holder(kube)
    clock.now += 2.0  # one retry period, not a lease duration
    await b.elector.step()
    assert holder(kube) == "b" and b.elector.holds()


def test_timings_must_leave_a_margin() -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        LeaseConfig(NS, NAME, "a", lease_duration=6.0, renew_deadline=6.0, retry_period=2.0)


def _client_to_nowhere():  # type: ignore[no-untyped-def]
    import kubernetes

    configuration = kubernetes.client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard: nothing listens
    return kubernetes.client.ApiClient(configuration)
