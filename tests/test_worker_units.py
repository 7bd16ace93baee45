"""The worker entrypoint's parts one by one: settings, counting, reports on a real Redis, probes, the image."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, RedisServer
from tests.dockerfile import image as dockerfile_image
from tests.dockerfile import instructions as dockerfile_instructions
from workerpool_operator.reports import decode_report, report_key
from workerpool_operator.worker.config import ENV_VARS, ConfigError, parse_run_args
from workerpool_operator.worker.probes import ProbeFiles, check
from workerpool_operator.worker.reporting import Counts, LoadReporter, count_requests, stale_fields

# --- settings ------------------------------------------------------------------------------------------


def test_environment_gives_every_setting_and_arguments_win():
    env = {
        "WORKERPOOL_APP": "shop.celery:app",
        "WORKERPOOL_QUEUES": "emails, reports",
        "WORKERPOOL_POOL": "GEVENT",
        "WORKERPOOL_CONCURRENCY": "200",
        "WORKERPOOL_PREFETCH_MULTIPLIER": "1",
        "WORKERPOOL_MAX_TASKS_PER_CHILD": "50",
        "WORKERPOOL_SOFT_SHUTDOWN_TIMEOUT": "20",
        "WORKERPOOL_LOGLEVEL": "warning",
        "WORKERPOOL_WORKER_NAME": "shop-emails-7d9f-abcde",
        "WORKERPOOL_BROKER_URL": "redis://broker:6379/1",
        "WORKERPOOL_STATE_DIR": "/run/wp",
        "WORKERPOOL_REPORT_INTERVAL": "1",
        "WORKERPOOL_REPORT_TTL": "10",
        "WORKERPOOL_EXTRA_ARGS": "--without-gossip --time-limit 300",
    }
    config = parse_run_args([], env)
    assert config.queues == ("emails", "reports")
    assert (config.pool, config.concurrency, config.prefetch_multiplier) == ("gevent", 200, 1)
    assert (config.max_tasks_per_child, config.soft_shutdown_timeout, config.loglevel) == (50, 20.0, "warning")
    assert config.worker_name == "shop-emails-7d9f-abcde" and config.state_dir == Path("/run/wp")
    assert (config.report_interval, config.report_ttl) == (1.0, 10.0)
    assert config.celery_argv() == [
        "worker",
        "--pool",
        "gevent",
        "--loglevel",
        "warning",
        "--hostname",
        "celery@shop-emails-7d9f-abcde",
        "--queues",
        "emails,reports",
        "--concurrency",
        "200",
        "--prefetch-multiplier",
        "1",
        "--max-tasks-per-child",
        "50",
        "--without-gossip",
        "--time-limit",
        "300",
    ]
    overridden = parse_run_args(["--pool", "solo", "--concurrency", "1", "--", "-O", "fair"], env)
    assert (overridden.pool, overridden.concurrency, overridden.extra_args) == ("solo", 1, ("-O", "fair"))


def test_defaults():
    config = parse_run_args(["--app", "a:app"], {})
    assert (config.pool, config.concurrency, config.soft_shutdown_timeout, config.queues) == ("prefork", None, 0, ())
    assert config.state_dir == Path("/tmp/workerpool") and config.worker_name  # the hostname
    assert "--concurrency" not in config.celery_argv()


def test_every_setting_has_an_environment_variable_and_an_option():
    options = parse_run_args(["--app", "a"], {})
    for env, dest, help_text in ENV_VARS:
        assert env.startswith("WORKERPOOL_") and help_text
        assert dest == "broker_url_file" or hasattr(options, dest)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKERPOOL_POOL": "fibers"}, "unknown pool 'fibers'"),
        ({"WORKERPOOL_CONCURRENCY": "0"}, "must be at least 1"),
        ({"WORKERPOOL_PREFETCH_MULTIPLIER": "1.5"}, "must be a whole number"),
        ({"WORKERPOOL_SOFT_SHUTDOWN_TIMEOUT": "-1"}, "must be at least 0"),
        ({"WORKERPOOL_SOFT_SHUTDOWN_TIMEOUT": "nan"}, "must be at least 0"),
        ({"WORKERPOOL_LOGLEVEL": "loud"}, "unknown log level"),
        ({"WORKERPOOL_REPORT_INTERVAL": "5", "WORKERPOOL_REPORT_TTL": "4"}, "must be longer than the interval"),
        ({"WORKERPOOL_EXTRA_ARGS": "--x 'unclosed"}, "cannot be parsed"),
    ],
)
def test_bad_settings_say_which_and_why(env: dict[str, str], message: str):
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        parse_run_args([], {"WORKERPOOL_APP": "a:app", **env})
    assert raised.value.code == 2 and "\n" not in str(raised.value)


def test_broker_url_from_a_file(tmp_path: Path):
    secret = tmp_path / "url"
    secret.write_text("rediss://:pw@redis:6380/0\n")
    assert (
        parse_run_args(["--app", "a", "--broker-url-file", str(secret)], {}).broker_url == "rediss://:pw@redis:6380/0"
    )
    secret.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty") as raised:
        parse_run_args(["--app", "a", "--broker-url-file", str(secret)], {})
    assert raised.value.code == 4


# --- counting ------------------------------------------------------------------------------------------


@dataclass(eq=False)
class FakeRequest:
    """Stands for a Celery Request: only ``delivery_info`` is read."""

    routing_key: str | None
    delivery_info: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.delivery_info = {"routing_key": self.routing_key} if self.routing_key else {}


def test_reserved_counts_only_what_has_not_started_and_splits_by_queue():
    a1, a2, b1 = FakeRequest("a"), FakeRequest("a"), FakeRequest("b")
    r1, r2, unknown = FakeRequest("a"), FakeRequest("b"), FakeRequest("elsewhere")
    counts = count_requests(active=[a1, a2, b1], reserved=[a1, a2, b1, r1, r2, unknown], queues=["a", "b"])
    assert counts == {"a": Counts(running=2, reserved=2), "b": Counts(running=1, reserved=1)}
    assert count_requests([], [], ["q"]) == {"q": Counts(0, 0)}


def test_stale_fields_are_old_or_unreadable_but_never_our_own():
    now = 1000.0
    fields: dict[bytes | str, bytes | str] = {
        "fresh": json.dumps({"heartbeat": 995.0}),
        "old": json.dumps({"heartbeat": 900.0}),
        b"junk": b"{",
        "me": json.dumps({"heartbeat": 1.0}),
    }
    assert sorted(stale_fields(fields, now, ttl=15, own="me")) == ["junk", "old"]


# --- reports on a real Redis ---------------------------------------------------------------------------


def test_reporter_writes_prunes_expires_and_removes(redis_server: RedisServer):
    client = redis_server.client()
    counts = {"a": Counts(running=2, reserved=3)}
    reporter = LoadReporter(
        client=redis_server.client(),
        worker="pod-1",
        queues=["a", "b"],
        counts=lambda: counts,
        done=lambda: 7,
        concurrency=4,
        ttl=15,
        global_keyprefix="p:",
    )
    client.hset(report_key("a", "p:"), mapping={"gone": json.dumps({"heartbeat": 1.0}), "peer": "{}"})
    client.hset(report_key("a", "p:"), "peer", json.dumps({"heartbeat": time.time()}))
    reporter.publish(now=time.time())
    a = decode_report("pod-1", client.hget(report_key("a", "p:"), "pod-1") or "")
    b = decode_report("pod-1", client.hget(report_key("b", "p:"), "pod-1") or "")
    assert a is not None and (a.running, a.reserved, a.done, a.concurrency) == (2, 3, 7, 4)
    assert b is not None and (b.running, b.reserved, b.done) == (0, 0, 7)
    assert set(client.hkeys(report_key("a", "p:"))) == {"pod-1", "peer"}
    assert 0 < client.ttl(report_key("b", "p:")) <= 15
    reporter.remove()
    assert client.hkeys(report_key("a", "p:")) == ["peer"] and not client.exists(report_key("b", "p:"))


def _previous_image_publishes(client: Any, key: str, worker: str, running: int) -> None:
    """What a worker of the previous image did every interval: write JSON, then delete every other field it
    cannot read as a live JSON report."""
    now = time.time()
    client.hset(key, worker, json.dumps({"worker": worker, "running": running, "heartbeat": now}))
    for name, raw in client.hgetall(key).items():
        try:
            alive = name == worker or now - float(json.loads(raw).get("heartbeat", 0.0)) <= 15
        except (ValueError, TypeError, AttributeError):
            alive = False
        if not alive:
            client.hdel(key, name)


def test_a_rolling_update_keeps_every_workers_report(redis_server: RedisServer):
    """Old and new workers share a queue's hash: the new one writes JSON while an old one is there (which
    would delete format 2), then format 2 once the old one is gone."""
    client = redis_server.client()
    key = report_key("a")
    reporter = LoadReporter(client, "new", ["a"], lambda: {"a": Counts(running=1)}, lambda: 0, 4, ttl=15)
    _previous_image_publishes(client, key, "old", running=2)
    for _ in range(2):
        reporter.publish()
        _previous_image_publishes(client, key, "old", running=2)
        raw = client.hget(key, "new")
        assert raw is not None and json.loads(raw)["format"] == 1  # kept by the old worker's pruning
        assert (load := decode_report("new", raw)) is not None and load.running == 1
    client.hdel(key, "old")  # the old worker stopped
    reporter.publish()  # still format 1: it saw the old worker when it last read the hash
    reporter.publish()
    raw = client.hget(key, "new")
    assert isinstance(raw, str) and raw.startswith("2 ")
    assert (load := decode_report("new", raw)) is not None and (load.running, load.concurrency) == (1, 4)


def test_reporter_survives_a_broker_outage(redis_server: RedisServer, caplog: pytest.LogCaptureFixture):
    reporter = LoadReporter(redis_server.client(), "pod-1", ["a"], dict, lambda: 0, 1, ttl=15)
    redis_server.stop()
    reporter.publish()
    reporter.publish()
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1  # logged once
    redis_server.start()
    reporter.publish()
    assert redis_server.client().hexists(report_key("a"), "pod-1")


# --- probes --------------------------------------------------------------------------------------------


def test_probe_checks(tmp_path: Path):
    files = ProbeFiles(tmp_path / "state")
    files.reset()
    assert check("alive", files, 30) == (False, f"not alive: no heartbeat file {files.heartbeat}")
    files.beat()
    assert check("alive", files, 30)[0] and not check("ready", files, 30)[0]
    files.mark_ready()
    assert check("ready", files, 30)[0]
    old = time.time() - 100
    os.utime(files.heartbeat, (old, old))
    assert check("alive", files, 30)[0] is False and check("ready", files, 30)[0] is False
    assert check("alive", files, 300)[0] is True
    files.clear()
    assert not files.ready.exists() and not files.heartbeat.exists()


def test_probe_command_is_quick_and_imports_neither_celery_nor_redis(tmp_path: Path):
    files = ProbeFiles(tmp_path)
    files.reset()
    files.beat()
    code = (
        "import sys; from workerpool_operator.worker.main import main; "
        f"rc = main(['check', 'alive', '--state-dir', {str(tmp_path)!r}]); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu', 'redis', 'kopf')); "
        "print(heavy); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    not_ready = subprocess.run(
        [sys.executable, "-m", "workerpool_operator.worker.main", "check", "ready", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert not_ready.returncode == 1 and "not ready" in not_ready.stderr


def test_worker_package_never_imports_kopf_or_kubernetes():
    modules = ["main", "config", "probes", "reporting", "runner", "pools"]
    code = (
        "import sys\n"
        + "".join(f"import workerpool_operator.worker.{m}\n" for m in modules)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes', 'pydantic', 'aiohttp'))\n"
        + "print(bad)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- the image -----------------------------------------------------------------------------------------

DOCKERFILE = REPO / "Dockerfile"


def test_dockerfile_runs_the_entrypoint_as_a_numeric_user_under_tini_in_exec_form():
    instructions = dockerfile_image(DOCKERFILE.read_text(), "worker")
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert len(froms) >= 2 and all("slim" in f for f in froms if "python" in f)  # multi-stage, slim bases
    user = [arg for op, arg in instructions if op == "USER"][-1]
    assert re.fullmatch(r"\d+(:\d+)?", user) and not user.startswith("0")
    entrypoint = json.loads([arg for op, arg in instructions if op == "ENTRYPOINT"][-1])  # exec form is JSON
    assert entrypoint[0].endswith("tini") and "--" in entrypoint and entrypoint[-1] == "workerpool-worker"
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "tini" in runs and "[worker]" in runs
    assert not any(op == "CMD" and not arg.startswith("[") for op, arg in instructions)


def test_example_child_image_builds_from_the_base_and_names_an_app_that_exists():
    example = REPO / "worker-image" / "example-app"
    instructions = dockerfile_instructions((example / "Dockerfile").read_text())
    assert [op for op, _ in instructions if op == "FROM"] == ["FROM"]
    app = next(arg for op, arg in instructions if op == "ENV" and "WORKERPOOL_APP" in arg)
    module = re.search(r"WORKERPOOL_APP=([\w.]+)", app)
    assert module is not None
    assert (example / (module.group(1).replace(".", "/") + ".py")).exists()
    user = [arg for op, arg in instructions if op == "USER"][-1]
    assert re.fullmatch(r"\d+(:\d+)?", user)
