"""Broker connection settings and Celery's Redis key names. Pure: no connections here.

A broker is named by the URL Celery itself uses, so one Secret serves the workers and the operator:

- ``redis://[user[:password]@]host[:port][/db]``
- ``rediss://...`` (TLS; the CA comes from ``BrokerConfig.ca_pem``; ``?ssl_cert_reqs=`` and
  ``?ssl_check_hostname=`` as in Celery's URLs)
- ``sentinel://[user[:password]@]host[:port][/db];sentinel://host2[:port]...`` with the master name in
  ``BrokerConfig.sentinel_master`` (Celery's ``master_name`` transport option). As in kombu, the
  credentials and database of the first part are those of the master.

Key names follow kombu's Redis transport: a message of priority ``p`` goes to the list of the highest
priority step ``<= p``; step 0 is the bare queue name, any other step is ``queue + sep + str(step)``;
``global_keyprefix`` comes before every key.
"""

from __future__ import annotations

import functools
from bisect import bisect
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

DEFAULT_PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
DEFAULT_SEPARATOR = "\x06\x16"
DEFAULT_REDIS_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
REDACTED = "***"

Scheme = Literal["redis", "rediss", "sentinel"]
CertRequirement = Literal["required", "optional", "none"]

_CERT_REQS: dict[str, CertRequirement] = {
    "required": "required",
    "cert_required": "required",
    "optional": "optional",
    "cert_optional": "optional",
    "none": "none",
    "cert_none": "none",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class BrokerURLError(ValueError):
    """The broker URL (or its companion settings) cannot be used. The message never holds a password."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A parsed broker URL: where to connect and how. ``endpoints`` are the sentinels for ``sentinel``."""

    scheme: Scheme
    endpoints: tuple[Endpoint, ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cert_reqs: CertRequirement = "required"  # rediss:// only
    check_hostname: bool = True  # rediss:// only

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    @property
    def sentinel(self) -> bool:
        return self.scheme == "sentinel"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything needed to reach one broker and name its keys. Hashable: one connection pool per value."""

    url: str  # redis://, rediss:// or sentinel:// (Celery's form, ';'-separated for several sentinels)
    ca_pem: str | None = field(default=None, repr=False)  # CA bundle for rediss:// (from a Secret)
    sentinel_master: str | None = None  # master name for sentinel:// (Celery's `master_name`)
    global_keyprefix: str = ""
    priority_steps: tuple[int, ...] = DEFAULT_PRIORITY_STEPS
    separator: str = DEFAULT_SEPARATOR
    socket_timeout: float = 2.0

    def __repr__(self) -> str:
        # The dataclass repr would show the password inside the URL.
        return (
            f"BrokerConfig(url={self.redacted_url!r}, sentinel_master={self.sentinel_master!r}, "
            f"global_keyprefix={self.global_keyprefix!r}, priority_steps={self.priority_steps!r}, "
            f"separator={self.separator!r}, socket_timeout={self.socket_timeout!r})"
        )

    @property
    def redacted_url(self) -> str:
        """The URL with any password replaced by ``***``: safe for logs, events and status."""
        return redact_url(self.url)

    def address(self) -> BrokerAddress:
        """The parsed URL, checked against the other settings; raises :class:`BrokerURLError`."""
        address = parse_broker_url(self.url)
        if address.sentinel and not self.sentinel_master:
            raise BrokerURLError(
                f"{self.redacted_url}: a sentinel:// broker needs the master name "
                "(Celery's broker_transport_options master_name)"
            )
        if address.sentinel and self.ca_pem:
            raise BrokerURLError(f"{self.redacted_url}: TLS through Sentinel is not supported yet")
        if not address.sentinel and self.sentinel_master:
            raise BrokerURLError(f"{self.redacted_url}: a sentinel master name is set but the URL is not sentinel://")
        if self.ca_pem and not address.tls:
            raise BrokerURLError(f"{self.redacted_url}: a CA is set but the URL is not rediss://")
        return address

    def priority_keys(self, queue: str) -> list[str]:
        """Every Redis list that holds messages of ``queue``, in priority-step order."""
        return priority_keys(queue, self.priority_steps, self.separator, self.global_keyprefix)

    def priority_key(self, queue: str, priority: int) -> str:
        """The list a message of ``priority`` is pushed to (what kombu's ``_q_for_pri`` computes)."""
        return priority_key(queue, priority, self.priority_steps, self.separator, self.global_keyprefix)

    def queue_of_key(self, key: str) -> str | None:
        """The queue whose priority list ``key`` could be (the inverse of :meth:`priority_keys`): ``None`` for a key
        outside ``global_keyprefix``. Other keys give a name no queue has, which callers ignore."""
        if not key.startswith(self.global_keyprefix):
            return None
        return key[len(self.global_keyprefix) :].split(self.separator, 1)[0]


def priority_keys(
    queue: str,
    steps: tuple[int, ...] = DEFAULT_PRIORITY_STEPS,
    separator: str = DEFAULT_SEPARATOR,
    global_keyprefix: str = "",
) -> list[str]:
    """Every list of ``queue``: one per distinct priority step (kombu sums LLEN over exactly these)."""
    return [_step_key(queue, step, separator, global_keyprefix) for step in sorted(set(steps))]


def priority_key(
    queue: str,
    priority: int,
    steps: tuple[int, ...] = DEFAULT_PRIORITY_STEPS,
    separator: str = DEFAULT_SEPARATOR,
    global_keyprefix: str = "",
) -> str:
    """The list a message of ``priority`` lands in: the highest step ``<= priority`` (kombu's rule)."""
    ordered = sorted(set(steps))
    # kombu indexes steps[bisect(...) - 1]: below the lowest step that wraps to the highest step.
    return _step_key(queue, ordered[bisect(ordered, priority) - 1], separator, global_keyprefix)


def _step_key(queue: str, step: int, separator: str, global_keyprefix: str) -> str:
    return f"{global_keyprefix}{queue}" if step == 0 else f"{global_keyprefix}{queue}{separator}{step}"


@functools.lru_cache(maxsize=256)
def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a Celery broker URL; raises :class:`BrokerURLError` with a reason that holds no password."""
    if not isinstance(url, str) or not url.strip():
        raise BrokerURLError("the broker URL is empty")
    parts = [part.strip() for part in url.strip().split(";") if part.strip()]
    schemes = {urlsplit(part).scheme.lower() for part in parts}
    if len(parts) > 1 and schemes != {"sentinel"}:
        raise BrokerURLError(f"{redact_url(url)}: only sentinel:// URLs may be joined with ';'")
    scheme = schemes.pop()
    if scheme not in ("redis", "rediss", "sentinel"):
        shown = f"{scheme}://" if scheme else "no scheme"
        raise BrokerURLError(
            f"{redact_url(url)}: unsupported broker URL ({shown}); use redis://, rediss:// or sentinel://"
        )
    default_port = DEFAULT_SENTINEL_PORT if scheme == "sentinel" else DEFAULT_REDIS_PORT
    endpoints = tuple(_endpoint(part, default_port) for part in parts)
    first = urlsplit(parts[0])
    query = {key.lower(): values[-1] for key, values in parse_qs(first.query).items()}
    address = BrokerAddress(
        scheme=scheme,  # type: ignore[arg-type]  # checked just above
        endpoints=endpoints,
        db=_db(first.path, query, url),
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password is not None and first.password != "" else None,
    )
    if scheme == "rediss":
        cert_reqs = query.get("ssl_cert_reqs", "required").lower()
        if cert_reqs not in _CERT_REQS:
            raise BrokerURLError(f"{redact_url(url)}: ssl_cert_reqs must be required, optional or none")
        check_hostname = _flag(query.get("ssl_check_hostname"), default=True, name="ssl_check_hostname", url=url)
        return replace(
            address,
            cert_reqs=_CERT_REQS[cert_reqs],
            check_hostname=check_hostname and _CERT_REQS[cert_reqs] != "none",
        )
    return address


def _endpoint(part: str, default_port: int) -> Endpoint:
    split = urlsplit(part)
    try:
        port = split.port
    except ValueError:
        raise BrokerURLError(f"{redact_url(part)}: the port is not a number between 0 and 65535") from None
    if not split.hostname:
        raise BrokerURLError(f"{redact_url(part)}: the broker URL has no host")
    return Endpoint(host=split.hostname, port=port or default_port)


def _db(path: str, query: dict[str, str], url: str) -> int:
    raw = path.strip("/") or query.get("db", "0")
    if not raw.isdigit():
        raise BrokerURLError(f"{redact_url(url)}: the database index must be a number, not {raw!r}")
    return int(raw)


def _flag(raw: str | None, *, default: bool, name: str, url: str) -> bool:
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise BrokerURLError(f"{redact_url(url)}: {name} must be true or false")


def redact_url(url: str) -> str:
    """``url`` with passwords (in the user part and in ``password=`` query fields) replaced by ``***``."""
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(part: str) -> str:
    try:
        split = urlsplit(part)
        netloc = split.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:{REDACTED}@{hostport}" if colon else f"{user}@{hostport}"
        query = "&".join(_redact_field(field) for field in split.query.split("&")) if split.query else ""
        return urlunsplit((split.scheme, netloc, split.path, query, split.fragment))
    except ValueError:
        scheme = part.partition("://")[0] if "://" in part else ""
        return f"{scheme}://{REDACTED}" if scheme else REDACTED


def _redact_field(field: str) -> str:
    key, eq, _value = field.partition("=")
    return f"{key}={REDACTED}" if eq and "password" in key.lower() else field
