"""``workerpool-worker flower`` for real, with the environment the operator renders for a pod (Secrets filled in)."""

from __future__ import annotations

import base64
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.worker_process import WorkerProcess, entrypoint_env, wait_for
from workerpool_operator.spec import WorkerPool
from workerpool_operator.worker import flower as flower_mode
from workerpool_operator.worker.config import EX_CONFIG, ConfigError
from workerpool_operator.worker.mode_config import FlowerConfig
from workerpool_operator.worker_env import flower_environment

USERS = "ops:s3cret,viewer:v1ew"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rendered_env(flower: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The Flower container's environment as a pod gets it: plain values, and Secret keys resolved."""
    pool = WorkerPool.from_object(
        {
            "metadata": {"name": "shop"},
            "spec": {
                "broker": {"url": "redis://redis:6379/0"},
                "app": "tests.celery_apps.periodic:app",
                "template": {"image": "shop"},
                "queues": [{"name": "periodic"}],
                "flower": flower,
            },
        }
    )
    env = {}
    for item in flower_environment(pool, pool.spec.flower):  # type: ignore[arg-type]
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = secrets[item["valueFrom"]["secretKeyRef"]["key"]]
    return {k: v for k, v in env.items() if not k.startswith("WORKERPOOL_")}


def get(url: str, user: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def test_flower_serves_behind_basic_auth_from_the_rendered_environment(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    flower = {"auth": {"basicFrom": {"secretKeyRef": {"name": "flower", "key": "users"}}}, "urlPrefix": "ops/flower"}
    port = free_port()
    env = rendered_env(flower, {"users": USERS}) | {
        "FLOWER_PORT": str(port),
        "FLOWER_ADDRESS": "127.0.0.1",
        "WORKERPOOL_APP": "tests.celery_apps.periodic:app",
    }
    assert env["FLOWER_ENABLE_EVENTS"] == "false" and env["FLOWER_PURGE_OFFLINE_WORKERS"] == "600"
    process = WorkerProcess(entrypoint_env(redis_server.url, tmp_path / "state", env), ("flower",), tmp_path / "log")
    base = f"http://127.0.0.1:{port}/ops/flower"
    process.start()
    try:
        wait_for(lambda: get(f"{base}/healthcheck")[0] == 200, 60, process.output)
        assert get(f"{base}/healthcheck") == (200, "OK")  # the probes' path: no credentials needed
        assert get(f"{base}/workers")[0] == 401
        assert get(f"{base}/workers", "ops:wrong")[0] == 401
        status, page = get(f"{base}/workers", "viewer:v1ew")
        assert status == 200 and "Flower" in page
    finally:
        process.terminate()
        code = process.wait(30)
        process.close()
    assert code == 0, process.output()[-2000:]


def test_an_image_without_flower_gets_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flower_mode, "flower_installed", lambda: False)
    with pytest.raises(ConfigError, match="Flower is not installed in this image") as raised:
        flower_mode.run_flower(FlowerConfig(app="tests.celery_apps.periodic:app"))
    assert raised.value.code == EX_CONFIG
