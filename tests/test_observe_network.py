"""The observer through Redis Sentinel, over TLS, and next to a broker that never answers (all real servers)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import trustme

from tests.conftest import RedisServer
from tests.tls import TLSRedis
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.local.embedded_redis import free_port, stop_process
from workerpool_operator.observe import Observer

MASTER_PASSWORD = "m4ster-pw"


def _spawn(args: list[str], ready: Callable[[], object], log: Path, timeout: float = 10.0) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            ready()
            return process
        except (redis.RedisError, OSError):
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError(f"redis-server did not start: see {log}") from None
            time.sleep(0.05)


def _protected_master(workdir: Path, backlog: int) -> RedisServer:
    server = RedisServer(workdir=workdir).start()
    client = redis.Redis(port=server.port)
    if backlog:
        client.lpush("emails", *range(backlog))
    client.config_set("requirepass", MASTER_PASSWORD)
    return server


# --- Sentinel --------------------------------------------------------------------------------------------


@dataclass
class SentinelSetup:
    port: int
    master: RedisServer
    workdir: Path

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    master = _protected_master(tmp_path / "master-a", backlog=2)
    port = free_port()
    config = tmp_path / "sentinel.conf"  # Sentinel insists on a config file it can rewrite
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nlogfile {tmp_path / 'sentinel.log'}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        f"sentinel auth-pass mymaster {MASTER_PASSWORD}\n"
        "sentinel down-after-milliseconds mymaster 60000\n"
    )
    process = _spawn([str(config), "--sentinel"], redis.Redis(port=port, socket_timeout=1).ping, config)
    try:
        yield SentinelSetup(port=port, master=master, workdir=tmp_path)
    finally:
        stop_process(process)
        master.stop()


async def test_sentinel_finds_the_master_and_follows_it_when_re_pointed(sentinel: SentinelSetup) -> None:
    dead = free_port()  # Celery's form lists several sentinels; the first one is down
    url = f"sentinel://:{MASTER_PASSWORD}@127.0.0.1:{dead};sentinel://127.0.0.1:{sentinel.port}"
    config = BrokerConfig(url=url, sentinel_master="mymaster")
    async with Observer() as observer:
        first = (await observer.observe({config: ["emails"]}, timeout=5))[config]
        assert first.ok, first.error
        assert first.queues["emails"].backlog == 2

        other = _protected_master(sentinel.workdir / "master-b", backlog=5)
        try:
            client = sentinel.client()
            client.execute_command("SENTINEL", "REMOVE", "mymaster")
            client.execute_command("SENTINEL", "MONITOR", "mymaster", "127.0.0.1", str(other.port), "1")
            client.execute_command("SENTINEL", "SET", "mymaster", "auth-pass", MASTER_PASSWORD)
            # the old master is still up and its connection still open: only the sentinel says otherwise
            after = (await observer.observe({config: ["emails"]}, timeout=5))[config]
            assert after.ok, after.error
            assert after.queues["emails"].backlog == 5
        finally:
            other.stop()


async def test_unknown_sentinel_master_is_a_clear_value(sentinel: SentinelSetup) -> None:
    config = BrokerConfig(url=f"sentinel://127.0.0.1:{sentinel.port}", sentinel_master="nosuchmaster")
    async with Observer() as observer:
        observation = (await observer.observe({config: ["emails"]}, timeout=5))[config]
    assert str(observation.error).startswith("no sentinel master: ")
    assert "nosuchmaster" in str(observation.error)
    assert not observation.queues["emails"].ok


# --- TLS -------------------------------------------------------------------------------------------------


async def test_tls_with_the_ca_from_the_secret(tls_redis: TLSRedis) -> None:
    tls_redis.client().lpush("emails", "a", "b", "c")
    verified = BrokerConfig(url=f"rediss://127.0.0.1:{tls_redis.port}/0", ca_pem=tls_redis.ca_pem)
    unverified = BrokerConfig(url=f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_cert_reqs=none")
    async with Observer() as observer:
        observed = await observer.observe({verified: ["emails"], unverified: ["emails"]}, timeout=5)
    assert observed[verified].ok, observed[verified].error
    assert observed[verified].queues["emails"].backlog == 3
    assert observed[unverified].queues["emails"].backlog == observed[verified].queues["emails"].backlog


async def test_tls_with_a_wrong_ca_is_refused_with_a_clear_reason(tls_redis: TLSRedis) -> None:
    tls_redis.client().lpush("emails", "a", "b", "c")
    wrong = BrokerConfig(url=f"rediss://127.0.0.1:{tls_redis.port}/0", ca_pem=trustme.CA().cert_pem.bytes().decode())
    system_store = BrokerConfig(url=f"rediss://127.0.0.1:{tls_redis.port}/0")
    plain = BrokerConfig(url=f"redis://127.0.0.1:{tls_redis.port}/0")
    async with Observer() as observer:
        observed = await observer.observe({wrong: ["emails"], system_store: ["emails"], plain: ["emails"]}, timeout=3)
    for config in (wrong, system_store):
        error = str(observed[config].error)
        assert error.startswith("TLS verification failed: "), error
        assert "is the CA right?" in error
        assert not observed[config].queues["emails"].ok
    assert observed[plain].error is not None  # plain Redis protocol to a TLS port fails, never reads zero


# --- a stalled broker ------------------------------------------------------------------------------------


@pytest.fixture
def stalled_broker() -> Iterator[Callable[[], BrokerConfig]]:
    """Plain TCP sockets that accept connections (the kernel completes the handshake) and never answer."""
    sockets: list[socket.socket] = []

    def make() -> BrokerConfig:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sockets.append(sock)
        return BrokerConfig(url=f"redis://127.0.0.1:{sock.getsockname()[1]}/0")

    try:
        yield make
    finally:
        for sock in sockets:
            sock.close()


async def test_a_stalled_broker_costs_only_its_own_timeout(
    redis_server: RedisServer, stalled_broker: Callable[[], BrokerConfig]
) -> None:
    redis_server.client().lpush("emails", "a")
    healthy = [BrokerConfig(url=f"redis://127.0.0.1:{redis_server.port}/{db}") for db in (0, 1, 2)]
    stalled = [stalled_broker(), stalled_broker()]
    timeout = 1.5
    wanted = {config: ["emails"] for config in [stalled[0], *healthy, stalled[1]]}
    async with Observer() as observer:
        started = time.monotonic()
        observed = await observer.observe(wanted, timeout=timeout)
        elapsed = time.monotonic() - started
        again = await observer.observe({healthy[0]: ["emails"]}, timeout=timeout)

    for config in stalled:
        assert observed[config].error == "timed out after 1.5 s"
        assert not observed[config].queues["emails"].ok
        assert timeout * 0.9 <= observed[config].duration < timeout * 2
    slowest_stall = max(observed[config].duration for config in stalled)
    for config in healthy:
        assert observed[config].ok, observed[config].error
        assert observed[config].duration < slowest_stall / 5  # not held up by the stalled ones
    assert observed[healthy[0]].queues["emails"].backlog == 1
    assert elapsed < timeout * 1.8  # two stalled brokers waited for together, not one after the other
    assert again[healthy[0]].ok
