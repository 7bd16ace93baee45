"""`workerpool-worker --log-format json`: a real worker's whole output, from start to warm shutdown, is one
JSON object per line with the operator's keys (message, timestamp, severity), and task lines name the task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.worker_process import producer, running_worker, wait_for
from workerpool_operator.worker.config import ConfigError, parse_run_args
from workerpool_operator.worker.logs import severity


def lines(text: str) -> list[dict[str, Any]]:
    parsed = []
    for line in text.splitlines():
        if line.strip():
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line: {line!r}\n{text[-3000:]}")
    return parsed


def test_a_json_worker_writes_only_json_lines(redis_server: RedisServer, tmp_path: Path) -> None:
    env = {"workerpool_log_format": "json", "workerpool_queues": "logs", "workerpool_concurrency": "1"}
    with running_worker(redis_server.url, tmp_path, env) as worker:
        worker.wait_ready()
        producer(redis_server.url).send_task("record", args=("logs", 0.1), queue="logs")
        wait_for(lambda: "succeeded" in worker.output(), 20, worker.output)
        worker.terminate()
        assert worker.wait() == 0
        records = lines(worker.output())
    assert records and all({"message", "timestamp", "severity", "logger"} <= set(r) for r in records)
    assert {r["severity"] for r in records} <= {"debug", "info", "warn", "error", "fatal"}
    messages = [r["message"] for r in records]
    assert any(m.endswith("ready.") for m in messages), messages
    done = next(r for r in records if "succeeded" in r["message"])
    assert done["task_name"] == "record" and done["task_id"] in done["message"]


def test_plain_stays_celerys_own(redis_server: RedisServer, tmp_path: Path) -> None:
    with running_worker(redis_server.url, tmp_path, {"workerpool_queues": "logs"}) as worker:
        worker.wait_ready()
        worker.terminate()
        worker.wait()
    assert "[queues]" in worker.output() and not worker.output().lstrip().startswith("{")


def test_log_format_setting() -> None:
    environ = {"WORKERPOOL_APP": "a:b"}
    assert parse_run_args([], environ).log_format == "plain"
    assert parse_run_args(["--log-format", "JSON"], environ).log_format == "json"
    assert parse_run_args([], {**environ, "WORKERPOOL_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="unknown log format 'xml'"):
        parse_run_args(["--log-format", "xml"], environ)
    assert [severity(level) for level in (10, 20, 30, 40, 50)] == ["debug", "info", "warn", "error", "fatal"]
