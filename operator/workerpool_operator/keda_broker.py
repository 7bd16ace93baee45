"""The broker a KEDA redis trigger reads, as the WorkerPool's ``spec.broker``, for ``from-keda``. Pure.

KEDA reads the address from the trigger (``address``, or ``host`` and ``port``, or the target container's
variables named by ``*FromEnv``), the database, TLS and the credentials from the trigger, its
TriggerAuthentication or the container's variables. A WorkerPool keeps the whole URL: inline (``broker.url``)
when nothing in it is secret, else in a Secret (``broker.urlFrom``). So the conversion prefers the Secret the
workers' own broker URL comes from (``CELERY_BROKER_URL`` and the like, when the Deployment is given), and
otherwise names a Secret to create and says, in a note, where the password is today. It never copies a password.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from workerpool_operator.deployment_import import (
    BROKER_URL_VARIABLES,
    ConversionError,
    EnvValue,
    Skipped,
    env_value,
)
from workerpool_operator.keda_triggers import RedisTrigger
from workerpool_operator.spec import URL_PASSWORD_PATTERNS

__all__ = ["broker_spec"]


@dataclass(slots=True)
class _Endpoint:
    """What the trigger (and its TriggerAuthentication) say about where the broker is and how to log in."""

    host: str | None = None
    port: str | None = None
    tls: bool = False
    unsafe: bool = False
    db: str = "0"
    credentials: list[str] = field(default_factory=list)  # where each secret part comes from, for the note
    unknown: list[str] = field(default_factory=list)  # address parts only known at run time


def broker_spec(
    trigger: RedisTrigger,
    container: Mapping[str, Any] | None,
    authentications: Mapping[tuple[str, str], Mapping[str, Any]],
    pool_name: str,
    skipped: list[Skipped],
) -> tuple[dict[str, Any], list[str]]:
    """``spec.broker`` and the notes that explain it."""
    endpoint = _endpoint(trigger, container, skipped)
    broker: dict[str, Any] = {}
    if trigger.authentication is not None:
        _authentication(trigger, authentications, container, endpoint, broker, skipped)
    from_env = _workers_broker_url(container)
    if from_env is not None and from_env.secret is not None:
        secret, key = from_env.secret
        note = (
            f"broker.urlFrom is Secret {secret}, key {key}: where the workers' {from_env.name} comes from "
            f"(KEDA's trigger reads {_describe(endpoint)})"
        )
        return {"urlFrom": {"secretKeyRef": {"name": secret, "key": key}}, **broker}, [note]
    if from_env is not None and from_env.value is not None and _usable_url(from_env.value):
        note = f"broker.url is the workers' {from_env.name} (KEDA's trigger reads {_describe(endpoint)})"
        return {"url": from_env.value, **broker}, [note]
    notes = []
    if from_env is not None and from_env.value is not None and _has_password(from_env.value):
        notes.append(f"the Deployment's {from_env.name} holds the broker password in plain text: move it to a Secret")
    if not endpoint.credentials and not endpoint.unknown:
        return {"url": _url(endpoint, ""), **broker}, notes
    secret = f"{pool_name}-broker"
    login = ""
    if endpoint.credentials:
        login = "USERNAME:PASSWORD@" if any("username" in c for c in endpoint.credentials) else ":PASSWORD@"
    example = _url(endpoint, login)
    sources = "; ".join(endpoint.credentials + endpoint.unknown)
    notes.append(
        f"create Secret {secret} with key url holding the whole broker URL, like {example} "
        f"(kubectl create secret generic {secret} --from-literal=url='{example}'): {sources}"
    )
    return {"urlFrom": {"secretKeyRef": {"name": secret, "key": "url"}}, **broker}, notes


def _endpoint(trigger: RedisTrigger, container: Mapping[str, Any] | None, skipped: list[Skipped]) -> _Endpoint:
    meta = trigger.metadata
    endpoint = _Endpoint(db=meta.get("databaseIndex", "0"))
    if not endpoint.db.isdigit():
        raise ConversionError(f"{trigger.where}.metadata.databaseIndex: {endpoint.db!r} is not a database number")
    endpoint.tls = meta.get("enableTLS", "false").lower() == "true"
    endpoint.unsafe = meta.get("unsafeSsl", "false").lower() == "true"
    address = meta.get("address") or _from_env(meta.get("addressFromEnv"), container, "address", endpoint)
    if address:
        endpoint.host, _, endpoint.port = address.rpartition(":") if ":" in address else (address, "", "6379")
    else:
        endpoint.host = meta.get("host") or _from_env(meta.get("hostFromEnv"), container, "host", endpoint)
        endpoint.port = meta.get("port") or _from_env(meta.get("portFromEnv"), container, "port", endpoint)
    if not endpoint.host and not endpoint.unknown:
        raise ConversionError(f"{trigger.where}: the trigger names no Redis address (address, or host and port)")
    for part in ("username", "password"):
        variable = meta.get(f"{part}FromEnv")
        if variable:
            endpoint.credentials.append(f"the {part} is {_env_source(variable, container)}")
    return endpoint


def _from_env(variable: str | None, container: Mapping[str, Any] | None, what: str, endpoint: _Endpoint) -> str | None:
    """A literal value of the target container's variable; otherwise, a note of where the value is."""
    if not variable:
        return None
    found = env_value(container, variable) if container is not None else None
    if found is not None and found.value is not None:
        return found.value
    endpoint.unknown.append(f"the {what} is {_env_source(variable, container)}")
    return None


def _env_source(variable: str, container: Mapping[str, Any] | None) -> str:
    if container is None:
        return f"in the Deployment's variable {variable} (give --deployment FILE to look it up)"
    found = env_value(container, variable)
    if found is None:
        return f"in variable {variable}, which the worker container does not declare in env"
    if found.secret is not None:
        return f"in Secret {found.secret[0]}, key {found.secret[1]} (the Deployment's {variable})"
    if found.other is not None:
        return f"in the Deployment's {variable} ({found.other})"
    return f"the Deployment's {variable}"


def _authentication(
    trigger: RedisTrigger,
    authentications: Mapping[tuple[str, str], Mapping[str, Any]],
    container: Mapping[str, Any] | None,
    endpoint: _Endpoint,
    broker: dict[str, Any],
    skipped: list[Skipped],
) -> None:
    """What the trigger's TriggerAuthentication adds: TLS and a CA, credentials, address parts from Secrets."""
    assert trigger.authentication is not None
    kind, name = trigger.authentication
    auth = authentications.get((kind, name))
    where = f"{trigger.where}.authenticationRef"
    if auth is None:
        endpoint.unknown.append(f"{kind} {name} (not in the input) may hold the password or TLS settings")
        return
    spec = auth.get("spec") or {}
    for key in sorted(set(spec) - {"secretTargetRef", "env"}):
        reason = "the operator reads the broker URL and CA from Secrets only"
        skipped.append(Skipped(f"{kind} {name}: spec.{key}", reason))
    refs: list[tuple[str, str]] = []
    for ref in spec.get("secretTargetRef") or []:
        refs.append((str(ref.get("parameter")), f"in Secret {ref.get('name')}, key {ref.get('key')}"))
        if ref.get("parameter") == "ca":
            broker["caFrom"] = {"secretKeyRef": {"name": str(ref.get("name")), "key": str(ref.get("key"))}}
    for ref in spec.get("env") or []:
        refs.append((str(ref.get("parameter")), _env_source(str(ref.get("name")), container)))
    for parameter, source in refs:
        described = f"the {parameter} is {source} ({kind} {name})"
        if parameter in ("username", "password"):
            endpoint.credentials.append(described)
        elif parameter in ("host", "address", "port"):
            endpoint.unknown.append(described)
        elif parameter in ("tls", "ca"):
            endpoint.tls = True
        else:
            reason = "the broker's client certificates are not supported: only a CA (broker.caFrom)"
            skipped.append(Skipped(f"{where} ({kind} {name}) parameter {parameter}", reason))


def _workers_broker_url(container: Mapping[str, Any] | None) -> EnvValue | None:
    if container is None:
        return None
    for variable in BROKER_URL_VARIABLES:
        found = env_value(container, variable)
        if found is not None and (found.secret is not None or found.value is not None):
            return found
    return None


def _usable_url(url: str) -> bool:
    return urlsplit(url).scheme in ("redis", "rediss", "sentinel") and not _has_password(url)


def _has_password(url: str) -> bool:
    return any(re.search(pattern, url) for pattern in URL_PASSWORD_PATTERNS)


def _url(endpoint: _Endpoint, login: str) -> str:
    scheme = "rediss" if endpoint.tls else "redis"
    host = endpoint.host or "HOST"
    port = endpoint.port or "6379"
    query = "?ssl_cert_reqs=none" if endpoint.tls and endpoint.unsafe else ""
    return f"{scheme}://{login}{host}:{port}/{endpoint.db}{query}"


def _describe(endpoint: _Endpoint) -> str:
    if endpoint.host:
        return f"{endpoint.host}:{endpoint.port or 6379}, database {endpoint.db}"
    return "an address from the environment"
