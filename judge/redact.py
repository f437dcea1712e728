"""Credentials never leave the process: URLs are shown without their user and password, and
every message that a server or a library wrote is scrubbed of the secrets before the judge
prints or writes it (an error page may echo the `Authorization` header back).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from instruct.urls import REDACTED, redact_url

__all__ = ["REDACTED", "Redactor", "redact_url"]


@dataclass(frozen=True)
class Redactor:
    """Replaces each secret in a text: the URL's user and password (as typed, decoded, and as
    the Basic-auth header sends them) and the API key."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def for_server(cls, url: str, api_key: str | None) -> Redactor:
        secrets = [api_key] if api_key else []
        userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
        if at and userinfo:
            user, _, password = userinfo.partition(":")
            basic = base64.b64encode(unquote(userinfo).encode()).decode()
            # A user without a password is usually a token; a named user beside a password is not
            # secret, and scrubbing a short name ("me") would mangle every message.
            secrets += [userinfo, unquote(userinfo), basic, password, unquote(password)] if password \
                else [userinfo, unquote(userinfo), basic]
        # Longest first, so a secret that contains another is replaced whole.
        return cls(tuple(sorted({s for s in secrets if s}, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text
