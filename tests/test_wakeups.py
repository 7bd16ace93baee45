"""Wake-ups and stall-proof timeouts, on a real redis-server: the broker tells which polled queue changed (client
tracking, ``observe/wakeups.py``), the scaling loop polls that queue at once, and a stall of the operator's own
event loop never reads as a broker that timed out (``observe/stalls.py``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from tests.conftest import RedisServer
from tests.test_scaling_loop import POLICY, Clock, RecordingBackend, make_loop
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.observe import BrokerConnection, Observer
from workerpool_operator.observe.connections import Redirect
from workerpool_operator.observe.stalls import StallMeter, wait_responsive
from workerpool_operator.observe.wakeups import invalidated_keys
from workerpool_operator.scaling_loop import WAKE_MIN_GAP
from workerpool_operator.scaling_types import PoolKey, PoolResult, QueuePlan
from workerpool_operator.wake_index import WakeIndex

A: PoolKey = ("apps", "a")
B: PoolKey = ("apps", "b")


# --- pure parts --------------------------------------------------------------------------------------


def test_the_wake_index_names_every_reader_of_a_key_and_forgets_one_pool_at_a_time() -> None:
    broker, other = BrokerConfig(url="redis://a:6379/0"), BrokerConfig(url="redis://a:6379/1")
    index = WakeIndex()
    index.add(broker, A, {"work": ["emails", "reports"], "mail": ["emails"]})  # a group on two Celery queues
    index.add(broker, B, {"emails": ["emails"]})
    index.add(other, B, {"emails": ["emails"]})
    assert list(index.readers(broker, ["emails"])) == [(A, "work"), (A, "mail"), (B, "emails")]
    assert list(index.readers(broker, ["reports\x06\x163", "nothing"])) == [(A, "work")]  # a priority list
    index.add(broker, B, {"emails": ["emails"]})  # registered again: still one reader
    assert list(index.readers(broker, ["emails"])) == [(A, "work"), (A, "mail"), (B, "emails")]
    index.forget(broker, A, {"work": ["emails", "reports"], "mail": ["emails"]})
    assert list(index.readers(broker, ["emails", "reports"])) == [(B, "emails")]
    assert list(index.readers(other, ["emails"])) == [(B, "emails")], "another database is another broker"
    index.forget(broker, B, {"emails": ["emails"]})
    assert list(index.readers(broker, ["emails"])) == []


@pytest.mark.parametrize("prefix", ["", "app1:"])
@pytest.mark.parametrize("queue", ["celery", "emails.high", "a:b"])
def test_every_priority_list_maps_back_to_its_queue(prefix: str, queue: str) -> None:
    broker = BrokerConfig(url="redis://localhost", global_keyprefix=prefix)
    keys = broker.priority_keys(queue)
    assert len(keys) == 4
    assert {broker.queue_of_key(key) for key in keys} == {queue}
    assert broker.queue_of_key(f"{prefix}workerpool:reports:{queue}") != queue, "a report key wakes no queue"
    if prefix:
        assert broker.queue_of_key(queue) is None, "a key outside the prefix is no queue's"


def test_invalidation_messages_are_read_and_other_replies_are_not() -> None:
    assert invalidated_keys([b"message", b"__redis__:invalidate", [b"q1", b"q2\x06\x163"]]) == ["q1", "q2\x06\x163"]
    assert invalidated_keys([b"message", b"__redis__:invalidate", None]) == []  # a flush
    assert invalidated_keys([b"subscribe", b"__redis__:invalidate", 1]) is None
    assert invalidated_keys([b"pong", b""]) is None


def test_the_stall_meter_counts_only_lateness() -> None:
    now = [100.0]
    meter = StallMeter(period=0.05, clock=lambda: now[0])
    meter.note(100.0)
    meter.note(100.05)  # on time
    assert meter.stalled() == 0.0
    now[0] = 102.05  # 2 s since the last beat: the current stall counts before the next beat
    assert meter.stalled() == pytest.approx(1.95)
    meter.note(102.05)
    assert meter.stalled() == pytest.approx(1.95), "the beat after the stall does not count it twice"


async def test_a_reply_delayed_by_a_stalled_loop_is_not_a_timeout() -> None:
    meter = StallMeter(period=0.01)
    meter.start()
    try:
        answered = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.05, answered.set_result, "reply")
        asyncio.get_running_loop().call_later(0.02, time.sleep, 0.6)  # the loop blocks for 0.6 s
        assert await wait_responsive(answered, 0.2, meter) == "reply"
        with pytest.raises(TimeoutError):  # a reply that never comes still times out
            await wait_responsive(asyncio.get_running_loop().create_future(), 0.1, meter)
    finally:
        await meter.stop()


BUSY_BROKER = """
local start = redis.call('TIME')
while true do
    local now = redis.call('TIME')
    if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1]) then return 1 end
end
"""


async def test_a_stalled_loop_does_not_read_as_a_broker_outage(redis_server: RedisServer) -> None:
    broker = BrokerConfig(url=redis_server.url)
    async with Observer() as observer:
        await observer.observe({broker: ["emails"]}, 1.0)  # connected
        redis_server.client().lpush("emails", "m1")
        # The broker answers 0.3 s late; meanwhile the operator's loop stalls for 1.5 s, past the 1 s timeout.
        busy = threading.Thread(target=redis_server.client().eval, args=(BUSY_BROKER, 0, 300_000))
        busy.start()
        time.sleep(0.05)  # noqa: ASYNC251 (the script runs before the poll is sent)
        asyncio.get_running_loop().call_later(0.1, time.sleep, 1.5)
        observed = (await observer.observe({broker: ["emails"]}, 1.0))[broker]
        busy.join()
    assert observed.error is None, observed.error
    assert observed.queues["emails"].backlog == 1


def test_a_connection_to_another_server_never_redirects_to_our_subscriber() -> None:
    broker = BrokerConnection.connect(BrokerConfig(url="redis://127.0.0.1:6390/0"), 4)
    connection = broker.pool.make_connection()  # type: ignore[no-untyped-call]
    assert broker._tracks_for(connection, Redirect(7, "127.0.0.1", 6390))
    # After a sentinel failover the polls go to the new master, while the subscriber may still be on the old
    # one: client ids are per server, and that id there may be another client's (a worker's pub/sub connection).
    assert not broker._tracks_for(connection, Redirect(7, "10.0.0.2", 6379))
    broker.tracking[connection] = 7
    assert not broker._tracks_for(connection, Redirect(7, "127.0.0.1", 6390)), "sent once per connection"


# --- the broker's messages ---------------------------------------------------------------------------


async def wait_for(condition, timeout: float = 3.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_polled_queue_that_changes_is_named_once_per_poll(redis_server: RedisServer) -> None:
    broker = BrokerConfig(url=redis_server.url)
    client = redis_server.client()
    heard: list[str] = []
    async with Observer() as observer:
        wakeups = observer.enable_wakeups(lambda config, keys: heard.extend(keys))
        await observer.observe({broker: ["emails", "reports"]}, 1.0)  # starts the subscriber
        await wakeups.subscribed(broker)
        client.lpush("emails", "m0")  # not tracked yet: the connection has not turned tracking on
        await observer.observe({broker: ["emails", "reports"]}, 1.0)  # tracking on; every key read is tracked
        await asyncio.sleep(0.1)
        assert heard == []
        client.lpush(broker.priority_key("emails", 9), "m1", "m2")
        client.lpush("emails", "m3")
        await wait_for(lambda: len(heard) == 2)
        assert set(heard) == {broker.priority_key("emails", 9), "emails"}
        client.lpush("emails", "m4")  # not read again since: no second message
        client.lpush("nobody-polls-this", "m")
        await asyncio.sleep(0.2)
        assert len(heard) == 2
        await observer.observe({broker: ["emails"]}, 1.0)  # read again: tracked again
        client.lpush("emails", "m5")
        await wait_for(lambda: len(heard) == 3)
        assert heard[-1] == "emails"


async def test_wakeups_come_back_after_either_connection_is_killed(redis_server: RedisServer) -> None:
    broker = BrokerConfig(url=redis_server.url)
    client = redis_server.client()
    heard: list[str] = []
    async with Observer() as observer:
        wakeups = observer.enable_wakeups(lambda config, keys: heard.extend(keys))
        await observer.observe({broker: ["emails"]}, 1.0)
        first = await wakeups.subscribed(broker)
        client.client_kill_filter(_id=str(first.client_id))  # the subscriber's connection goes
        await wait_for(lambda: wakeups.redirect_for(broker) not in (None, first), timeout=5.0)
        await observer.observe({broker: ["emails"]}, 1.0)  # the polling connection redirects to the new one
        client.lpush("emails", "m1")
        await wait_for(lambda: heard == ["emails"])
        client.client_kill_filter(_type="normal", skipme=True)  # every other connection, the poll's included
        await wakeups.subscribed(broker, timeout=5.0)
        await observer.observe({broker: ["emails"]}, 1.0)  # reconnected: tracking is turned on again
        await observer.observe({broker: ["emails"]}, 1.0)
        client.lpush("emails", "m2")
        await wait_for(lambda: heard == ["emails", "emails"], timeout=5.0)


async def test_a_quiet_subscriber_pings_and_a_silent_one_subscribes_again(redis_server: RedisServer) -> None:
    broker = BrokerConfig(url=redis_server.url)
    client = redis_server.client()
    heard: list[str] = []
    async with Observer() as observer:
        observer.enable_wakeups(lambda config, keys: heard.extend(keys))
        assert observer.wakeups is not None
        observer.wakeups._keepalive = 0.2
        first = await observer.wakeups.subscribed(broker)
        await asyncio.sleep(0.5)  # quiet: PINGed, answered, still the same subscription
        assert observer.wakeups.redirect_for(broker) == first
        pinged = client.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
        assert pinged >= 1
        client.client_pause(1000)  # the server answers nothing for a second: no PONG within two keepalives
        await wait_for(lambda: observer.wakeups.redirect_for(broker) not in (None, first), timeout=5.0)


@pytest.mark.parametrize(
    ("rules", "refused"),
    [
        (["+@all", "-client|tracking"], "CLIENT TRACKING refused"),
        (["+@all", "-subscribe"], "no permissions to run the 'subscribe' command"),
    ],
)
async def test_a_broker_that_refuses_wakeups_is_polled_as_before(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, rules: list[str], refused: str
) -> None:
    client = redis_server.client()
    client.acl_setuser("poller", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"], commands=rules)
    host_port = redis_server.url.split("//", 1)[1]
    broker = BrokerConfig(url=f"redis://poller:secret@{host_port}")
    caplog.set_level(logging.WARNING)
    async with Observer() as observer:
        observer.enable_wakeups(lambda config, keys: None)
        for _ in range(5):
            client.lpush("emails", "m")
            observed = (await observer.observe({broker: ["emails"]}, 1.0))[broker]
            assert observed.error is None, observed.error
            await asyncio.sleep(0.05)
        assert observed.queues["emails"].backlog == 5
        assert observer.wakeups is not None and observer.wakeups.redirect_for(broker) is None
        for subscriber in observer.wakeups._subscribers.values():
            subscriber.retry_at = 0.0  # ten minutes on: tried again, refused again, and not logged again
        for _ in range(3):
            await observer.observe({broker: ["emails"]}, 1.0)
            await asyncio.sleep(0.1)
    warnings = [r.getMessage() for r in caplog.records if "no wake-ups" in r.getMessage()]
    assert len(warnings) == 1 and refused in warnings[0], warnings
    assert "secret" not in warnings[0]


# --- the scaling loop --------------------------------------------------------------------------------


async def test_a_woken_queue_is_polled_at_once_and_a_busy_one_not_too_often(redis_server: RedisServer) -> None:
    broker = BrokerConfig(url=redis_server.url)
    backend = RecordingBackend({(A, "emails"): 0, (A, "reports"): 0, (B, "other"): 0})
    reports: list[PoolResult] = []
    clock = Clock()
    async with Observer() as observer:
        loop = make_loop(backend, observer, clock, reports)
        loop.register(A, broker, {"emails": QueuePlan(POLICY, 2.0), "reports": QueuePlan(POLICY, 2.0)})
        loop.register(B, broker, {"other": QueuePlan(POLICY, 2.0)})
        await loop.run_once()
        assert len(reports) == 2
        clock.now += 1.0  # half an interval on: nothing is due
        assert await loop.run_once() == []
        loop.wake(broker, ["emails\x06\x163", "unrelated", "workerpool:reports:reports"])
        woken = await loop.run_once()
        assert [(r.pool, [q.queue for q in r.queues]) for r in woken] == [(A, ["emails"])]
        clock.now += 0.1  # just polled: a wake-up now waits for a quarter of the interval since that poll
        loop.wake(broker, ["emails"])
        assert await loop.run_once() == []
        clock.now += 2.0 * WAKE_MIN_GAP
        assert [r.pool for r in await loop.run_once()] == [A]
        clock.now += 2.0 * WAKE_MIN_GAP
        loop.wake(broker, ["emails"])  # while a tick runs: the loop clears its wake-up event after the tick ...
        clock.now += 0.05
        assert loop._seconds_to_next_due() == 0.0, "... and must not sleep past a wake-up that is already due"
        assert A in [r.pool for r in await loop.run_once()]
        loop.unregister(A)
        loop.wake(broker, ["emails"])  # a pool gone wakes nothing
        assert await loop.run_once() == []


async def test_a_burst_is_acted_on_within_a_round_trip_not_at_the_next_poll(redis_server: RedisServer) -> None:
    broker = BrokerConfig(url=redis_server.url)
    backend = RecordingBackend({(A, "emails"): 0})
    reports: list[PoolResult] = []
    stop = asyncio.Event()
    interval = 10.0  # the next poll is 10 s after the first: only a wake-up comes in time
    async with Observer() as observer:
        loop = make_loop(backend, observer, time.time, reports)  # type: ignore[arg-type]
        wakeups = observer.enable_wakeups(loop.wake)
        await wakeups.subscribed(broker)
        loop.register(A, broker, {"emails": QueuePlan(POLICY, interval)})
        running = asyncio.create_task(loop.run(stop))
        try:
            await wait_for(lambda: len(reports) == 1)  # the first poll, on a connection that tracks its reads
            await asyncio.sleep(interval * WAKE_MIN_GAP + 0.1)  # past the least gap after that poll
            landed = time.monotonic()
            redis_server.client().lpush("emails", *[f"m{i}" for i in range(12)])
            await wait_for(lambda: backend.calls, timeout=interval)
            reaction = time.monotonic() - landed
        finally:
            stop.set()
            await running
    assert backend.calls == [(A, "emails", 3, ())]  # ceil(12 / 5)
    assert reaction < 2.0, f"{reaction:.2f} s: the burst waited for the next poll"
