"""Beat and Flower beside the local workers: one process each, started through the worker image's entrypoint.

They are not scaled: each starts with the runtime and stops with it (SIGTERM, then SIGKILL after the grace period,
as a pod). Their settings are the ones a pod gets (``worker_env.py``), made local: the broker is the local one,
files go to the run's directory, and what a pod reads from Secrets (Flower's credentials) is not set, so Flower
listens on the loopback interface only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workerpool_operator import worker_contract as contract
from workerpool_operator.local.backend import WORKER_MODULE, last_log_line
from workerpool_operator.spec import WorkerPool
from workerpool_operator.worker_env import (
    BEAT_SCHEDULE_FILE_ENV,
    BROKER_CA_ENV,
    BROKER_CA_FILE,
    BROKER_URL_ENV,
    FLOWER_PORT,
    STATE_DIR_ENV,
    WORKER_NAME_ENV,
    beat_args,
    beat_environment,
    flower_args,
    flower_environment,
)

LOCAL_FLOWER_ADDRESS = "127.0.0.1"
# Set per process by the local runtime, or meaningless without pods (a template's version: the processes run one).
POD_ONLY = (WORKER_NAME_ENV, BROKER_URL_ENV, STATE_DIR_ENV, contract.TEMPLATE_VERSION.name)
FLOWER_AUTH_ENV = ("FLOWER_AUTH", "FLOWER_AUTH_PROVIDER", "FLOWER_OAUTH2_REDIRECT_URI")  # useless without the Secrets


def local_env(items: Sequence[Mapping[str, Any]], skipped: set[str]) -> dict[str, str]:
    """A pod's environment as plain values; what comes from Secrets or fields (or the CA file a pod mounts) is
    left out and its name added to ``skipped``."""
    env: dict[str, str] = {}
    for item in items:
        name = str(item["name"])
        if item.get("value") == BROKER_CA_FILE and name == BROKER_CA_ENV:
            skipped.add(name)  # a file from the caFrom Secret, mounted in a pod only
        elif "value" in item:
            env[name] = str(item["value"])
        elif name not in POD_ONLY:
            skipped.add(name)  # from a Secret or a field: there is no cluster to read it from
    return env


@dataclass(frozen=True, slots=True)
class ComponentSettings:
    """How one of beat and Flower runs locally."""

    name: str  # "beat", "flower"
    args: tuple[str, ...]
    env: Mapping[str, str]
    url: str | None = None  # where to look at it (Flower)


def plan_components(pool: WorkerPool, skipped: set[str], loglevel: str | None = None) -> list[ComponentSettings]:
    """Beat (with ``spec.beat``) and Flower (with ``spec.flower``, when Flower is installed here)."""
    found = []
    if pool.spec.beat is not None:
        env = local_env(beat_environment(pool, pool.spec.beat), skipped)
        if loglevel:
            env["WORKERPOOL_LOGLEVEL"] = loglevel
        found.append(ComponentSettings("beat", tuple(beat_args(pool.spec.beat)), env))
    if pool.spec.flower is not None and flower_available():
        env = local_env(flower_environment(pool, pool.spec.flower), skipped)
        for name in FLOWER_AUTH_ENV:
            env.pop(name, None)
        env["FLOWER_ADDRESS"] = LOCAL_FLOWER_ADDRESS
        port = int(env.get("FLOWER_PORT", FLOWER_PORT))
        prefix = env.get("FLOWER_URL_PREFIX")
        url = f"http://{LOCAL_FLOWER_ADDRESS}:{port}/{prefix + '/' if prefix else ''}"
        found.append(ComponentSettings("flower", tuple(flower_args(pool.spec.flower)), env, url))
    return found


def flower_available() -> bool:
    return importlib.util.find_spec("flower") is not None


@dataclass(eq=False)
class _Running:
    settings: ComponentSettings
    process: subprocess.Popen[bytes]
    log_path: Path
    stopping: bool = False
    reported: bool = False


@dataclass
class LocalComponents:
    """The processes of beat and Flower for one local run."""

    broker_url: str
    workdir: Path
    python: str = sys.executable
    running: list[_Running] = field(default_factory=list)

    def start(self, settings: ComponentSettings, inherited: Mapping[str, str]) -> Path:
        """Start one component; returns its log file."""
        state_dir = self.workdir / "components" / settings.name
        state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / "logs" / f"{settings.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**inherited, "PYTHONUNBUFFERED": "1", **settings.env}
        env |= {
            WORKER_NAME_ENV: f"local-{settings.name}",
            BROKER_URL_ENV: self.broker_url,
            STATE_DIR_ENV: str(state_dir),
        }
        # The pod's files (on /tmp or a volume) go to this run's directory.
        if BEAT_SCHEDULE_FILE_ENV in env:
            env[BEAT_SCHEDULE_FILE_ENV] = str(state_dir / "celerybeat-schedule")
        if "FLOWER_DB" in env:
            env["FLOWER_DB"] = str(state_dir / "flower.db")
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [self.python, "-m", WORKER_MODULE, *settings.args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append(_Running(settings, process, log_path))
        return log_path

    def exited(self) -> list[str]:
        """One line for each component that ended by itself since the last call."""
        lines = []
        for component in self.running:
            code = component.process.poll()
            if code is None or component.stopping or component.reported:
                continue
            component.reported = True
            last = last_log_line(component.log_path)
            lines.append(f"{component.settings.name} exited with code {code}" + (f": {last}" if last else ""))
        return lines

    def stop(self, grace: float, poll: float = 0.1) -> None:
        """SIGTERM every component, wait up to ``grace`` seconds, then SIGKILL what is left."""
        for component in self.running:
            component.stopping = True
            with contextlib.suppress(ProcessLookupError):
                component.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.process.poll() is None for c in self.running) and time.monotonic() < deadline:
            time.sleep(poll)
        for component in self.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(component.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.process.wait(5)
