"""The command line: what `run` hands to kopf, and what the operator's settings make of it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import kopf
import pytest

from workerpool_operator import __version__
from workerpool_operator.cli import NAMESPACED_ENV, build_parser, kopf_command
from workerpool_operator.kube import handlers


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "workerpool_operator.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"workerpool-operator {__version__}"


def test_run_cluster_wide_with_peering_by_default() -> None:
    argv, env = kopf_command(build_parser().parse_args(["run", "--liveness", "http://0.0.0.0:8080/healthz"]))
    assert argv[:4] == ["kopf", "run", "-m", "workerpool_operator.kube.handlers"]
    assert "--all-namespaces" in argv and "--standalone" not in argv
    assert argv[argv.index("--peering") + 1] == "workerpool-operator"
    assert argv[argv.index("--liveness") + 1] == "http://0.0.0.0:8080/healthz"
    assert env == {}


def test_run_namespaced_turns_scanning_off(monkeypatch: pytest.MonkeyPatch) -> None:
    argv, env = kopf_command(build_parser().parse_args(["run", "-n", "apps", "-n", "jobs", "--standalone"]))
    assert argv.count("--namespace") == 2 and "--all-namespaces" not in argv and "--standalone" in argv
    assert env == {NAMESPACED_ENV: "1"}

    for value, disabled in ((None, False), ("1", True)):
        if value is None:
            monkeypatch.delenv(NAMESPACED_ENV, raising=False)
        else:
            monkeypatch.setenv(NAMESPACED_ENV, value)
        settings = kopf.OperatorSettings()
        configure: Any = handlers.configure  # kopf's decorator types it as a full activity callback
        configure(settings=settings)
        assert settings.scanning.disabled is disabled
        assert settings.persistence.finalizer == "workerpool.dev/finalizer"
