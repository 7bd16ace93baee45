"""The command line: what `run` makes of its flags and environment, what it says when it cannot start (each case
runs the real command), and the one exit-code convention of every subcommand."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from workerpool_operator import __version__, exit_codes
from workerpool_operator.cli import build_parser, run_settings
from workerpool_operator.kube import handlers
from workerpool_operator.kube.settings import SettingsError


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workerpool_operator.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without a cluster (no in-cluster variables, no kubeconfig) or settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "WORKERPOOL_", "KUBECONFIG"))}
    return {**env, "HOME": str(home), **extra}


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and not done.stdout.strip(), (done.stdout, done.stderr)
    return lines[0]


def test_version() -> None:
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"workerpool-operator {__version__}"


# --- run: flags and environment into one settings object -------------------------------------------------------


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("WORKERPOOL_OPERATOR_") or n == "POD_NAMESPACE"]:
        monkeypatch.delenv(name)


def settings_of(*argv: str) -> Any:
    return run_settings(build_parser().parse_args(["run", *argv]))


def test_run_elects_a_leader_through_a_lease_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_of().lease == "default/workerpool-operator"  # no POD_NAMESPACE: `default`
    monkeypatch.setenv("POD_NAMESPACE", "workerpool-system")
    settings = settings_of("--liveness", "http://0.0.0.0:8080/healthz")
    assert settings.lease == "workerpool-system/workerpool-operator"
    assert settings.liveness == "http://0.0.0.0:8080/healthz" and settings.clusterwide


def test_run_lease_name_namespace_and_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERPOOL_OPERATOR_RETRY_PERIOD", "1")
    settings = settings_of(
        "--lease-name", "wp", "--lease-namespace", "ops", "--lease-duration", "15", "--renew-deadline", "10"
    )
    assert settings.lease == "ops/wp"
    assert (settings.lease_duration, settings.renew_deadline, settings.retry_period) == (15, 10, 1)
    config = settings.lease_config("me")
    assert config is not None and (config.namespace, config.name, config.identity) == ("ops", "wp", "me")


def test_run_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERPOOL_OPERATOR_LEASE", "elsewhere/theirs")
    monkeypatch.setenv("WORKERPOOL_OPERATOR_LOG_FORMAT", "json")
    monkeypatch.setenv("WORKERPOOL_OPERATOR_NAMESPACES", "shop, billing")
    assert settings_of().lease == "elsewhere/theirs", "no lease flag: the variable as it is"
    assert settings_of().namespaces == ("shop", "billing") and settings_of().log_format == "json"
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    overridden = settings_of("--lease-name", "mine", "--log-format", "full", "-n", "apps")
    assert overridden.lease == "ops/mine" and overridden.log_format == "full" and overridden.namespaces == ("apps",)
    assert settings_of("--standalone").lease is None


def test_run_standalone_elects_nobody_and_a_namespace_list_turns_kopf_scanning_off() -> None:
    settings = settings_of("-n", "apps", "-n", "jobs", "--standalone")
    assert settings.lease is None and settings.lease_config("me") is None
    assert settings.namespaces == ("apps", "jobs") and not settings.clusterwide

    for clusterwide in (True, False):
        kopf_settings = kopf.OperatorSettings()
        kopf_settings.peering.clusterwide = clusterwide  # kopf sets it from its arguments before startup handlers
        configure: Any = handlers.configure  # kopf's decorator types it as a full activity callback
        configure(settings=kopf_settings)
        assert kopf_settings.scanning.disabled is not clusterwide
        assert kopf_settings.persistence.finalizer != "workerpool.dev/finalizer"  # the first release's, removed


def test_kopfs_idle_object_workers_exit_within_a_second() -> None:
    """kopf's worker for an object keeps the object's last watch event while it waits for the next; at kopf's
    default of 5 s, a start-up that changes every Deployment at once kept one event per object alive (1,000 pools:
    RSS at rest 279 -> 174 MiB with 0.5 s, docs/benchmarks.md)."""
    kopf_settings = kopf.OperatorSettings()
    assert kopf_settings.queueing.idle_timeout > 1.0, "kopf's own default, which the operator overrides"
    configure: Any = handlers.configure
    configure(settings=kopf_settings)
    assert kopf_settings.queueing.idle_timeout == handlers.IDLE_WORKER_SECONDS <= 1.0


def test_a_bad_setting_names_its_flag_or_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=r"^--lease-duration: .*greater than or equal to 0"):
        settings_of("--lease-duration", "-1")
    with pytest.raises(SettingsError, match="retry period < renew deadline < lease duration"):
        settings_of("--retry-period", "7")
    monkeypatch.setenv("WORKERPOOL_OPERATOR_METRICS_PORT", "nine")
    with pytest.raises(SettingsError, match=r"^WORKERPOOL_OPERATOR_METRICS_PORT: .*integer.*'nine'"):
        settings_of()


# --- run: what it says when it cannot start ----------------------------------------------------------------------


def test_run_with_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = cli("run", env=clean_env(tmp_path, WORKERPOOL_OPERATOR_METRICS_PORT="70000"))
    assert done.returncode == exit_codes.BAD_INPUT
    assert "WORKERPOOL_OPERATOR_METRICS_PORT" in one_line(done) and "65535" in done.stderr


def test_run_without_a_cluster_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """No kubeconfig and no in-cluster service account: one line naming both, no traceback, exit 2."""
    missing = tmp_path / "nowhere" / "config"
    done = cli("run", env=clean_env(tmp_path, KUBECONFIG=str(missing)))
    assert done.returncode == exit_codes.BAD_INPUT
    line = one_line(done)
    assert line.startswith("workerpool-operator run: no Kubernetes configuration")
    assert "service account" in line and f"the kubeconfig {missing} does not exist" in line
    done = cli("run", env=clean_env(tmp_path))  # no KUBECONFIG: the default place, which is not there either
    assert done.returncode == exit_codes.BAD_INPUT
    assert f"{tmp_path / '.kube' / 'config'} does not exist" in one_line(done)


def test_run_with_a_malformed_kubeconfig_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nclusters: [\n  - bad: : yaml\n")
    done = cli("run", env=clean_env(tmp_path, KUBECONFIG=str(config)))
    assert done.returncode == exit_codes.BAD_INPUT
    line = one_line(done)
    assert f"the kubeconfig {config} is not valid YAML (line 3, column 3)" in line


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends: nothing listens there


def test_run_against_an_api_server_that_does_not_answer_says_so_within_seconds(tmp_path: Path) -> None:
    server = f"https://127.0.0.1:{closed_port()}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    done = cli("run", "--standalone", env=clean_env(tmp_path, KUBECONFIG=str(path)), timeout=30)
    elapsed = time.monotonic() - started
    assert done.returncode == exit_codes.UNAVAILABLE, done.stderr
    line = one_line(done)
    assert f"the Kubernetes API server at {server} does not answer: Connection refused" in line
    assert elapsed < 10, f"took {elapsed:.1f} s"


# --- one convention for every subcommand -------------------------------------------------------------------------


def test_local_and_simulate_say_the_same_about_a_missing_file_with_the_same_exit_code(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    trace = tmp_path / "trace.csv"
    trace.write_text("time,rate\n0,1\n60,1\n")
    local = cli("local", "-f", str(missing), "--no-live")
    simulate = cli("simulate", "-f", str(missing), "--trace", str(trace))
    assert local.returncode == simulate.returncode == exit_codes.BAD_INPUT
    expected = f"cannot read {missing}: No such file or directory"
    assert one_line(local) == f"workerpool-operator local: {expected}"
    assert one_line(simulate) == f"workerpool-operator simulate: {expected}"
    usage = cli("simulate", "-f", str(missing))  # --trace missing: argparse's usage error, the same code
    assert usage.returncode == exit_codes.BAD_INPUT


@pytest.mark.parametrize("command", ["run", "local", "demo", "simulate"])
def test_every_option_has_help_and_every_command_lists_its_exit_codes(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[index]
    undocumented = [a.option_strings or [a.dest] for a in sub._actions if not a.help]
    assert undocumented == []
    text = " ".join(cli(command, "--help").stdout.split())
    assert "exit codes: 0 done; 1 failed while running; 2 bad input" in text
    if command == "simulate":
        assert "come back (default: 3600" in text.replace("comes back", "come back")
    if command == "run":
        assert "--log-format" in text and "debug logging" in text
