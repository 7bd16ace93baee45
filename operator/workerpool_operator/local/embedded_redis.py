"""A private ``redis-server`` for the local runtime: a free loopback port, a temporary directory, no persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

INSTALL_HINT = (
    "redis-server is not installed: install it with `sudo apt-get install redis-server` "
    "(`make demo` does it for you), or pass --redis URL to use a Redis you already run"
)


class RedisUnavailable(RuntimeError):
    """redis-server is missing or did not start; the message says what to do."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmbeddedRedis:
    """Starts ``redis-server`` on 127.0.0.1 and stops it on exit.

    By default on a free port in a temporary directory it removes afterwards; ``workdir``, ``port`` and
    ``extra_args`` (more redis-server options) let tests run servers of their own. :meth:`restart`
    starts it again on the same port, with its data gone (nothing is persisted).
    """

    def __init__(
        self,
        start_timeout: float = 10.0,
        *,
        workdir: Path | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._own_workdir = workdir is None
        self.workdir = workdir
        self.port = port or 0
        self._port_fixed = port is not None
        self.extra_args = tuple(extra_args)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._process

    def start(self) -> Self:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable(INSTALL_HINT)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="workerpool-redis-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(1 if self._port_fixed else 3):  # a free port can be taken between probe and bind
            if not self._port_fixed:
                self.port = free_port()
            self._process = subprocess.Popen(
                [
                    binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.workdir),
                    "--save", "",
                    "--appendonly", "no",
                    "--logfile", str(self.workdir / "redis.log"),
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the runtime, which stops Redis last
            )  # fmt: skip
            if self._wait_ready():
                self._port_fixed = True  # a restart comes back on the same port
                return self
        log = self.workdir / "redis.log"
        last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        self.stop()
        raise RedisUnavailable("redis-server did not start" + (f": {last[0]}" if last else ""))

    def _wait_ready(self) -> bool:
        assert self._process is not None
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        deadline = time.monotonic() + self._start_timeout
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    return False
                try:
                    client.ping()
                    return True
                except redis.RedisError:
                    time.sleep(0.05)
            stop_process(self._process, timeout=0)
            return False
        finally:
            client.close()

    def restart(self) -> None:
        """Stop the server and start it again on the same port and directory (the data is gone)."""
        if self._process is not None:
            stop_process(self._process)
        self._process = None
        self.start()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
