"""Bearer-token auth for the REST API.

Tokens live in files on the peer, named by the peer config, each with a role: `read` may
GET, `admin` may also change things. Tokens are compared in constant time and never logged;
a request is logged with the token's *name* only. Health, readiness, metrics and the
machine-facing boot endpoints are public by an explicit allowlist: a new route is protected
unless someone decides otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

# The tokens themselves live below the API (the git remote checks them too); these names
# stay importable from here.
from appliance.errors import ApiError
from appliance.tokens import ApiToken, Role, TokenError, load_tokens, match_token

__all__ = ["ApiToken", "Role", "TokenError", "auth_middleware", "is_public", "load_tokens",
           "match_token"]
log = structlog.get_logger("vaquero.api.auth")

# The GitHub webhook authenticates by the HMAC of its body instead of a bearer token, the
# federation exchange by the signatures of the site summaries it carries.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/openapi.json",
                          "/v1/hooks/github", "/v1/federation/exchange"})
# The machine-facing boot chain: machines have no token (DESIGN.md, boot chain).
# The git remote (/git/) checks tokens itself, with HTTP basic auth as the git CLI sends it.
PUBLIC_PREFIXES = ("/boot.ipxe", "/ipxe", "/boot/", "/phone-home/", "/artifacts/", "/firmware/",
                   "/git/")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_NAME = web.RequestKey("token_name", str)  # the authenticated token's name, never its value


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def auth_middleware(tokens: list[ApiToken]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if is_public(request.path):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "unauthorized", "this route needs `Authorization: Bearer <token>`",
                           headers={"WWW-Authenticate": 'Bearer realm="vaquero"'})
        token = match_token(tokens, value.strip().encode())
        if token is None:
            log.warning("api.auth.refused", path=request.path, method=request.method,
                        client=request.remote, reason="unknown token")
            raise ApiError(401, "unauthorized", "the bearer token is not valid", headers={
                "WWW-Authenticate": 'Bearer realm="vaquero", error="invalid_token"'})
        if request.method not in READ_METHODS and token.role != "admin":
            log.warning("api.auth.forbidden", path=request.path, method=request.method,
                        token=token.name)
            raise ApiError(403, "forbidden", f"token {token.name!r} may only read; this needs "
                           "an admin token")
        structlog.contextvars.bind_contextvars(token=token.name)
        request[TOKEN_NAME] = token.name
        return await handler(request)

    return middleware
