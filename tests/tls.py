"""A real redis-server speaking TLS only (``--port 0``), with a CA and certificate made by trustme for the test."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import trustme

from workerpool_operator.local.embedded_redis import free_port, stop_process


@dataclass
class TLSRedis:
    """The server's port and the CA that signed its certificate (for 127.0.0.1 and localhost)."""

    port: int
    ca: trustme.CA
    ca_file: Path  # the CA's PEM, as a mounted Secret would hold it
    workdir: Path

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    @property
    def ca_pem(self) -> str:
        return str(self.ca.cert_pem.bytes().decode())

    def client(self, **options: Any) -> redis.Redis:
        """A client that trusts the CA."""
        return redis.Redis(port=self.port, ssl=True, ssl_ca_data=self.ca_pem, socket_timeout=2, **options)


@contextmanager
def tls_redis_server(workdir: Path) -> Iterator[TLSRedis]:
    """Start the server in ``workdir`` (certificates and log there), yield it once it answers, stop it."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = workdir / "server.pem", workdir / "server.key", workdir / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    for _attempt in range(3):  # a free port can be taken between probe and bind
        server = TLSRedis(port=free_port(), ca=ca, ca_file=ca_file, workdir=workdir)
        args = ["--port", "0", "--tls-port", str(server.port), "--bind", "127.0.0.1", "--dir", str(workdir)]
        args += ["--save", "", "--appendonly", "no", "--logfile", str(workdir / "redis.log")]
        args += ["--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)]
        args += ["--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no"]
        process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if _answers(server, process):
                yield server
                return
        finally:
            stop_process(process)
    raise RuntimeError(f"redis-server with TLS did not start: see {workdir / 'redis.log'}")


def _answers(server: TLSRedis, process: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    client = server.client()
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                return bool(client.ping())
            except (redis.RedisError, OSError):
                time.sleep(0.05)
        return False
    finally:
        client.close()
