"""The engine's speed-ups change no decision: a seeded workload, run through ``decide`` poll after poll, gives
the same decisions and states as the engine before them (issue 22: ``decide`` for 10,000 queues in 50 ms).

The workload is bench/bench_engine.py's (every situation, half on each policy, half with a target wait), for a
few hundred queues, then carried on over more polls: the reports move on (tasks done, heartbeats, workers that
come, go, drain and stop), the backlogs rise and fall, and each decision's replicas become the next poll's. Every
decision (each field, its reason read as text) and every new state is hashed; the digest was recorded with the
engine as it was before the speed-ups (commit 5424ef2), so any change of behaviour fails here.

``DIGEST_WITHOUT_TARGET`` is that of the queues without a target wait alone: a change meant for queues with a
target must leave it as it is. ``DIGEST`` was recorded again when queues with a target were meant to decide
differently (a backlog may lag the arrivals, issue 22), ``DIGEST_WITHOUT_TARGET`` staying as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import sys

from bench.bench_engine import workload

from workerpool_operator.engine import POLICIES, Decision, QueueState, ScalingPolicy, decide
from workerpool_operator.observation import QueueObservation, WorkerLoad

QUEUES = 320
POLLS = 12
DIGEST = "7a89c8d94e22cb1dee30186161daf9391f438815cf6162580e53f97c36b291fc"
DIGEST_WITHOUT_TARGET = "93b71fb1ac624093db340b550ee32cef9d46a15026115997ea641349b52138c9"


def described(decision: Decision) -> tuple[object, ...]:
    """Every field of a decision, its reason as the text a reader gets, and its derived properties."""
    return (
        decision.desired_replicas,
        str(decision.reason),
        decision.remove_first,
        decision.current_replicas,
        decision.demand,
        decision.recommendation,
        decision.fallback_active,
        decision.paused,
        decision.drain,
        decision.undrain,
        decision.predicted_wait,
        decision.target_wait,
        decision.changed,
        decision.direction,
    )


def moved_on(
    rng: random.Random, observation: QueueObservation, decision: Decision, state: QueueState, step: int
) -> QueueObservation:
    """The next poll of a queue: the decided replicas, reports moved on by 2 s, a backlog that rose or fell."""
    replicas = decision.desired_replicas
    asked = set(decision.drain) | {name for name, _ in state.draining}
    gone = set(decision.remove_first)
    workers: list[WorkerLoad] = []
    for w in observation.workers:
        if w.worker in gone and rng.random() < 0.5:
            continue
        running = max(0, w.running + rng.choice((-1, 0, 0, 1)))
        workers.append(
            dataclasses.replace(
                w,
                running=running,
                reserved=rng.choice((0, 0, 0, 1)),
                done=w.done + rng.randint(0, 4),
                heartbeat=w.heartbeat + 2.0,
                draining=w.worker in asked and rng.random() < 0.8,
                stopping=rng.random() < 0.01,
            )
        )
    while len(workers) < replicas and rng.random() < 0.6:  # a pod started since reports
        workers.append(
            WorkerLoad(f"{observation.queue}-n{step}-{len(workers)}", running=1, done=0,
                       heartbeat=1010.0 + 2.0 * step, started=1009.0 + 2.0 * step)
        )  # fmt: skip
    workers.sort(key=lambda w: w.worker)
    backlog = max(0, observation.backlog + rng.choice((-50, -5, 0, 0, 3, 40, 400)))
    error = "timeout" if rng.random() < 0.03 else None
    age = rng.choice((None, None, 5.0, 70.0)) if backlog else None
    fires = ((1010.0 + 2.0 * step + 30.0, "beat:report"),) if rng.random() < 0.05 else ()
    return QueueObservation(
        observation.queue, backlog, sum(w.running + w.reserved for w in workers), tuple(workers),
        oldest_age=age, error=error, replicas=replicas, fires=fires,
    )  # fmt: skip


def digest(queues: int = QUEUES, polls: int = POLLS, without_target: bool = False) -> str:
    """The digest of the workload's decisions and states (``without_target``: of its queues without a target
    wait alone, whose earlier polls too were decided without one)."""
    observations, states, policies = workload(queues, seed=7)
    policies = [
        dataclasses.replace(p, drain_timeout=0.0) if i % 13 == 5 else p for i, p in enumerate(policies)
    ]  # some queues remove at once, without draining
    rng = random.Random(11)
    h = hashlib.sha256()
    for i, (observation, state, policy) in enumerate(zip(observations, states, policies, strict=True)):
        if without_target and policy.target_wait is not None:
            continue
        for name in POLICIES:  # the bench's case first, at its time, on each policy
            decision, after = decide(observation, state, dataclasses.replace(policy, policy=name), 1010.0)
            h.update(repr((i, name, described(decision), after)).encode())
        for step in range(polls):
            now = 1010.0 + 2.0 * step
            decision, state = decide(observation, state, policy, now)
            h.update(repr((i, step, described(decision), state)).encode())
            observation = moved_on(rng, observation, decision, state, step + 1)
    return h.hexdigest()


def test_the_engine_under_test_is_the_one_asked_for() -> None:
    """tests/test_engine_compiled.py runs this file against the compiled build with ``WORKERPOOL_TEST_COMPILED=1``:
    the digests below then come from the compiled modules, and otherwise from the source."""
    compiled = (sys.modules[decide.__module__].__file__ or "").endswith(".so")
    assert compiled == (os.environ.get("WORKERPOOL_TEST_COMPILED") == "1")


def test_decisions_and_states_are_those_of_the_engine_before_the_speedups() -> None:
    assert digest() == DIGEST


def test_queues_without_a_target_wait_decide_as_before() -> None:
    assert digest(without_target=True) == DIGEST_WITHOUT_TARGET


def test_the_digest_sees_a_changed_decision() -> None:
    """A workload run twice gives the same digest, and one queue's policy changed gives another."""
    assert digest(24, 3) == digest(24, 3)
    assert digest(24, 3) != digest(25, 3)


def test_the_workload_covers_every_kind_of_decision() -> None:
    observations, states, policies = workload(QUEUES, seed=7)
    kinds = set()
    for o, s, p in zip(observations, states, policies, strict=True):
        decision, _ = decide(o, s, p, 1010.0)
        kinds.add(str(decision.reason).split(":")[0].split(" ")[0])
        kinds.add(decision.direction)
    assert {"up", "down", "none", "scale", "hold", "steady", "asleep"} <= kinds


def test_a_policy_run_is_deterministic() -> None:
    policy = ScalingPolicy(max_replicas=20, target_wait=60.0)
    observation = QueueObservation("q", 30, 2, (WorkerLoad("w", running=2, done=9, heartbeat=1000.0),), replicas=1)
    assert decide(observation, QueueState(), policy, 1000.0) == decide(observation, QueueState(), policy, 1000.0)
