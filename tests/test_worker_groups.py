"""Worker groups on several Celery queues (worker_groups.py): which group counts a queue's backlog, which group a
worker belongs to, and the one observation the engine gets for a group."""

from __future__ import annotations

from workerpool_operator.observation import QueueObservation, WorkerLoad
from workerpool_operator.worker_groups import group_observation, grouping, owner


def load(worker: str, running: int = 0, reserved: int = 0, **more: float | bool) -> WorkerLoad:
    return WorkerLoad(worker, running=running, reserved=reserved, heartbeat=100.0, concurrency=4, **more)  # type: ignore[arg-type]


def test_a_group_on_its_own_queue_sees_the_observation_as_it_is() -> None:
    groups = grouping({"emails": (), "reports": ("reports",)})
    assert groups.simple == {"emails", "reports"} and groups.shared == {}
    seen = QueueObservation("emails", backlog=3, in_flight=1, workers=(load("w1", running=1),))
    assert group_observation(groups, "emails", {"emails": seen}) is seen
    assert group_observation(groups, "reports", {}, missing="broker down").error == "broker down"
    assert groups.to_poll(["emails"]) == {"emails"}


def test_a_queue_counts_for_the_group_named_like_it_else_for_every_group_consuming_it() -> None:
    groups = grouping({"normal": (), "spare": ("low", "normal"), "batch": ("bulk", "low")})
    assert groups.counts == {"normal": ("normal",), "spare": ("low",), "batch": ("bulk", "low")}
    assert groups.shared == {"low": ("spare", "batch")}, "no group is named low: both count it"
    assert groups.polled["normal"] == ("normal", "low"), "spare's queues: to tell its workers from normal's"
    assert groups.to_poll(["normal"]) == {"normal", "low"}
    assert groups.simple == frozenset()


def test_a_group_whose_name_is_not_one_of_its_queues_counts_them_all() -> None:
    """from-keda's group on two queues: named after the Deployment, neither queue is a group's name."""
    groups = grouping({"shop-worker": ("normal", "low")})
    assert groups.counts == {"shop-worker": ("normal", "low")} and groups.shared == {}
    observed = {
        "normal": QueueObservation("normal", backlog=5, workers=(load("pod-a", running=2),), fires=((9.0, "tick"),)),
        "low": QueueObservation("low", backlog=7, oldest_age=30.0, workers=(load("pod-a", reserved=1),)),
    }
    seen = group_observation(groups, "shop-worker", observed)
    assert (seen.queue, seen.backlog, seen.in_flight, seen.oldest_age) == ("shop-worker", 12, 3, 30.0)
    assert seen.backlogs == (("normal", 5, True), ("low", 7, True))
    assert seen.fires == ((9.0, "tick"),)
    (worker,) = seen.workers
    assert (worker.worker, worker.running, worker.reserved) == ("pod-a", 2, 1), "one worker, counted once"


def test_each_worker_counts_once_for_the_group_whose_queues_it_consumes() -> None:
    groups = grouping({"normal": (), "spare": ("low", "normal")})
    assert owner(groups, frozenset({"normal"})) == "normal"
    assert owner(groups, frozenset({"low", "normal"})) == "spare"
    assert owner(groups, frozenset({"low"})) == "spare"
    assert owner(groups, frozenset({"other"})) is None
    observed = {
        "normal": QueueObservation(
            "normal", backlog=10, workers=(load("normal-1", running=4), load("spare-1", running=1))
        ),
        "low": QueueObservation("low", backlog=2, workers=(load("spare-1", running=3),)),
    }
    normal = group_observation(groups, "normal", observed)
    spare = group_observation(groups, "spare", observed)
    assert (normal.backlog, normal.in_flight, [w.worker for w in normal.workers]) == (10, 4, ["normal-1"])
    assert (spare.backlog, spare.in_flight, [w.worker for w in spare.workers]) == (2, 4, ["spare-1"])
    assert spare.backlogs == (("low", 2, True), ("normal", 10, False)), "shown, counted for normal only"


def test_a_worker_drains_only_once_every_queue_of_its_group_says_so() -> None:
    groups = grouping({"g": ("a", "b")})

    def seen(on_a: bool, on_b: bool) -> WorkerLoad:
        observed = {
            "a": QueueObservation("a", workers=(load("w", draining=on_a, done=7),)),
            "b": QueueObservation("b", workers=(load("w", draining=on_b, done=7, started=50.0),)),
        }
        (worker,) = group_observation(groups, "g", observed).workers
        return worker

    assert not seen(True, False).draining, "still consuming b: it could take a task"
    both = seen(True, True)
    assert both.draining and both.done == 7 and both.started == 50.0


def test_one_failed_queue_fails_the_group_never_a_partial_count() -> None:
    groups = grouping({"g": ("a", "b")})
    observed = {
        "a": QueueObservation("a", backlog=3),
        "b": QueueObservation("b", error="wrong type: 'b' is not a list"),
    }
    seen = group_observation(groups, "g", observed)
    assert not seen.ok and seen.error == "queue b: wrong type: 'b' is not a list"
    assert group_observation(groups, "g", {"a": observed["a"]}).error == "queue b: queue was not observed"
