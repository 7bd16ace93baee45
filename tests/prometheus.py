"""A real Prometheus server for tests, and the operator as a process of its own for it to scrape.

:class:`PrometheusServer` runs Debian's ``prometheus`` on a free loopback port with its own TSDB directory,
scraping the given targets every second and evaluating the given rule files; :meth:`PrometheusServer.query`
runs an instant query through the HTTP API. :class:`OperatorProcess` is ``workerpool-operator run
--standalone`` against the test's API emulator, with its metrics on a port of the test's choosing.
:func:`selectors` lists the series selectors of a PromQL expression (the queries here are ours: metric names
start with ``workerpool_``, ``process_`` or ``python_``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SCRAPE_JOB = "workerpool-operator"
SELECTOR = re.compile(r"(?<![\w:])((?:workerpool|process|python)_[a-z_]+)(\{[^}]*\})?")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop_group(process: subprocess.Popen[bytes] | None, grace: float = 20.0) -> None:
    """SIGTERM the process's session, SIGKILL it after ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def selectors(expr: str) -> list[str]:
    """Every series selector in ``expr`` (metric name plus its label matchers), each once, in order."""
    found: dict[str, None] = {}
    for name, matchers in SELECTOR.findall(expr):
        found[name + matchers] = None
    return list(found)


@dataclass
class PrometheusServer:
    """``prometheus`` on a free loopback port, scraping ``targets`` (host:port) as job ``workerpool-operator``."""

    workdir: Path
    targets: Sequence[str]
    rule_files: Sequence[Path] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: `make test` installs it (Debian package prometheus)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": SCRAPE_JOB,
                    "honor_labels": True,  # as the chart's ServiceMonitor: the pool's namespace label stays ours
                    "static_configs": [{"targets": list(self.targets)}],
                }
            ],
        }
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self._log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not self._ready():
            assert self.process.poll() is None, f"prometheus exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"prometheus not ready in 30 s:\n{self.log()[-3000:]}"
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # a bad query answers 400 with the reason
            body = json.load(error)
        assert body["status"] == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) ``expr`` gives now."""
        data = self.api("query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_group(self.process)
        if hasattr(self, "_log"):
            self._log.close()


@dataclass
class OperatorProcess:
    """``workerpool-operator run --standalone`` in a process of its own, against ``kubeconfig``."""

    kubeconfig: Path
    log_file: Path
    metrics_port: int
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
        env |= {
            "KUBECONFIG": str(self.kubeconfig),
            "WORKERPOOL_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        self._log = self.log_file.open("wb")
        command = [sys.executable, "-m", "workerpool_operator.cli", "run", "--standalone", "--log-format", "plain"]
        self.process = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        stop_group(self.process)
        if hasattr(self, "_log"):
            self._log.close()
