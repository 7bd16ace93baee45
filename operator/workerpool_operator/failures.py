"""Short texts for failures, shared by the observer and the worker: one line a user can act on. Pure."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

FIRST_LINE_LIMIT = 300


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it was raised from or during, outermost first (each once)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def first_line(error: BaseException, limit: int = FIRST_LINE_LIMIT) -> str:
    """The first line of the error's text (its type's name when it has none), at most ``limit`` characters."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def certificate_refusal(error: BaseException) -> str | None:
    """Why a TLS peer's certificate was refused, when that is what ``error`` (or what it wraps) says;
    ``None`` for any other failure. redis-py sometimes keeps only the text of the ssl error, so the text
    is searched too."""
    chain = list(causes(error))
    for seen in chain:
        if isinstance(seen, ssl.SSLCertVerificationError):
            detail = getattr(seen, "verify_message", None) or getattr(seen, "reason", None)
            if detail:
                return str(detail)
    for seen in chain:
        text = str(seen)
        for marker in ("certificate verify failed: ", "CERTIFICATE_VERIFY_FAILED] "):
            if marker in text:
                return text.split(marker, 1)[1].split("(_ssl.c", 1)[0].split(")")[0].split("\n")[0].strip()[:200]
    return None
