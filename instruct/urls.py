"""URLs as they may be shown: credentials in a URL (http://user:secret@host) never reach a log,
a console or a file. The trainer and the judge both show URLs this way."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"


def redact_url(url: str) -> str:
    """`http://user:pass@host:11434` -> `http://***@host:11434`; other URLs unchanged."""
    parts = urlsplit(url)
    _, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))
