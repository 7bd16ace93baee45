"""The command line: what `run` hands to kopf, and what the operator's settings make of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest

from workerpool_operator import __version__
from workerpool_operator.cli import LEASE_ENV, NAMESPACED_ENV, build_parser, kopf_command
from workerpool_operator.kube import handlers


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "workerpool_operator.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"workerpool-operator {__version__}"


def test_run_elects_a_leader_through_a_lease_by_default() -> None:
    args = build_parser().parse_args(["run", "--liveness", "http://0.0.0.0:8080/healthz"])
    argv, env = kopf_command(args, environ={"POD_NAMESPACE": "workerpool-system"})
    assert argv[:4] == ["kopf", "run", "-m", "workerpool_operator.kube.handlers"]
    assert "--all-namespaces" in argv
    assert "--standalone" in argv, "kopf never peers: the replicas agree through the Lease"
    assert not [a for a in argv if a.startswith(("--peering", "--priority"))]
    assert argv[argv.index("--liveness") + 1] == "http://0.0.0.0:8080/healthz"
    assert env == {LEASE_ENV: "workerpool-system/workerpool-operator"}


def test_run_lease_name_namespace_and_timings() -> None:
    args = build_parser().parse_args(
        ["run", "--lease-name", "wp", "--lease-namespace", "ops", "--lease-duration", "15", "--renew-deadline", "10"]
    )
    _, env = kopf_command(args, environ={"POD_NAMESPACE": "ignored"})
    assert env[LEASE_ENV] == "ops/wp"
    assert env["WORKERPOOL_OPERATOR_LEASE_DURATION"] == "15" and env["WORKERPOOL_OPERATOR_RENEW_DEADLINE"] == "10"
    assert "WORKERPOOL_OPERATOR_RETRY_PERIOD" not in env  # the default applies
    _, env = kopf_command(build_parser().parse_args(["run"]), environ={})
    assert env[LEASE_ENV] == "default/workerpool-operator"


def test_run_standalone_elects_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
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
        assert settings.persistence.finalizer != "workerpool.dev/finalizer"  # the first release's, removed


def test_run_without_a_cluster_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """No kubeconfig and no in-cluster service account: one line naming both, no traceback, exit 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(HOME=str(tmp_path), KUBECONFIG=str(tmp_path / "nowhere" / "config"))
    done = subprocess.run(
        [sys.executable, "-m", "workerpool_operator.cli", "run"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no Kubernetes configuration" in lines[0] and "service account" in lines[0]
    assert str(tmp_path / "nowhere" / "config") in lines[0] and "Traceback" not in done.stderr
