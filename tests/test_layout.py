"""The package's shape, as docs/architecture.md describes it: parts that import only what they may, and classes and
functions small enough to change safely. These are rules of this project, read off the code with ``ast``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "operator" / "workerpool_operator"
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 80
LONG_ON_PURPOSE = {"engine/decide.py:decide"}  # its docstring gives the benchmark figure that keeps it in one piece

# Pure modules: no I/O library, no clock (the caller passes `now`).
PURE = [
    "spec.py",
    "brokers.py",
    "observation.py",
    "reports.py",
    "drain_requests.py",
    "beat_forecast.py",
    "engine/decide.py",
    "engine/forecast.py",
    "engine/drain.py",
    "engine/schedules.py",
    "engine/spikes.py",
    "worker_env.py",
    "worker_contract.py",
    "exit_codes.py",
    "failures.py",
    "scaling_types.py",
    "worker_groups.py",
    "wake_index.py",
    "poll_schedule.py",
    "crd_keywords.py",
    "engine/execute.py",
    "observe/replies.py",
    "observe/failures.py",
    "kube/plan.py",
    "kube/fields.py",
    "kube/render.py",
    "kube/components.py",
    "kube/status.py",
    "kube/conditions.py",
    "kube/beats.py",
    "keda_import.py",
    "keda_triggers.py",
    "keda_broker.py",
    "deployment_import.py",
    "record/arrivals.py",
    "record/task_events.py",
    "record/report_estimate.py",
    "record/outcome.py",
    "record/trace_csv.py",
]
IO_LIBRARIES = {"redis", "kubernetes", "kopf", "celery", "kombu", "aiohttp", "subprocess", "socket", "requests"}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield str(path.relative_to(PACKAGE)), ast.parse(path.read_text())


def io_imports(tree: ast.Module) -> set[str]:
    """What ``tree`` imports of the I/O libraries, apart from exception types: a pure module may name those (to
    classify what the I/O part raised, as ``observe/failures.py`` does), nothing else."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] in IO_LIBRARIES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in IO_LIBRARIES:
            found |= {f"{node.module}.{alias.name}" for alias in node.names if not alias.name.lower().endswith("error")}
    return found


def imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_class_or_function_is_too_long() -> None:
    too_long = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit and f"{name}:{node.name}" not in LONG_ON_PURPOSE:
                too_long.append(f"{name}:{node.name} ({lines} lines)")
    assert too_long == []


def test_decide_says_why_it_is_one_function() -> None:
    tree = dict(modules())["engine/decide.py"]
    decide = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "decide")
    assert "ms" in (ast.get_docstring(decide) or ""), "decide's docstring gives its benchmark figure"


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io(module: str) -> None:
    tree = dict(modules())[module]
    assert io_imports(tree) == set(), f"{module} imports {sorted(io_imports(tree))}"
    assert not any(n.startswith("workerpool_operator.kube.") and n.endswith(("api", "backend")) for n in imported(tree))


def test_the_parts_import_only_what_they_may() -> None:
    problems = []
    for name, tree in modules():
        found = imported(tree)
        part = name.split("/")[0] if "/" in name else "core"
        if part in ("local", "sim", "worker") and any(n.startswith("workerpool_operator.kube") for n in found):
            problems.append(f"{name} imports kube/")
        if part == "worker" and {"kopf", "kubernetes"} & {n.split(".")[0] for n in found}:
            problems.append(f"{name} imports kopf or kubernetes (the worker image has neither)")
        if (
            part == "core"
            and name not in ("cli.py",)
            and any(
                n.startswith("workerpool_operator.") and n.split(".")[1] in ("kube", "local", "sim", "worker")
                for n in found
            )
        ):
            problems.append(f"{name} (the core) imports an outer part")
    assert problems == []


def test_the_layout_is_the_documented_one() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = [name for name, _ in modules() if not name.endswith("__init__.py") and f"{Path(name).name}`" not in text]
    assert missing == [], "docs/architecture.md names every module"
