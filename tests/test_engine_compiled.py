"""The compiled engine decides exactly as the pure one.

The operator image builds the package with ``WORKERPOOL_OPERATOR_COMPILE=1`` (setup.py): the modules of
``decide()``'s hot path are compiled to C by mypyc from the same source. Here the wheel is built the way the
Dockerfile builds it (pip, an isolated build environment), installed into a folder of its own, and a fresh
interpreter that loads the compiled modules runs the engine's tests against it: among them the digest of every
decision and state of 320 queues over 12 polls (tests/test_engine_speedups.py), so one decision that differs
by one replica or one character of its reason fails.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from bench.bench_engine import build_compiled

from tests.conftest import REPO

# The engine's tests, the simulator's (every trace through decide() and the executor) and the loop's.
ENGINE_TESTS = [
    "tests/test_engine.py",
    "tests/test_engine_properties.py",
    "tests/test_engine_speedups.py",
    "tests/test_engine_spikes.py",
    "tests/test_engine_time.py",
    "tests/test_engine_wait_watch.py",
    "tests/test_engine_waits.py",
    "tests/test_execute.py",
    "tests/test_simulate.py",
    "tests/test_scaling_loop.py",
]


def compiled_modules() -> list[str]:
    """The module names setup.py compiles (its ``COMPILED`` list of paths)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    (paths,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets)
    ]
    files = ast.literal_eval(paths)
    return [f.removeprefix("operator/").removesuffix(".py").replace("/", ".") for f in files]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed in)."""
    return build_compiled(tmp_path_factory.mktemp("compiled"))


@pytest.mark.timeout(900)  # (it builds the wheel: the fixture's time counts here)
def test_the_compiled_wheel_carries_each_hot_module_as_an_extension(compiled: tuple[Path, Path]) -> None:
    wheel, _ = compiled
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    extensions = {n.split(".cpython-")[0].replace("/", ".") for n in names if n.endswith(".so")}
    assert {"workerpool_operator.engine.decide", "workerpool_operator.engine.forecast"} <= set(compiled_modules())
    assert set(compiled_modules()) <= extensions
    # the source stays beside it (tracebacks, and the uncompiled rest of the package)
    assert "workerpool_operator/engine/decide.py" in names
    assert "workerpool_operator/engine/schedules.py" in names


@pytest.mark.timeout(900)  # (the build, then 160 tests in a fresh interpreter, on a busy CI machine)
def test_the_compiled_engine_passes_the_engines_tests(compiled: tuple[Path, Path]) -> None:
    _, site = compiled
    env = {**os.environ, "PYTHONPATH": str(site), "WORKERPOOL_TEST_COMPILED": "1"}  # (test_engine_speedups checks it)
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, sys; print('\\n'.join(importlib.import_module(m).__file__ for m in sys.argv[1:]))",
            *compiled_modules(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert loaded.returncode == 0, loaded.stderr
    files = loaded.stdout.split()
    assert files and all(f.startswith(str(site)) and f.endswith(".so") for f in files), files

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ENGINE_TESTS],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
