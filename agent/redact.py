"""Secrets never echoed: URL credentials are cut out of every error and log line.

A broker URL never carries credentials (``agent.bus.url`` refuses them), but the URL a user
typed still appears in the error that refuses it, and in log lines. ``redact`` replaces the
userinfo of every ``scheme://user:password@host`` in a text with ``***`` and the value of every
query parameter with ``***``, so neither a password nor a token (``?token=…``, or a bare token
as the user name) is repeated. File paths (key paths included) are not secrets and stay.

A leaf module: it imports nothing from ``agent``.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

#: A URL inside a text: ``scheme://`` up to the next blank or quote.
_URL = re.compile(r"\b(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>]*)")

MASK = "***"


def redact(text: str) -> str:
    """``text`` with the userinfo and query values of every URL in it replaced by ``***``.

    >>> redact("bad broker URL 'nats://user:secret@127.0.0.1:4222?token=t&x=1'")
    "bad broker URL 'nats://***@127.0.0.1:4222?token=***&x=***'"
    """
    if "://" not in text:
        return text
    return _URL.sub(lambda m: m["scheme"] + _redact_rest(m["rest"]), text)


def _redact_rest(rest: str) -> str:
    """The part of a URL after ``scheme://``, userinfo and query values masked."""
    rest, hash_, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    if "@" in rest:  # up to the last @: a password may hold an unescaped / (over-masking is safe)
        rest = MASK + "@" + rest.rpartition("@")[2]
    if query:
        query = "&".join(
            f"{name}={MASK}" if eq else name
            for name, eq, _ in (item.partition("=") for item in query.split("&"))
        )
    return rest + question + query + hash_ + fragment


def redact_url(url: str) -> str:
    """One URL, the whole string taken as the URL (blanks and quotes included), masked as
    ``redact`` masks URLs in a text; a string without ``://`` is masked from its last ``@``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return MASK + "@" + url.rpartition("@")[2] if "@" in url else url
    return scheme + sep + _redact_rest(rest)


def redact_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """structlog processor: ``redact`` every string value of the event (the rendered
    exception included, so it must run after ``format_exc_info``)."""
    for key, value in event.items():
        if isinstance(value, str) and "://" in value:
            event[key] = redact(value)
    return event
