"""The worker entrypoint with a ``rediss://`` broker and ``WORKERPOOL_BROKER_CA_FILE`` (what ``caFrom`` mounts):
a real TLS-only redis-server, certificates made by trustme, real worker processes."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

from tests.conftest import REPO
from tests.tls import TLSRedis
from tests.worker_process import entrypoint_env, producer, running_worker, runs, wait_for
from workerpool_operator.reports import decode_report, report_key
from workerpool_operator.worker.broker_tls import verified_by_default, with_ca_file, without_ssl_fields
from workerpool_operator.worker.config import ConfigError, parse_run_args

CA = Path("/etc/workerpool/broker-ca/ca.crt")

# --- settings and TLS options (no process) ---------------------------------------------------------------


def test_ca_file_from_the_environment_or_the_option(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    trustme.CA().cert_pem.write_to_path(str(ca))
    assert parse_run_args([], {"WORKERPOOL_APP": "a", "WORKERPOOL_BROKER_CA_FILE": str(ca)}).broker_ca_file == ca
    assert parse_run_args(["--app", "a", "--broker-ca-file", str(ca)], {}).broker_ca_file == ca
    assert parse_run_args(["--app", "a"], {}).broker_ca_file is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the broker CA file {path}: No such file or directory"),
        ("", "the broker CA file {path} holds no PEM certificate"),
        ("not a certificate\n", "the broker CA file {path} holds no PEM certificate"),
    ],
)
def test_a_missing_or_unusable_ca_file_is_a_broker_problem(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "ca.crt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as raised:
        parse_run_args(["--app", "a", "--broker-ca-file", str(path)], {})
    assert str(raised.value) == message.format(path=path)
    assert raised.value.code == 4


def test_tls_options_require_certificates_with_the_ca_and_keep_the_apps_own() -> None:
    url, options = with_ca_file("rediss://:pw@redis:6380/0", CA, None)
    assert url == "rediss://:pw@redis:6380/0"
    assert options == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(CA)}
    client_cert = {"ssl_certfile": "/c.pem", "ssl_keyfile": "/c.key", "ssl_cert_reqs": ssl.CERT_NONE}
    _, options = with_ca_file("rediss://redis:6380/0", CA, client_cert)
    assert options == {
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/c.key",
        "ssl_cert_reqs": ssl.CERT_REQUIRED,  # a CA is given to verify with
        "ssl_ca_certs": str(CA),
    }


def test_the_urls_tls_fields_move_into_the_options_so_the_ca_is_not_dropped() -> None:
    url, options = with_ca_file(
        "rediss://:p%40ss@redis:6380/2?ssl_cert_reqs=required&socket_timeout=3&ssl_check_hostname=false", CA, None
    )
    assert url == "rediss://:p%40ss@redis:6380/2?socket_timeout=3"
    assert options == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": False, "ssl_ca_certs": str(CA)}
    _, options = with_ca_file("rediss://redis:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/other.pem", CA, None)
    assert options == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": str(CA)}  # as the operator reads the URL
    assert without_ssl_fields("rediss://redis:6380/0?ssl_cert_reqs=required") == "rediss://redis:6380/0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://redis:6379/0", "is not rediss:// (TLS), but a broker CA file is given"),
        ("sentinel://s1:26379;sentinel://s2:26379", "is not rediss:// (TLS), but a broker CA file is given"),
        ("rediss://redis:6380/0?ssl_cert_reqs=sometimes", "is invalid: ssl_cert_reqs must be required, optional or"),
    ],
)
def test_tls_options_refuse_what_cannot_carry_the_ca(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        with_ca_file(url, CA, None)


# --- real worker processes -------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["solo", "prefork"])  # prefork: the task runs in a forked child, on TLS too
def test_worker_verifies_the_broker_with_the_ca_file_runs_tasks_and_reports_over_tls(
    pool: str, tls_redis: TLSRedis, tmp_path: Path
) -> None:
    # `?ssl_cert_reqs=required` as Celery's docs write it: kombu would let it replace the CA, were it not moved.
    url = tls_redis.url + "?ssl_cert_reqs=required"
    client = tls_redis.client(decode_responses=True)
    settings = {
        "workerpool_pool": pool,
        "workerpool_concurrency": "1",
        "workerpool_queues": "work",
        "workerpool_report_interval": "0.2",
        "workerpool_broker_ca_file": str(tls_redis.ca_file),
    }
    with running_worker(url, tmp_path, settings) as worker:
        worker.wait_ready(20)
        trusting = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(tls_redis.ca_file)}
        sent = producer(tls_redis.url, use_ssl=trusting).send_task("record", args=("tls", 0.0), queue="work").id
        wait_for(lambda: runs(client, "tls"), 10, worker.output)
        assert [run["id"] for run in runs(client, "tls")] == [sent]

        def report_done() -> bool:
            raw = client.hget(report_key("work"), "w1")  # the server speaks TLS only: the report came over TLS
            return raw is not None and (load := decode_report("w1", raw)) is not None and load.done == 1

        wait_for(report_done, 10, worker.output)
        worker.terminate()
        assert worker.wait() == 0, worker.output()[-2000:]
    assert not client.exists(report_key("work"))  # removed at shutdown, over TLS too
    assert "defaulting to insecure" not in worker.output().lower()


def _run_entrypoint(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "workerpool_operator.worker.main", "--pool", "solo"]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_wrong_ca_exits_at_once_with_one_clear_line(tls_redis: TLSRedis, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-ca.crt"
    trustme.CA().cert_pem.write_to_path(str(wrong))
    env = entrypoint_env(tls_redis.url, tmp_path / "state", {"WORKERPOOL_BROKER_CA_FILE": str(wrong)})
    started = time.monotonic()
    result = _run_entrypoint(env)
    assert time.monotonic() - started < 20
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"workerpool-worker: the broker {tls_redis.url} failed TLS verification with the CA in {wrong}: "
        "self-signed certificate in certificate chain (is it the broker's CA?)"
    ]
    assert not (tmp_path / "state" / "ready").exists()


@pytest.mark.parametrize(
    ("url", "ca", "message"),
    [
        ("{tls}", "missing", "cannot read the broker CA file {missing}: No such file or directory"),
        ("redis://127.0.0.1:{port}/0", "right", "the broker URL redis://127.0.0.1:{port}/0 is not rediss:// (TLS)"),
    ],
    ids=["missing-ca-file", "ca-without-tls"],
)
def test_a_ca_file_that_cannot_be_used_exits_at_once_with_one_line(
    tls_redis: TLSRedis, tmp_path: Path, url: str, ca: str, message: str
) -> None:
    paths = {"missing": str(tmp_path / "missing.crt"), "right": str(tls_redis.ca_file)}
    fields = {"tls": tls_redis.url, "port": tls_redis.port, "missing": paths["missing"]}
    env = entrypoint_env(url.format(**fields), tmp_path / "state", {"WORKERPOOL_BROKER_CA_FILE": paths[ca]})
    result = _run_entrypoint(env)
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("workerpool-worker: " + message.format(**fields)), lines


def test_without_a_ca_file_the_certificate_is_checked_against_the_system_cas(
    tls_redis: TLSRedis, tmp_path: Path
) -> None:
    """kombu alone would not check a rediss:// broker's certificate; the entrypoint does, unless told not to."""
    assert verified_by_default(tls_redis.url, None) == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert verified_by_default(tls_redis.url + "?ssl_cert_reqs=none", None) is None  # the user said so
    assert verified_by_default(tls_redis.url, {"ssl_ca_certs": "/ca.pem"}) is None  # the app says how
    assert verified_by_default("redis://127.0.0.1:6380/0", None) is None

    result = _run_entrypoint(entrypoint_env(tls_redis.url, tmp_path / "state"))
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "failed TLS verification with the system CAs" in lines[0], lines

    # ssl_cert_reqs=none in the URL turns the check off, as in kombu: the worker starts.
    (tmp_path / "opted-out").mkdir()
    with running_worker(
        tls_redis.url + "?ssl_cert_reqs=none", tmp_path / "opted-out", {"workerpool_pool": "solo"}
    ) as w:
        w.wait_ready(20)
        w.terminate()
        assert w.wait() == 0, w.output()[-2000:]
