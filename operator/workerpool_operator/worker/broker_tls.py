"""Celery's TLS settings for a ``rediss://`` broker: verified with a CA file (``WORKERPOOL_BROKER_CA_FILE``),
or with the system CAs when nothing else is said.

kombu reads TLS options from Celery's ``broker_use_ssl`` or from the URL's ``ssl_*`` query fields, and the
URL's replace the setting as a whole: a URL ending in ``?ssl_cert_reqs=required`` (as Celery's docs suggest)
would drop the CA. So the URL's fields move into ``broker_use_ssl``, next to the CA, and leave the URL.
Pure: no connection here (the caller checks the broker with the result).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kombu.utils.url import parse_url

CERT_REQS_NAMES = "required, optional or none"


def with_ca_file(url: str, ca_file: Path, configured: object) -> tuple[str, dict[str, Any]]:
    """``(url, broker_use_ssl)`` for ``url`` verified with the CA in ``ca_file``.

    Certificates are required unless the URL says otherwise (``ssl_cert_reqs``, read as the operator reads
    it); the URL's other ``ssl_*`` fields and the app's own ``broker_use_ssl`` options (a client
    certificate, say) are kept; the CA is always ``ca_file``. Raises ValueError (the message follows the
    URL in a sentence) when the URL is not ``rediss://`` or its TLS fields cannot be read.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme != "rediss" or ";" in url:
        raise ValueError("is not rediss:// (TLS), but a broker CA file is given")
    try:
        from_url: dict[str, Any] = dict(parse_url(url).get("ssl") or {})
    except KeyError:  # kombu's reading of ssl_cert_reqs knows only these names
        raise ValueError(f"is invalid: ssl_cert_reqs must be {CERT_REQS_NAMES}") from None
    except ValueError as error:  # a port that is not a number
        raise ValueError(f"is invalid: {error}") from None
    own: dict[str, Any] = dict(configured) if isinstance(configured, dict) else {}
    options = {**own, "ssl_cert_reqs": ssl.CERT_REQUIRED, **from_url, "ssl_ca_certs": str(ca_file)}
    return without_ssl_fields(url), options


def verified_by_default(url: str, configured: object) -> dict[str, Any] | None:
    """``broker_use_ssl`` that makes a ``rediss://`` broker's certificate checked against the system CAs
    when nothing says how to check it; ``None`` when the URL or the app already says (``ssl_*`` fields,
    ``broker_use_ssl``), or the broker is not TLS. kombu alone would not check the certificate at all."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "rediss" or ";" in url or configured:
        return None
    if any(field.split("=", 1)[0].startswith("ssl_") for field in parts.query.split("&") if field):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def without_ssl_fields(url: str) -> str:
    """``url`` without its ``ssl_*`` query fields; everything else (the password too) as written."""
    parts = urlsplit(url)
    kept = [field for field in parts.query.split("&") if field and not field.split("=", 1)[0].startswith("ssl_")]
    return urlunsplit(parts._replace(query="&".join(kept)))
