"""Pure parts of the operator: conditions, status documents and when they are worth writing."""

from __future__ import annotations

import dataclasses
from typing import Any

from workerpool_operator.engine import Decision, QueueState, ScalingPolicy
from workerpool_operator.engine.forecast import Learned
from workerpool_operator.engine.wait_watch import Breach, Poll, Waits
from workerpool_operator.kube import conditions as c
from workerpool_operator.kube.status import (
    QueueFigures,
    build_status,
    merge_patch,
    rfc3339,
    unix_time,
    wait_poll,
    write_needed,
)
from workerpool_operator.observation import QueueObservation, WorkerLoad
from workerpool_operator.scaling_types import QueueResult

T0 = 1_800_000_000.0


def _status(previous: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "generation": 2,
        "queue_names": ["default", "mail"],
        "conditions": c.pool_conditions(config_problem=None, broker_error=None, observed=True),
        "now": T0,
    }
    args.update(kwargs)
    return build_status(previous, **args)


def test_ready_when_observed_and_no_problem() -> None:
    ready, reachable = c.pool_conditions(config_problem=None, broker_error=None, observed=True)
    assert (ready.type, ready.status, ready.reason) == ("Ready", "True", "Scaling")
    assert (reachable.type, reachable.status) == ("BrokerReachable", "True")


def test_config_problem_makes_pool_not_ready_with_its_reason() -> None:
    problem = c.Problem(c.REASON_SECRET_NOT_FOUND, "Secret apps/redis not found")
    ready, reachable = c.pool_conditions(config_problem=problem, broker_error="ignored", observed=True)
    assert (ready.status, ready.reason, ready.message) == ("False", "SecretNotFound", "Secret apps/redis not found")
    assert reachable.status == "Unknown"


def test_workload_apply_failure_is_not_ready_but_leaves_the_broker_condition_as_observed() -> None:
    problem = c.Problem(c.REASON_APPLY_FAILED, "queue default: the API server refused its Deployment: quota")
    ready, reachable = c.conditions_for_problem(problem, broker_error=None, observed=True)
    assert (ready.status, ready.reason, ready.message) == ("False", "WorkloadApplyFailed", problem.message)
    assert (reachable.status, reachable.reason) == ("True", "Observed")
    ready, reachable = c.conditions_for_problem(problem, broker_error="connection refused", observed=True)
    assert (ready.status, ready.reason) == ("False", "WorkloadApplyFailed")
    assert (reachable.status, reachable.reason) == ("False", "RedisUnreachable")
    _, reachable = c.conditions_for_problem(problem, broker_error=None, observed=False)
    assert (reachable.status, reachable.reason) == ("Unknown", "AwaitingObservation")


def test_config_problems_still_leave_the_broker_unknown() -> None:
    for reason in sorted(c.CONFIG_REASONS):
        ready, reachable = c.conditions_for_problem(c.Problem(reason, "fix it"), broker_error=None, observed=True)
        assert (ready.status, ready.reason) == ("False", reason)
        assert (reachable.status, reachable.reason) == ("Unknown", reason)
    ready, _ = c.conditions_for_problem(None, broker_error=None, observed=True)
    assert (ready.status, ready.reason) == ("True", "Scaling")


def test_unreachable_broker_says_replicas_are_held() -> None:
    ready, reachable = c.pool_conditions(config_problem=None, broker_error="connection refused", observed=True)
    assert (reachable.status, reachable.reason) == ("False", "RedisUnreachable")
    assert "connection refused" in reachable.message and "no scale-down" in reachable.message
    assert (ready.status, ready.reason) == ("False", "RedisUnreachable")


def test_before_first_poll_ready_is_unknown() -> None:
    ready, reachable = c.pool_conditions(config_problem=None, broker_error=None, observed=False)
    assert ready.status == reachable.status == "Unknown"


def test_transition_time_kept_while_status_unchanged_and_moved_on_change() -> None:
    first = c.merge_conditions(None, [c.Condition("Ready", "True", "Scaling")], generation=1, now="t1")
    same = c.merge_conditions(first, [c.Condition("Ready", "True", "Scaling", "new words")], generation=2, now="t2")
    assert same[0]["lastTransitionTime"] == "t1"
    assert same[0]["message"] == "new words" and same[0]["observedGeneration"] == 2
    flipped = c.merge_conditions(same, [c.Condition("Ready", "False", "RedisUnreachable")], generation=2, now="t3")
    assert flipped[0]["lastTransitionTime"] == "t3"
    assert c.condition(flipped, "Ready") == flipped[0]
    assert c.condition(flipped, "Other") is None


def test_status_lists_queues_in_spec_order_with_totals() -> None:
    status = _status(
        figures={
            "mail": QueueFigures("mail", backlog=4, in_flight=1, replicas=2, desired_replicas=2, reason="up"),
            "default": QueueFigures("default", backlog=3, replicas=1, ready_replicas=1, reason="why", scaled=True),
        }
    )
    assert [q["name"] for q in status["queues"]] == ["default", "mail"]
    assert status["totalBacklog"] == 7 and status["totalReplicas"] == 3 and status["queueCount"] == 2
    assert status["observedGeneration"] == 2
    assert status["queues"][0]["lastScaleTime"] == rfc3339(T0)
    assert status["queues"][0]["lastScaleReason"] == "why"
    assert "lastScaleTime" not in status["queues"][1] and "lastScaleReason" not in status["queues"][1]


def test_failed_poll_keeps_previous_figures_and_removed_queues_disappear() -> None:
    before = _status(figures={"mail": QueueFigures("mail", backlog=9, replicas=3)}, scaler_state={"mail": {"f": 1}})
    after = _status(before, queue_names=["mail"], figures={"mail": QueueFigures("mail", backlog=None, replicas=None)})
    assert after["queues"] == [{"name": "mail", "backlog": 9, "replicas": 3}]
    assert after["scalerState"] == {"mail": {"f": 1}}
    gone = _status(after, queue_names=["default"])
    assert "scalerState" not in gone and [q["name"] for q in gone["queues"]] == ["default"]


def test_same_facts_same_status_so_no_write() -> None:
    figures = {"default": QueueFigures("default", backlog=1, replicas=1, desired_replicas=1)}
    first = _status(figures=figures)
    again = _status(first, figures=figures, now=T0 + 500)
    assert again == first
    assert not write_needed(first, again, seconds_since_write=500)


def test_figures_alone_are_rate_limited_but_state_changes_are_written_at_once() -> None:
    first = _status(figures={"default": QueueFigures("default", backlog=1, replicas=1)})
    busier = _status(first, figures={"default": QueueFigures("default", backlog=5, replicas=1)})
    assert not write_needed(first, busier, seconds_since_write=1, figures_refresh=30)
    assert write_needed(first, busier, seconds_since_write=31, figures_refresh=30)
    scaled = _status(first, figures={"default": QueueFigures("default", backlog=1, replicas=2)})
    assert write_needed(first, scaled, seconds_since_write=0)
    broken = _status(first, conditions=c.pool_conditions(config_problem=None, broker_error="x", observed=True))
    assert write_needed(first, broken, seconds_since_write=0)
    assert write_needed(None, first, seconds_since_write=0)


def test_merge_patch_carries_only_changes_and_removals() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2], "gone": True}
    new = {"a": 1, "b": {"c": 2, "d": 4}, "l": [1, 2, 3]}
    assert merge_patch(old, new) == {"b": {"d": 4}, "l": [1, 2, 3], "gone": None}
    assert merge_patch(new, new) == {}


def test_engine_state_milestones_are_written_at_once_window_times_with_the_figures() -> None:
    state = {"failures": 0, "idleSince": None, "recommendations": [[T0, 2]], "scaleUps": []}
    first = _status(scaler_state={"default": state})
    moved = _status(first, scaler_state={"default": {**state, "scaleUps": [[T0 + 5, 1]]}})
    assert not write_needed(first, moved, seconds_since_write=5, figures_refresh=30)
    assert write_needed(first, moved, seconds_since_write=30, figures_refresh=30)
    idle = _status(first, scaler_state={"default": {**state, "idleSince": T0}})
    assert write_needed(first, idle, seconds_since_write=0)
    failing = _status(first, scaler_state={"default": {**state, "failures": 1}})
    assert write_needed(first, failing, seconds_since_write=0)
    more_failing = _status(failing, scaler_state={"default": {**state, "failures": 2}})
    assert not write_needed(failing, more_failing, seconds_since_write=0)


def test_the_latest_recommendations_time_alone_is_never_written() -> None:
    state = {"failures": 0, "recommendations": [[T0 - 100, 4], [T0, 2]], "scaleUps": []}
    first = _status(scaler_state={"default": state})
    ticked = _status(first, scaler_state={"default": {**state, "recommendations": [[T0 - 100, 4], [T0 + 9, 2]]}})
    assert not write_needed(first, ticked, seconds_since_write=3600)
    lower = _status(first, scaler_state={"default": {**state, "recommendations": [[T0 - 100, 4], [T0 + 9, 1]]}})
    assert write_needed(first, lower, seconds_since_write=3600)
    assert not write_needed(first, lower, seconds_since_write=1)


def test_the_engines_memory_goes_out_as_one_json_string_and_comes_back() -> None:
    from workerpool_operator.kube.status import from_wire, to_wire

    status = _status(scaler_state={"default": {"idleSince": 1.5, "learned": {"startup": 12.0}}})
    wire = to_wire(status)
    assert isinstance(wire["scalerState"], str) and "\n" not in wire["scalerState"]
    assert from_wire(wire) == status
    assert from_wire({**wire, "scalerState": "{not json"}) == {k: v for k, v in status.items() if k != "scalerState"}
    legacy = {**status, "scalerState": {"default": {"idleSince": 1.5}}}  # the first release wrote an object
    assert from_wire(legacy) == legacy
    assert from_wire(None) is None


# --- the waits tasks get -------------------------------------------------------------------------------------


def _waits(oldest: float | None = 12.0, **changes: Any) -> QueueFigures:
    fields: dict[str, Any] = {"source": "Measured", "p95": 9.5, "target": 60.0, "above_since": None, "breach": None}
    fields.update(changes)
    return QueueFigures("default", backlog=4, waits=Waits(oldest, **fields))


def test_a_queues_waits_in_status_and_which_of_them_are_state() -> None:
    first = _status(figures={"default": _waits()})
    assert first["queues"][0] == {
        "name": "default",
        "backlog": 4,
        "oldestTaskAgeSeconds": 12.0,
        "waitSource": "Measured",
        "waitP95Seconds": 9.5,
        "targetWaitSeconds": 60.0,
    }
    above = _status(first, figures={"default": _waits(75.04, p95=70.0, above_since=T0 - 15.0)})
    assert above["queues"][0]["waitAboveTargetSince"] == rfc3339(T0 - 15.0)
    assert above["queues"][0]["oldestTaskAgeSeconds"] == 75.0
    assert not write_needed(first, above, seconds_since_write=1), "ages and the time above the target are figures"
    assert write_needed(first, above, seconds_since_write=31)
    estimated = _status(first, figures={"default": _waits(source="Estimated")})
    assert write_needed(first, estimated, seconds_since_write=1), "which kind of age it is: state"
    failed = _status(above, figures={"default": QueueFigures("default", waits=_waits(None, p95=None).waits)})
    assert failed["queues"][0]["oldestTaskAgeSeconds"] == 75.0 and failed["queues"][0]["waitP95Seconds"] == 70.0
    untargeted = _status(above, figures={"default": _waits(target=None)})
    assert "targetWaitSeconds" not in untargeted["queues"][0]
    assert "waitAboveTargetSince" not in untargeted["queues"][0]
    assert write_needed(above, untargeted, seconds_since_write=1)
    assert unix_time(rfc3339(T0)) == T0 and unix_time("soon") is None and unix_time(None) is None


def test_the_wait_condition_names_every_broken_target_with_the_first_ones_reason() -> None:
    broken = [
        ("emails", Breach("MaxReplicasReached", "the oldest task has waited 95s, ...: maxReplicas (10) reached")),
        ("reports", Breach("WorkersNotStarting", "...: 3 of 10 workers not ready for 60s")),
    ]
    condition = c.wait_condition(broken, observed=True)
    assert (condition.type, condition.status, condition.reason) == ("WaitsWithinTarget", "False", "MaxReplicasReached")
    assert condition.message == (
        "queue emails: the oldest task has waited 95s, ...: maxReplicas (10) reached; "
        "queue reports: ...: 3 of 10 workers not ready for 60s"
    )
    kept = c.wait_condition([], observed=True)
    assert (kept.status, kept.reason) == ("True", "WithinTarget")
    assert c.wait_condition([], observed=False).status == "Unknown"


def test_a_poll_as_the_wait_watch_reads_it() -> None:
    learned = Learned(arrival_rate=4.0, startup=12.0)
    observation = QueueObservation("default", backlog=9, oldest_age=33.0, replicas=2, workers=(WorkerLoad("w1"),))
    decision = Decision(5, "scale up", current_replicas=2)
    result = QueueResult("default", observation, decision, QueueState(learned=learned, waiting_since=T0 - 40))
    policy = ScalingPolicy(max_replicas=8, target_wait=60.0, startup_seconds=45.0)
    poll = wait_poll(result, policy, None, T0)
    assert poll == Poll(
        T0,
        backlog=9,
        measured=33.0,
        arrival_rate=4.0,
        waiting_since=T0 - 40,
        target=60.0,
        startup=12.0,  # learned, not startupSeconds
        replicas=2,
        ready=1,  # the live reports, without the Deployment's count
        desired=5,
        max_replicas=8,
    )
    scaled = wait_poll(dataclasses.replace(result, scaled_from=2, state=QueueState()), policy, 2, T0)
    assert (scaled.replicas, scaled.ready, scaled.startup) == (5, 2, 45.0)
    failed = QueueResult("default", QueueObservation("default", error="refused"), None, QueueState())
    assert wait_poll(failed, None, None, T0) == Poll(T0, error="refused", startup=30.0)
