"""Shared fixtures: real Redis, a Kubernetes API emulator, and the real operator running against it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.kube import KubeCluster
from tests.tls import TLSRedis, tls_redis_server
from workerpool_operator.local.embedded_redis import EmbeddedRedis

REPO = Path(__file__).resolve().parent.parent


# --- markers and options -------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--with-e2e",
        action="store_true",
        default=False,
        help="run the e2e tests against the real cluster in KUBECONFIG",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--with-e2e"):
        return
    skip = pytest.mark.skip(reason="needs a real cluster: run with --with-e2e and KUBECONFIG set")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


# --- Redis ---------------------------------------------------------------------------------------------


class RedisServer(EmbeddedRedis):
    """A real ``redis-server`` process on a free loopback port, in a directory of the test's."""

    def __init__(self, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(workdir=workdir, extra_args=extra_args)

    def start(self) -> RedisServer:
        super().start()
        assert self.port != 6379, "never use the shared Redis on 6379"
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh real redis-server for one test. ``redis_server.url`` is its URL."""
    server = RedisServer(workdir=tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    """A fresh real redis-server speaking TLS only, its certificate from a CA of the test's (see tests/tls.py)."""
    with tls_redis_server(tmp_path_factory.mktemp("tls-redis")) as server:
        yield server


# --- Kubernetes ----------------------------------------------------------------------------------------


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeCluster]:
    """The Kubernetes API emulator; ``KUBECONFIG`` points kopf and the kubernetes client at it."""
    cluster = KubeCluster(tmp_path).start()
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    try:
        yield cluster
    finally:
        cluster.stop()


class _ErrorCollector(logging.Handler):
    """Keeps every ERROR record the operator logs, so a failing handler fails the test."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class RunningOperator:
    """The real operator (kopf) running against the emulator in a thread of its own."""

    cluster: KubeCluster
    errors: _ErrorCollector
    runner: object
    expected_errors: list[str] = field(default_factory=list)

    def expect_error(self, fragment: str) -> None:
        """Declare that a logged error containing ``fragment`` is part of the test."""
        self.expected_errors.append(fragment)

    def unexpected_errors(self) -> list[str]:
        messages = [r.getMessage() for r in self.errors.records]
        return [m for m in messages if not any(fragment in m for fragment in self.expected_errors)]


def operator_args(namespace: str | None = None) -> list[str]:
    args = ["run", "-m", "workerpool_operator.kube.handlers", "--standalone", "--verbose"]
    args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
    return args


@pytest.fixture
def operator(kube: KubeCluster) -> Iterator[RunningOperator]:
    """Runs the real operator for the duration of a test; any handler exception fails the test."""
    from kopf.testing import KopfRunner

    collector = _ErrorCollector()
    root = logging.getLogger()
    root.addHandler(collector)
    os.environ.setdefault("WORKERPOOL_OPERATOR_METRICS_PORT", "0")
    runner = KopfRunner(operator_args(), timeout=60)
    running = RunningOperator(cluster=kube, errors=collector, runner=runner)
    try:
        with runner:
            _wait_for_watch(kube, "workerpools")
            yield running
    finally:
        root.removeHandler(collector)
    assert runner.exception is None, f"the operator crashed: {runner.exception!r}"
    unexpected = running.unexpected_errors()
    assert not unexpected, "the operator logged errors:\n" + "\n".join(unexpected)


def _wait_for_watch(kube: KubeCluster, plural: str = "customresourcedefinitions", timeout: float = 30.0) -> None:
    """Block until kopf watches ``plural``, so tests do not race the operator's start-up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for request in kube.requests():
            resource = request.resource
            if resource is not None and resource.plural == plural and request.params.get("watch"):
                return
        time.sleep(0.05)
    raise AssertionError(f"the operator never started watching {plural}")
