"""A failed poll as a short reason a user can act on (pure: an exception in, one line out, never a password).

``refused``, ``timed out``, ``auth failed``, ``TLS verification failed``, ``no sentinel master``, ``permission
denied``...: the reason becomes the observation's ``error`` (status, Events, metrics), so it names the cause, not
redis-py's exception class.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from socket import gaierror
from urllib.parse import quote

from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workerpool_operator.brokers import BrokerURLError
from workerpool_operator.failures import causes, certificate_refusal, first_line
from workerpool_operator.observe.replies import ObservationError


def describe_failure(error: BaseException, timeout: float) -> str:
    """A short reason a user can act on, for a failed poll of one broker."""
    chain = list(causes(error))
    text = " ".join(str(e) for e in chain)
    if isinstance(error, BrokerURLError):
        return f"bad broker URL: {error}"
    if isinstance(error, ObservationError):
        return str(error)
    if isinstance(error, asyncio.TimeoutError | TimeoutError) and not isinstance(error, RedisError):
        return f"timed out after {timeout:g} s"
    if isinstance(error, MasterNotFoundError):
        return f"no sentinel master: {error}"
    if any(isinstance(e, AuthenticationError | AuthenticationWrongNumberOfArgsError) for e in chain) or any(
        marker in text for marker in ("WRONGPASS", "NOAUTH", "invalid password", "invalid username-password")
    ):
        return f"auth failed: {first_line(error)}"
    if isinstance(error, NoPermissionError):
        return f"permission denied: {first_line(error)}"
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain) or "CERTIFICATE_VERIFY_FAILED" in text:
        refused = certificate_refusal(error) or "the server's certificate was not accepted"
        return f"TLS verification failed: {refused} (is the CA right?)"
    if any(isinstance(e, ssl.SSLError) for e in chain) or "SSL" in text:
        return f"TLS error: {first_line(error)}"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text or "Error 111" in text:
        return f"refused: {first_line(error)}"
    if any(isinstance(e, gaierror) for e in chain) or "Name or service not known" in text:
        return f"unknown host: {first_line(error)}"
    if isinstance(error, RedisTimeoutError):
        return f"timed out: {first_line(error)}"
    if isinstance(error, RedisConnectionError):
        return f"connection failed: {first_line(error)}"
    if isinstance(error, RedisError):
        return f"error: {first_line(error)}"
    return f"unexpected error: {type(error).__name__}: {first_line(error)}"


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (and its URL-quoted form) replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text
