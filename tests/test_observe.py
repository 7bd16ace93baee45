"""The observer against a real redis-server and real Celery producers; and its pure reply reading."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.signals import before_task_publish
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from tests.conftest import RedisServer
from workerpool_operator import reports
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.local.embedded_redis import free_port
from workerpool_operator.observation import WorkerLoad
from workerpool_operator.observe import (
    ObservationError,
    Observer,
    describe_failure,
    message_timestamp,
    poll_plan,
    read_replies,
    scrub,
)

CUSTOM = {"global_keyprefix": "shop:", "sep": ":", "priority_steps": [0, 2, 4, 6, 8]}


@pytest.fixture
async def observer() -> AsyncIterator[Observer]:
    async with Observer() as running:
        yield running


def producer(url: str, **transport_options: Any) -> Celery:
    app = Celery("producer", broker=url, set_as_current=False)
    app.conf.broker_transport_options = transport_options
    return app


def config_for(url: str, **transport_options: Any) -> BrokerConfig:
    return BrokerConfig(
        url=url,
        global_keyprefix=transport_options.get("global_keyprefix", ""),
        priority_steps=tuple(transport_options.get("priority_steps", (0, 3, 6, 9))),
        separator=transport_options.get("sep", "\x06\x16"),
    )


def send(app: Celery, queue: str, count: int, priority: int | None = None) -> None:
    for _ in range(count):
        app.send_task("tasks.noop", queue=queue, priority=priority)


# --- backlog from real Celery producers ------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, CUSTOM], ids=["kombu-defaults", "prefix-sep-steps"])
async def test_backlog_is_exactly_what_celery_sent_with_every_priority(
    redis_server: RedisServer, observer: Observer, options: dict[str, Any]
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/2"
    app = producer(url, **options)
    sent = {"emails": 0, "reports": 0}
    for priority in range(10):
        send(app, "emails", priority + 1, priority=priority)
        sent["emails"] += priority + 1
    send(app, "reports", 7)  # no priority: the bare list
    send(app, "reports", 2, priority=9)
    sent["reports"] += 9
    app.close()

    client = redis.Redis(port=redis_server.port, db=2)
    lists = [key for key in client.keys("*") if client.type(key) == b"list"]
    assert len(lists) >= 5, lists  # the tasks really spread over several priority lists
    assert redis_server.client().dbsize() == 0  # and db 2, not db 0, holds them

    observed = await observer.observe({config_for(url, **options): ["emails", "reports", "idle"]}, timeout=5)
    (observation,) = observed.values()
    assert observation.ok, observation.error
    assert {name: q.backlog for name, q in observation.queues.items()} == {**sent, "idle": 0}
    assert all(q.ok and q.in_flight == 0 for q in observation.queues.values())


async def test_other_transport_options_would_miss_messages(redis_server: RedisServer, observer: Observer) -> None:
    # The same data read with kombu's defaults instead of the producer's options: not the real backlog.
    app = producer(redis_server.url, **CUSTOM)
    send(app, "emails", 3, priority=5)
    app.close()
    right = await observer.observe({config_for(redis_server.url, **CUSTOM): ["emails"]}, timeout=5)
    wrong = await observer.observe({config_for(redis_server.url): ["emails"]}, timeout=5)
    assert [o.queues["emails"].backlog for o in (*right.values(), *wrong.values())] == [3, 0]


async def test_wrong_typed_key_is_an_error_for_its_queue_only(redis_server: RedisServer, observer: Observer) -> None:
    client = redis_server.client()
    client.set("emails\x06\x166", "not a list")
    client.set(reports.report_key("billing"), "not a hash")
    client.lpush("reports", "m1", "m2")
    config = BrokerConfig(url=redis_server.url)
    (observation,) = (await observer.observe({config: ["emails", "billing", "reports"]}, timeout=5)).values()
    assert observation.ok  # the broker answered
    emails, billing, reports_queue = (observation.queues[q] for q in ("emails", "billing", "reports"))
    assert emails.error == r"wrong type: 'emails\x06\x166' is not a list"
    assert billing.error == "wrong type: 'workerpool:reports:billing' is not a hash"
    assert not emails.ok and not billing.ok
    assert reports_queue.ok and reports_queue.backlog == 2


# --- in-flight from worker reports -----------------------------------------------------------------------


async def test_in_flight_sums_live_reports_by_the_servers_clock(redis_server: RedisServer) -> None:
    client = redis_server.client()
    seconds, micros = client.time()
    now = seconds + micros / 1e6
    key = reports.report_key("emails", "shop:")
    client.hset(
        key,
        mapping={
            "w-1": reports.encode_report(WorkerLoad("w-1", running=4, reserved=12, heartbeat=now - 1, concurrency=4)),
            "w-2": reports.encode_report(WorkerLoad("w-2", running=1, reserved=0, heartbeat=now, concurrency=4)),
            "gone": reports.encode_report(WorkerLoad("gone", running=9, reserved=9, heartbeat=now - 60)),
            "junk": "{not json",
        },
    )
    client.lpush("shop:emails", "m")
    config = BrokerConfig(url=redis_server.url, global_keyprefix="shop:")
    async with Observer(report_ttl=15) as observer:
        (observation,) = (await observer.observe({config: ["emails"]}, timeout=5)).values()
    emails = observation.queues["emails"]
    assert (emails.backlog, emails.in_flight, emails.demand) == (1, 17, 18)
    assert [w.worker for w in emails.workers] == ["w-1", "w-2"]
    assert emails.workers[0].reserved == 12
    async with Observer(report_ttl=0.5) as strict:  # w-1's report is now too old as well
        (observation,) = (await strict.observe({config: ["emails"]}, timeout=5)).values()
    assert observation.queues["emails"].in_flight == 1


async def test_reports_of_workers_older_than_the_operator_still_count(redis_server: RedisServer) -> None:
    """An upgrade where the operator goes first: workers of the previous image write JSON (format 1); the
    observer reads those beside format 2 in the same hash."""
    client = redis_server.client()
    seconds, micros = client.time()
    now = seconds + micros / 1e6
    old_worker = {"worker": "old", "running": 3, "reserved": 1, "done": 9, "heartbeat": now, "concurrency": 4}
    client.hset(
        reports.report_key("emails"),
        mapping={
            "old": json.dumps(old_worker),  # exactly what the previous worker image wrote
            "new": reports.encode_report(WorkerLoad("new", running=2, heartbeat=now, concurrency=4)),
        },
    )
    config = BrokerConfig(url=redis_server.url)
    async with Observer() as observer:
        (observation,) = (await observer.observe({config: ["emails"]}, timeout=5)).values()
    emails = observation.queues["emails"]
    assert emails.in_flight == 6
    assert [(w.worker, w.running, w.reserved, w.done, w.concurrency) for w in emails.workers] == [
        ("new", 2, 0, 0, 4),
        ("old", 3, 1, 9, 4),
    ]


# --- the oldest waiting task (optional) ------------------------------------------------------------------


async def test_oldest_age_from_producer_timestamps(redis_server: RedisServer) -> None:
    def stamp(properties: dict[str, Any], **_: Any) -> None:
        properties["timestamp"] = time.time() - stamp.age  # type: ignore[attr-defined]

    before_task_publish.connect(stamp, weak=False)
    try:
        app = producer(redis_server.url)
        stamp.age = 40  # type: ignore[attr-defined]
        send(app, "emails", 1, priority=9)  # the oldest, in the highest-priority list
        stamp.age = 5  # type: ignore[attr-defined]
        send(app, "emails", 2)
        app.close()
    finally:
        before_task_publish.disconnect(stamp)
    unstamped = producer(redis_server.url)
    send(unstamped, "plain", 1)
    unstamped.close()

    config = BrokerConfig(url=redis_server.url)
    async with Observer(read_oldest_age=True) as observer:
        (observation,) = (await observer.observe({config: ["emails", "plain", "idle"]}, timeout=5)).values()
    emails = observation.queues["emails"]
    assert emails.backlog == 3
    assert emails.oldest_age is not None and 39 < emails.oldest_age < 60
    assert observation.queues["plain"].oldest_age is None  # Celery does not stamp messages itself
    assert observation.queues["idle"].oldest_age is None
    async with Observer() as cheap:
        (observation,) = (await cheap.observe({config: ["emails"]}, timeout=5)).values()
    assert observation.queues["emails"].oldest_age is None


async def test_oldest_age_only_of_the_queues_asked_for(redis_server: RedisServer) -> None:
    """The scaling loop asks for the oldest task's age of the queues with a target wait only: their oldest
    messages are read after every other reply (with beat forecasts in the same poll), the others' are not."""
    stamp_messages = before_task_publish.connect(
        lambda properties, **_: properties.setdefault("timestamp", time.time() - 30), weak=False
    )
    try:
        app = producer(redis_server.url)
        send(app, "emails", 2)
        send(app, "reports", 1, priority=6)
        send(app, "bulk", 3)
        app.close()
    finally:
        before_task_publish.disconnect(stamp_messages)
    config = BrokerConfig(url=redis_server.url)
    wanted = {config: ["emails", "reports", "bulk", "idle"]}
    async with Observer() as observer:
        for _ in range(2):  # the second poll keeps unchanged observations from the first
            seen = await observer.observe(wanted, 5, beats={config: ["shop"]}, aged={config: ["reports", "idle"]})
            queues = seen[config].queues
            assert [queues[name].backlog for name in ("emails", "reports", "bulk", "idle")] == [2, 1, 3, 0]
            assert queues["reports"].oldest_age is not None and 29 < queues["reports"].oldest_age < 60
            assert queues["emails"].oldest_age is None and queues["bulk"].oldest_age is None  # not asked for
            assert queues["idle"].oldest_age is None  # nothing waits
        redis_server.client().delete("reports\x06\x166")
        queues = (await observer.observe(wanted, 5, aged={config: ["reports"]}))[config].queues
        assert queues["reports"].backlog == 0 and queues["reports"].oldest_age is None


def test_message_timestamp_reads_kombus_layout_without_decoding() -> None:
    """Celery's messages as kombu stores them: the properties' timestamp, never one in the headers, the body or
    the text of an argument; any other layout is decoded."""
    stamped = {
        "body": "eyJ0aW1lc3RhbXAiOiA1fQ==",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"timestamp": 7, "argsrepr": '({"timestamp": 3},)', "kwargsrepr": "{}"},
        "properties": {"delivery_info": {"routing_key": "q"}, "timestamp": 1700000000.25, "priority": 0},
    }
    assert message_timestamp(json.dumps(stamped).encode()) == 1700000000.25
    assert message_timestamp(json.dumps(stamped)) == 1700000000.25
    unstamped = {**stamped, "properties": {"delivery_info": {"routing_key": "q"}, "priority": 0}}
    assert message_timestamp(json.dumps(unstamped).encode()) is None  # the headers' timestamp is not the message's
    reordered = {"properties": stamped["properties"], "headers": {"timestamp": 7}}
    assert message_timestamp(json.dumps(reordered)) == 1700000000.25  # decoded
    compact = json.dumps(stamped, separators=(",", ":"))
    assert message_timestamp(compact) == 1700000000.25  # decoded
    for bad in ("null", "true", '"soon"', "NaN", "-"):
        text = json.dumps(unstamped)[:-2] + f', "timestamp": {bad}}}}}'
        assert message_timestamp(text) is None, text


def test_message_timestamp_ignores_what_is_not_a_kombu_timestamp() -> None:
    assert message_timestamp(b'{"properties": {"timestamp": 12.5}}') == 12.5
    for raw in (b"x", b"[]", b'{"properties": {}}', b'{"properties": {"timestamp": "soon"}}', b'{"properties": 3}'):
        assert message_timestamp(raw) is None
    assert message_timestamp('{"properties": {"timestamp": true}}') is None


# --- errors are values -----------------------------------------------------------------------------------


async def test_refused_and_bad_url_are_values_and_other_brokers_still_answer(
    redis_server: RedisServer, observer: Observer, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.client().lpush("emails", "m")
    good = BrokerConfig(url=redis_server.url)
    refused = BrokerConfig(url=f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    bad = BrokerConfig(url="redis://:hunter2@redis:port/0")
    nameless = BrokerConfig(url="sentinel://:hunter2@127.0.0.1:1")
    observed = await observer.observe({good: ["emails"], refused: ["emails"], bad: ["a"], nameless: ["b"]}, timeout=5)
    assert list(observed) == [good, refused, bad, nameless]
    assert observed[good].ok and observed[good].queues["emails"].backlog == 1
    assert str(observed[refused].error).startswith("refused: ")
    assert str(observed[bad].error).startswith("bad broker URL: ")
    assert "needs the master name" in str(observed[nameless].error)
    for failed in (refused, bad, nameless):
        assert all(q.error == observed[failed].error for q in observed[failed].queues.values())
        assert not any(q.ok for q in observed[failed].queues.values())  # never an empty queue
    assert "hunter2" not in caplog.text + repr(observed)
    assert caplog.text.count("observing redis://:***@redis:port/0 failed") == 1
    await observer.observe({bad: ["a"]}, timeout=5)  # a lasting failure is logged once
    assert caplog.text.count("observing redis://:***@redis:port/0 failed") == 1


@pytest.fixture
def secured_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir=tmp_path / "secured").start()
    admin = redis.Redis(port=server.port)
    # the default user keeps working for the test; the observer gets users of its own
    admin.acl_setuser("observer", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["-@all"])
    admin.execute_command("ACL", "SETUSER", "observer", "+llen", "+hgetall", "+time", "+lindex")
    admin.acl_setuser("blind", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["-@all", "+llen", "+time"])
    admin.execute_command("ACL", "SETUSER", "counter", "on", ">s3cret", "~*", "-@all", "+llen", "+hgetall", "+time")
    try:
        yield server
    finally:
        server.stop()


async def test_auth_failure_is_a_clear_value(secured_redis: RedisServer, observer: Observer) -> None:
    config = BrokerConfig(url=f"redis://observer:wrong-pass@127.0.0.1:{secured_redis.port}/0")
    (observation,) = (await observer.observe({config: ["emails"]}, timeout=5)).values()
    assert observation.error is not None and observation.error.startswith("auth failed: ")
    assert "wrong-pass" not in observation.error


async def test_read_only_acl_user_is_enough_and_the_observer_never_writes(secured_redis: RedisServer) -> None:
    admin = redis.Redis(port=secured_redis.port)
    admin.lpush("emails", "a", "b")
    admin.lpush("emails\x06\x169", "c")
    admin.hset(reports.report_key("emails"), "w", reports.encode_report(WorkerLoad("w", running=1, heartbeat=1e12)))
    changes_before = admin.info("persistence")["rdb_changes_since_last_save"]
    admin.config_resetstat()
    admin.acl_log_reset()

    config = BrokerConfig(url=f"redis://observer:s3cret@127.0.0.1:{secured_redis.port}/0")
    async with Observer(read_oldest_age=True) as observer:
        for _ in range(3):
            (observation,) = (await observer.observe({config: ["emails", "idle"]}, timeout=5)).values()
            assert observation.ok, observation.error
            assert observation.queues["emails"].backlog == 3

    stats = admin.info("commandstats")
    used = {name.removeprefix("cmdstat_") for name in stats}
    assert used <= {"auth", "llen", "hgetall", "time", "lindex", "config|resetstat", "acl|log"}, used
    assert {"llen", "hgetall", "time", "lindex"} <= used
    assert stats["cmdstat_llen"]["calls"] == 3 * 8  # every priority list of both queues, per poll
    assert stats["cmdstat_auth"]["calls"] == 1  # one connection, reused by every poll
    assert admin.acl_log() == []  # nothing denied: it never even tried another command
    assert admin.info("persistence")["rdb_changes_since_last_save"] == changes_before


async def test_without_lindex_the_queues_with_a_target_are_observed_without_an_age(
    secured_redis: RedisServer, observer: Observer
) -> None:
    """A user allowed only what the observer needed before ages were read (no LINDEX): the queues are observed as
    before, and the oldest task's age is unknown (the operator then estimates it)."""
    redis.Redis(port=secured_redis.port).lpush("emails", '{"properties": {"timestamp": 1}}')
    config = BrokerConfig(url=f"redis://counter:s3cret@127.0.0.1:{secured_redis.port}/0")
    seen = (await observer.observe({config: ["emails", "idle"]}, timeout=5, aged={config: ["emails"]}))[config]
    assert seen.ok, seen.error
    assert seen.queues["emails"].backlog == 1 and seen.queues["emails"].oldest_age is None


async def test_missing_permission_is_reported_not_read_as_empty(secured_redis: RedisServer, observer: Observer) -> None:
    redis.Redis(port=secured_redis.port).lpush("emails", "a")
    config = BrokerConfig(url=f"redis://blind:s3cret@127.0.0.1:{secured_redis.port}/0")
    (observation,) = (await observer.observe({config: ["emails"]}, timeout=5)).values()
    assert observation.error is not None and observation.error.startswith("permission denied: ")
    assert "hgetall" in observation.error
    assert not observation.queues["emails"].ok


async def test_a_timed_out_poll_does_not_poison_the_next_one(redis_server: RedisServer, observer: Observer) -> None:
    client = redis_server.client()
    client.lpush("emails", "a")
    config = BrokerConfig(url=redis_server.url)
    assert (await observer.observe({config: ["emails"]}, timeout=5))[config].queues["emails"].backlog == 1
    client.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # the broker stops answering for a while
    slow = (await observer.observe({config: ["emails"]}, timeout=0.3))[config]
    assert slow.error == "timed out after 0.3 s"
    client.execute_command("CLIENT", "UNPAUSE")
    client.lpush("emails", "b", "c")
    fresh = (await observer.observe({config: ["emails", "other"]}, timeout=5))[config]
    assert fresh.ok, fresh.error
    assert (fresh.queues["emails"].backlog, fresh.queues["other"].backlog) == (3, 0)


async def test_one_pool_per_config_and_forget_closes_it(redis_server: RedisServer) -> None:
    client = redis_server.client()
    connections = client.info("stats")["total_connections_received"]
    one = BrokerConfig(url=redis_server.url)
    other_db = BrokerConfig(url=f"redis://127.0.0.1:{redis_server.port}/1")
    async with Observer() as observer:
        for _ in range(3):
            observed = await observer.observe({one: ["a", "a", "b"], other_db: []}, timeout=5)
            assert list(observed[one].queues) == ["a", "b"]
            assert observed[other_db].ok and observed[other_db].queues == {}
        assert client.info("stats")["total_connections_received"] == connections + 2
        await observer.forget(keep=[one])
        assert await _eventually(lambda: _observer_dbs(client) == ["0"]), _observer_dbs(client)


def _observer_dbs(client: redis.Redis) -> list[str]:
    return sorted(c["db"] for c in client.client_list() if c["cmd"] != "client|list")


async def _eventually(check: Any, within: float = 5.0) -> bool:
    # the server notices a closed connection a moment after the client closed it
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_as_completed_yields_each_broker_as_it_arrives(redis_server: RedisServer, observer: Observer) -> None:
    fast = BrokerConfig(url=redis_server.url)
    stalled_socket, stalled = _listening_socket()
    with stalled_socket:
        order = [config async for config, _ in observer.observe_as_completed({stalled: ["a"], fast: ["a"]}, timeout=1)]
    assert order == [fast, stalled]


def _listening_socket() -> tuple[Any, BrokerConfig]:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)  # the kernel accepts connections; nobody ever answers
    return sock, BrokerConfig(url=f"redis://127.0.0.1:{sock.getsockname()[1]}/0")


# --- pure: the request and the reading of its replies ----------------------------------------------------


def test_plan_is_one_request_for_every_queue() -> None:
    config = BrokerConfig(url="redis://r", global_keyprefix="p:")
    plan = poll_plan(config, ("a", "b", "c"))
    assert plan.commands[0] == ("TIME",)
    assert plan.reply_count == 1 + 3 * (4 + 1)
    assert Counter(c[0] for c in plan.commands) == {"TIME": 1, "LLEN": 12, "HGETALL": 3}
    assert ("HGETALL", "p:workerpool:reports:b") in plan.commands
    assert plan.payload.count(b"\r\n$4\r\nLLEN\r\n") == 12
    assert poll_plan(config, ("a", "b", "c")) is plan  # packed once per queue set
    with_age = poll_plan(config, ("a",), True)
    assert Counter(c[0] for c in with_age.commands)["LINDEX"] == 4


def _replies(*per_queue: tuple[list[object], object]) -> list[object]:
    replies: list[object] = [[b"1000", b"500000"]]
    for lengths, report in per_queue:
        replies += [*lengths, report]
    return replies


def test_read_replies_sums_lists_and_reads_reports() -> None:
    plan = poll_plan(BrokerConfig(url="redis://r"), ("a", "b"))
    load = reports.encode_report(WorkerLoad("w", running=2, reserved=3, heartbeat=999.0)).encode()
    observed = read_replies(plan, _replies(([1, 0, 2, 0], [b"w", load]), ([0, 0, 0, 0], [])))
    assert (observed["a"].backlog, observed["a"].in_flight) == (3, 5)
    assert (observed["b"].backlog, observed["b"].in_flight, observed["b"].workers) == (0, 0, ())


def test_read_replies_errors() -> None:
    plan = poll_plan(BrokerConfig(url="redis://r"), ("a",))
    with pytest.raises(ObservationError, match="expected 6 replies"):
        read_replies(plan, [[b"1", b"0"]])
    with pytest.raises(ObservationError, match="unexpected reply to TIME"):
        read_replies(plan, [b"noon", 0, 0, 0, 0, []])
    denied = ResponseError("NOPERM User x has no permissions to run the 'llen' command")
    with pytest.raises(ObservationError, match=r"^permission denied: User x"):
        read_replies(plan, _replies(([denied, 0, 0, 0], [])))
    odd = read_replies(plan, _replies(([0, b"?", 0, 0], [])))
    assert odd["a"].error is not None and "unexpected reply to LLEN" in odd["a"].error
    other = read_replies(plan, _replies(([0, 0, ResponseError("LOADING dataset"), 0], [])))
    assert other["a"].error == r"error reading 'a\x06\x166': LOADING dataset"


def test_unchanged_idle_queues_keep_their_previous_observation() -> None:
    plan = poll_plan(BrokerConfig(url="redis://r"), ("idle", "busy", "grew"))
    load = reports.encode_report(WorkerLoad("w", running=1, heartbeat=999.0)).encode()
    first = read_replies(plan, _replies(([0, 0, 0, 0], []), ([1, 0, 0, 0], [b"w", load]), ([1, 0, 0, 0], [])))
    second = read_replies(
        plan, _replies(([0, 0, 0, 0], []), ([1, 0, 0, 0], [b"w", load]), ([2, 0, 0, 0], [])), previous=first
    )
    assert second["idle"] is first["idle"]
    assert second["busy"] is not first["busy"] and second["busy"] == first["busy"]  # reports: read again
    assert second["grew"].backlog == 2
    gone = read_replies(plan, _replies(([0, 0, 0, 0], []), ([1, 0, 0, 0], []), ([2, 0, 0, 0], [])), previous=second)
    assert gone["busy"].in_flight == 0 and gone["busy"].workers == ()


async def test_wrong_type_with_oldest_age_reading(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("emails", "text")
    client.lpush("reports\x06\x163", '{"properties": {"timestamp": 1}}')
    config = BrokerConfig(url=redis_server.url)
    async with Observer(read_oldest_age=True) as observer:
        for _ in range(2):
            observation = (await observer.observe({config: ["emails", "reports"]}, timeout=5))[config]
            assert observation.queues["emails"].error == "wrong type: 'emails' is not a list"
            assert observation.queues["reports"].backlog == 1
            assert (observation.queues["reports"].oldest_age or 0) > 1e9  # stamped in 1970


_length = st.one_of(st.integers(0, 10_000), st.just(ResponseError("WRONGTYPE Operation against a key")))
_report = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.booleans()), max_size=3)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.integers(0, 9), min_size=1, max_size=5, unique=True).map(lambda s: tuple(sorted(s))),
    rows=st.lists(st.tuples(st.lists(_length, min_size=5, max_size=5), _report, st.booleans()), max_size=8),
    read_oldest_age=st.booleans(),
    aged=st.sets(st.integers(0, 9)),
)
def test_read_replies_matches_a_plain_reading_of_each_queue(
    steps: tuple[int, ...],
    rows: list[tuple[list[object], list[tuple[int, int, bool]], bool]],
    read_oldest_age: bool,
    aged: set[int],
) -> None:
    """The column-wise reading gives, queue by queue, what reading each queue's replies on its own gives; the
    oldest messages of the ``aged`` queues (read after everything else) give their ages."""
    config = BrokerConfig(url="redis://r", priority_steps=steps)
    names = tuple(f"q{number}" for number in range(len(rows)))
    plan = poll_plan(config, names, read_oldest_age, (), tuple(f"q{number}" for number in sorted(aged)))
    assert plan.aged == (() if read_oldest_age else tuple(name for name in names if int(name[1:]) in aged))
    now = 10_000.0
    replies: list[object] = [[b"10000", b"0"]]
    tail: list[object] = []
    expected: dict[str, tuple[object, ...]] = {}
    for number, (lengths, loads, stamped) in enumerate(rows):
        lengths = lengths[: len(steps)]
        fields: list[bytes] = []
        for index, (running, reserved, live) in enumerate(loads):
            load = WorkerLoad(f"w{index}", running=running, reserved=reserved, heartbeat=now if live else 0.0)
            fields += [f"w{index}".encode(), reports.encode_report(load).encode()]
        oldest = [b'{"properties": {"timestamp": 9990}}' if stamped else None] * len(steps)
        replies += [*lengths, fields, *(oldest if read_oldest_age else [])]
        if f"q{number}" in plan.aged:
            tail += oldest
        if any(isinstance(length, ResponseError) for length in lengths):
            expected[f"q{number}"] = ("error",)
        else:
            in_flight = sum(r + q for r, q, live in loads if live)
            waiting = sum(lengths)  # type: ignore[arg-type]
            age = 10.0 if stamped and (read_oldest_age or (number in aged and waiting)) else None
            expected[f"q{number}"] = (waiting, in_flight, age)
    observed = read_replies(plan, replies + tail)
    got = {
        name: ("error",) if not queue.ok else (queue.backlog, queue.in_flight, queue.oldest_age)
        for name, queue in observed.items()
    }
    assert got == expected


def test_describe_failure_reasons() -> None:
    import ssl

    from redis.exceptions import AuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError

    assert describe_failure(TimeoutError(), 2.5) == "timed out after 2.5 s"
    assert describe_failure(AuthenticationError("invalid username-password pair"), 1).startswith("auth failed")
    wrapped = RedisConnectionError("Error connecting")
    wrapped.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert describe_failure(wrapped, 1).startswith("TLS verification failed")
    assert describe_failure(RedisConnectionError("Error -2 connecting to nowhere. Name or service not known."), 1) == (
        "unknown host: Error -2 connecting to nowhere. Name or service not known."
    )
    assert describe_failure(ValueError("boom"), 1) == "unexpected error: ValueError: boom"


def test_scrub_removes_secrets_plain_and_quoted() -> None:
    assert scrub("pw=p@ss and p%40ss", ["p@ss", None]) == "pw=*** and ***"


async def test_observing_nothing_is_nothing(observer: Observer) -> None:
    assert await observer.observe({}, timeout=1) == {}
    await asyncio.sleep(0)


async def test_beat_forecasts_become_each_queues_fires(redis_server: RedisServer, observer: Observer) -> None:
    """A pool's beat publishes when each periodic task fires and where it goes (beat_forecast.py): the same
    round trip hands those fires to the queue's observation; other queues, other apps and fires beyond the
    hour ahead stay out; no forecast, or one we cannot read, is no fires and no error."""
    from workerpool_operator import beat_forecast as bf

    client = redis_server.client()
    server_now = float(client.time()[0])
    config = BrokerConfig(url=redis_server.url, global_keyprefix="shop:")
    forecast = bf.BeatForecast(
        beat="beat-0",
        published=server_now,
        horizon=7200,
        entries=(
            bf.ForecastEntry(
                "nightly", "t.nightly", "reports", (server_now + 60, server_now + 4000), server_now + 7200
            ),
            bf.ForecastEntry("hourly", "t.hourly", "reports", (server_now + 30,), server_now + 7200),
            bf.ForecastEntry("ping", "t.ping", "elsewhere", (server_now + 5,), server_now + 7200),
            bf.ForecastEntry("past", "t.past", "emails", (server_now - 10,), server_now + 7200),
        ),
    )
    client.set(bf.forecast_key("proj", "shop:"), bf.encode_forecast(forecast))
    client.set(bf.forecast_key("other", "shop:"), bf.encode_forecast(forecast))  # not asked for

    observed = await observer.observe({config: ["reports", "emails"]}, timeout=5, beats={config: ["proj"]})
    queues = observed[config].queues
    assert [(round(t - server_now), source) for t, source in queues["reports"].fires] == [
        (30, "hourly"),
        (60, "nightly"),
    ]
    assert queues["emails"].fires == (), "a fire already past is not announced"
    assert queues["reports"].ok and queues["emails"].ok

    without = await observer.observe({config: ["reports"]}, timeout=5)  # a pool without beat
    assert without[config].queues["reports"].fires == ()

    client.set(bf.forecast_key("proj", "shop:"), '{"version": 99}')  # a newer beat's format
    again = await observer.observe({config: ["reports"]}, timeout=5, beats={config: ["proj"]})
    assert again[config].ok and again[config].queues["reports"].fires == (), "an old fire is not kept"

    client.delete(bf.forecast_key("proj", "shop:"))
    client.rpush(bf.forecast_key("proj", "shop:"), "not a string")
    wrong = await observer.observe({config: ["reports"]}, timeout=5, beats={config: ["proj"]})
    assert wrong[config].ok and wrong[config].queues["reports"].fires == ()


def test_a_plan_with_beat_apps_reads_their_forecasts_last() -> None:
    config = BrokerConfig(url="redis://localhost:6379/0")
    plan = poll_plan(config, ("a",), False, ("proj", "other"))
    assert plan.commands[-2:] == (("GET", "workerpool:beat:forecast:proj"), ("GET", "workerpool:beat:forecast:other"))
    replies: list[object] = [[b"100", b"0"], 0, 0, 0, 0, [], None, b"garbage"]
    assert read_replies(plan, replies)["a"].fires == ()
