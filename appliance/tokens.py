"""API tokens: loaded from files on the peer, compared in constant time, never logged.

Below every package that checks one: the REST API's bearer middleware (`api.auth`) and the
peer's git remote (`source.remote`, HTTP basic auth as the git CLI sends it) share them, and
the git remote sits in a lower layer than the API, so the tokens cannot live in `api/`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.errors import StartupError

Role = Literal["read", "admin"]


@dataclass(frozen=True)
class ApiToken:
    name: str
    role: Role
    secret: bytes


class TokenError(StartupError):
    """A token file that cannot be used, with what to do about it."""


def load_tokens(entries: Iterable[tuple[str, Role, Path]]) -> list[ApiToken]:
    """Read each (name, role, file); refuse unreadable files and short tokens."""
    tokens = []
    for name, role, path in entries:
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise TokenError(f"API token {name!r}: cannot read {path}: {exc.strerror}") from None
        if len(secret) < 16:
            raise TokenError(f"API token {name!r}: {path} holds {len(secret)} bytes; use at least "
                             "16 random characters (`head -c 32 /dev/urandom | base64`)")
        tokens.append(ApiToken(name, role, secret))
    return tokens


def match_token(tokens: list[ApiToken], presented: bytes) -> ApiToken | None:
    """Compare against every token (no early exit), so timing says nothing about which."""
    found = None
    for token in tokens:
        if hmac.compare_digest(token.secret, presented):
            found = token
    return found
