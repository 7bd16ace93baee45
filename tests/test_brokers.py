"""Broker URLs and Celery's key names (pure)."""

from __future__ import annotations

from bisect import bisect

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workerpool_operator.brokers import (
    BrokerAddress,
    BrokerConfig,
    BrokerURLError,
    Endpoint,
    parse_broker_url,
    priority_key,
    priority_keys,
    redact_url,
)

# --- URLs ------------------------------------------------------------------------------------------------


def test_redis_url_with_user_password_and_db() -> None:
    address = parse_broker_url("redis://shop:p%40ss%3Aword@redis.apps.svc:6380/3")
    assert address == BrokerAddress(
        scheme="redis",
        endpoints=(Endpoint("redis.apps.svc", 6380),),
        db=3,
        username="shop",
        password="p@ss:word",
    )
    assert not address.tls
    assert not address.sentinel


@pytest.mark.parametrize(
    ("url", "db", "username", "password", "port"),
    [
        ("redis://redis", 0, None, None, 6379),
        ("redis://redis/", 0, None, None, 6379),
        ("redis://:only-password@redis:7000/15", 15, None, "only-password", 7000),
        ("redis://user@redis/2", 2, "user", None, 6379),
        ("redis://redis?db=4", 4, None, None, 6379),
        ("REDIS://redis/1", 1, None, None, 6379),
    ],
)
def test_redis_url_forms(url: str, db: int, username: str | None, password: str | None, port: int) -> None:
    address = parse_broker_url(url)
    assert (address.db, address.username, address.password, address.endpoints[0].port) == (
        db,
        username,
        password,
        port,
    )


def test_ipv6_host() -> None:
    address = parse_broker_url("redis://[::1]:6390/0")
    assert address.endpoints == (Endpoint("::1", 6390),)
    assert str(address.endpoints[0]) == "[::1]:6390"


def test_rediss_verifies_by_default_and_honours_celery_query_options() -> None:
    strict = parse_broker_url("rediss://redis:6380/0")
    assert strict.tls
    assert (strict.cert_reqs, strict.check_hostname) == ("required", True)
    relaxed = parse_broker_url("rediss://redis:6380/0?ssl_cert_reqs=CERT_OPTIONAL&ssl_check_hostname=false")
    assert (relaxed.cert_reqs, relaxed.check_hostname) == ("optional", False)
    unverified = parse_broker_url("rediss://redis/0?ssl_cert_reqs=none")
    assert (unverified.cert_reqs, unverified.check_hostname) == ("none", False)


def test_celery_sentinel_form_lists_every_sentinel_and_takes_credentials_from_the_first() -> None:
    address = parse_broker_url("sentinel://:secret@s1:26380/2;sentinel://s2;sentinel://s3:1234")
    assert address.sentinel
    assert address.endpoints == (Endpoint("s1", 26380), Endpoint("s2", 26379), Endpoint("s3", 1234))
    assert (address.db, address.password) == (2, "secret")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "empty"),
        ("amqp://guest:secret@rabbit//", "unsupported broker URL (amqp://)"),
        ("redis-server:6379", "unsupported"),
        ("redis://:secret@/0", "has no host"),
        ("redis://:secret@redis:port/0", "port is not a number"),
        ("redis://:secret@redis:99999/0", "port is not a number"),
        ("redis://:secret@redis/zero", "database index must be a number"),
        ("redis://:secret@a;redis://b", "only sentinel:// URLs may be joined"),
        ("sentinel://:secret@a;redis://b", "only sentinel:// URLs may be joined"),
        ("rediss://:secret@redis/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
        ("rediss://:secret@redis/0?ssl_check_hostname=perhaps", "ssl_check_hostname must be"),
    ],
)
def test_bad_urls_get_a_clear_error_without_the_password(url: str, fragment: str) -> None:
    with pytest.raises(BrokerURLError) as raised:
        parse_broker_url(url)
    assert fragment in str(raised.value)
    assert "secret" not in str(raised.value)


def test_config_checks_companion_settings() -> None:
    with pytest.raises(BrokerURLError, match="needs the master name"):
        BrokerConfig(url="sentinel://s1").address()
    with pytest.raises(BrokerURLError, match="not sentinel://"):
        BrokerConfig(url="redis://r", sentinel_master="mymaster").address()
    with pytest.raises(BrokerURLError, match="not rediss://"):
        BrokerConfig(url="redis://r", ca_pem="-----BEGIN CERTIFICATE-----").address()
    with pytest.raises(BrokerURLError, match="TLS through Sentinel"):
        BrokerConfig(url="sentinel://s1", sentinel_master="m", ca_pem="x").address()
    assert BrokerConfig(url="sentinel://s1", sentinel_master="m").address().sentinel


# --- redaction -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://user:hunter2@redis:6379/0", "redis://user:***@redis:6379/0"),
        ("redis://:hunter2@redis/0", "redis://:***@redis/0"),
        ("redis://user@redis/0", "redis://user@redis/0"),
        ("redis://redis/0?password=hunter2&db=1", "redis://redis/0?password=***&db=1"),
        ("sentinel://:hunter2@s1:26379;sentinel://:hunter2@s2", "sentinel://:***@s1:26379;sentinel://:***@s2"),
        ("redis://:hunter2@[::1:6379/0", "redis://***"),
    ],
)
def test_redacted_url_never_shows_a_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert "hunter2" not in BrokerConfig(url=url).redacted_url


def test_config_repr_and_hash_keep_the_password_out_of_logs_but_in_identity() -> None:
    one = BrokerConfig(url="redis://:hunter2@redis/0", ca_pem="PEM")
    other = BrokerConfig(url="redis://:rotated@redis/0", ca_pem="PEM")
    assert "hunter2" not in repr(one)
    assert "PEM" not in repr(one)
    assert one != other  # a rotated password means a new connection pool
    assert len({one, other, BrokerConfig(url="redis://:hunter2@redis/0", ca_pem="PEM")}) == 2


@given(st.text(min_size=1, max_size=30).filter(lambda s: not any(c in s for c in "@/;?#[]%")))
def test_redaction_hides_any_password(password: str) -> None:
    url = f"redis://user:{password}@redis:6379/0"
    assert redact_url(url) == "redis://user:***@redis:6379/0"


# --- key names -------------------------------------------------------------------------------------------


def test_default_priority_keys_follow_kombu() -> None:
    assert priority_keys("emails") == ["emails", "emails\x06\x163", "emails\x06\x166", "emails\x06\x169"]
    config = BrokerConfig(url="redis://r", global_keyprefix="shop:", priority_steps=(0, 5), separator=":")
    assert config.priority_keys("emails") == ["shop:emails", "shop:emails:5"]


@pytest.mark.parametrize(
    ("priority", "key"),
    [(0, "q"), (2, "q"), (3, "q\x06\x163"), (5, "q\x06\x163"), (6, "q\x06\x166"), (8, "q\x06\x166"), (9, "q\x06\x169")],
)
def test_priority_lands_in_the_highest_step_not_above_it(priority: int, key: str) -> None:
    assert priority_key("q", priority) == key


def _kombu_q_for_pri(queue: str, pri: int, steps: list[int], sep: str, prefix: str) -> str:
    # kombu's Channel._q_for_pri and Channel.priority, restated to check ours against it
    step = steps[bisect(steps, pri) - 1]
    return prefix + (f"{queue}{sep}{step}" if step else queue)


@given(
    queue=st.text(min_size=1, max_size=20),
    steps=st.lists(st.integers(0, 9), min_size=1, max_size=10, unique=True).map(sorted),
    priority=st.integers(0, 9),
    sep=st.sampled_from(["\x06\x16", ":", "."]),
    prefix=st.sampled_from(["", "shop:", "{tenant}"]),
)
def test_every_message_lands_in_one_of_the_observed_lists(
    queue: str, steps: list[int], priority: int, sep: str, prefix: str
) -> None:
    config = BrokerConfig(url="redis://r", global_keyprefix=prefix, priority_steps=tuple(steps), separator=sep)
    landed = _kombu_q_for_pri(queue, priority, steps, sep, prefix)
    assert config.priority_key(queue, priority) == landed
    keys = config.priority_keys(queue)
    assert landed in keys
    assert len(keys) == len(set(keys)) == len(steps)  # each list counted once


def test_duplicate_or_unsorted_steps_count_each_list_once() -> None:
    assert priority_keys("q", (9, 0, 3, 3)) == ["q", "q\x06\x163", "q\x06\x169"]
