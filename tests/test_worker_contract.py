"""The worker contract: what the operator renders into a pod is exactly what the entrypoint of that pod's mode
parses, names and values both, and the worker side of the contract imports neither kopf nor Kubernetes."""

from __future__ import annotations

import ast
from typing import Any

from tests.conftest import REPO
from workerpool_operator import worker_contract as contract
from workerpool_operator.spec import WorkerPool
from workerpool_operator.worker.config import parse_run_args
from workerpool_operator.worker.mode_config import parse_beat_args, parse_flower_args
from workerpool_operator.worker_env import beat_environment, flower_environment, worker_environment

POOL = WorkerPool.from_object(
    {
        "metadata": {"name": "shop", "namespace": "apps"},
        "spec": {
            "broker": {"url": "redis://redis.apps:6379/0"},
            "app": "shop.celery:app",
            "template": {"image": "registry.example/shop:1"},
            "queues": [{"name": "mail", "pool": "prefork", "concurrency": 4, "maxTasksPerChild": 100}],
            "beat": {"scheduler": "django_celery_beat.schedulers:DatabaseScheduler"},
            "flower": {"taskEvents": True, "auth": {"basicFrom": {"secretKeyRef": {"name": "users", "key": "u"}}}},
        },
    }
)


def ours(env: list[dict[str, Any]]) -> dict[str, str]:
    """The WORKERPOOL_* part of a rendered environment, as the pod sees it (field refs resolved to a pod name)."""
    resolved = {e["name"]: e.get("value", "shop-mail-7d9f-abcde") for e in env}
    return {name: value for name, value in resolved.items() if name.startswith("WORKERPOOL_")}


def test_every_variable_rendered_for_a_mode_is_parsed_by_that_mode() -> None:
    rendered = {
        contract.WORKER: ours(worker_environment(POOL, POOL.spec.queues[0])),
        contract.BEAT: ours(beat_environment(POOL, POOL.spec.beat)),  # type: ignore[arg-type]
        contract.FLOWER: ours(flower_environment(POOL, POOL.spec.flower)),  # type: ignore[arg-type]
    }
    for variables, env in rendered.items():
        assert set(env) <= {v.name for v in variables}, set(env) - {v.name for v in variables}


def test_the_entrypoint_reads_what_the_operator_rendered() -> None:
    worker = parse_run_args([], ours(worker_environment(POOL, POOL.spec.queues[0])))
    assert (worker.app, worker.queues, worker.pool, worker.concurrency) == ("shop.celery:app", ("mail",), "prefork", 4)
    assert worker.max_tasks_per_child == 100 and worker.task_events and worker.soft_shutdown_timeout == 3625
    assert worker.broker_url == "redis://redis.apps:6379/0" and worker.worker_name == "shop-mail-7d9f-abcde"
    beat = parse_beat_args([], ours(beat_environment(POOL, POOL.spec.beat)))  # type: ignore[arg-type]
    assert beat.scheduler == "django_celery_beat.schedulers:DatabaseScheduler" and beat.max_interval == 5
    assert beat.schedule_file == "/tmp/celerybeat-schedule"
    flower = parse_flower_args([], ours(flower_environment(POOL, POOL.spec.flower)))  # type: ignore[arg-type]
    assert flower.app == "shop.celery:app" and str(flower.state_dir) == contract.DEFAULT_STATE_DIR


def test_every_flag_is_its_variable_and_names_are_unique() -> None:
    for variables in (contract.WORKER, contract.BEAT, contract.FLOWER):
        names = [v.name for v in variables]
        assert len(names) == len(set(names))
        assert all(v.name.startswith("WORKERPOOL_") and v.help for v in variables)
    assert contract.EVERY["WORKERPOOL_STATE_DIR"].flag == "--state-dir"


def test_the_contract_imports_only_the_core() -> None:
    tree = ast.parse((REPO / "operator" / "workerpool_operator" / "worker_contract.py").read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert modules <= {"__future__", "dataclasses", "workerpool_operator", "workerpool_operator.reports"}
