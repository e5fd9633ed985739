"""Federation routes: the exchange other sites call (authenticated by the signatures of the
summaries it carries, not by a token), the federation view, the admin's gate override, and
forwarding a request that names another site (`?site=fra1`) to a peer of that site with the
caller's own token, which that site must accept too (as Nomad forwards across regions)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import structlog
from aiohttp import web

from appliance.errors import ApiError

from .auth import TOKEN_NAME
from .context import ctx
from .openapi import describe
from .routes import read_body

log = structlog.get_logger("vaquero.api.federation")
EXCHANGE_PATH = "/v1/federation/exchange"
MAX_EXCHANGE_BODY = 1 << 20
FORWARD_TIMEOUT = 30.0
_HOP = "X-Vaquero-Forwarded"


class FederationApi(Protocol):
    """What the peer's federation service offers the API (appliance/federation/service.py)."""

    async def answer(self, request: dict[str, Any], via: str) -> dict[str, Any]: ...
    def view(self) -> dict[str, Any]: ...
    async def override(self, sha: str, by: str, reason: str | None) -> dict: ...
    def endpoints(self, site: str) -> list[str]: ...


def _federation(request: web.Request) -> FederationApi:
    service = ctx(request).federation
    if service is None:
        raise ApiError(404, "not_found",
                       "this peer takes no part in a federation (no site summaries)")
    return service


@describe("Another site's leader hands over signed site summaries (its own and those it "
          "relays) and gets back the ones it lacks; accepted on their signatures alone",
          body="{from, summaries: [envelope], have: {site: seq}}", tag="federation")
async def exchange(request: web.Request) -> web.Response:
    service = _federation(request)
    if (request.content_length or 0) > MAX_EXCHANGE_BODY:
        raise ApiError(400, "bad_request", f"the body is over {MAX_EXCHANGE_BODY} bytes")
    body = await read_body(request)
    sender = body.get("from") if isinstance(body.get("from"), str) else "?"
    answer = await service.answer(body, via=f"{str(sender)[:63]}@{request.remote}")
    return web.json_response(answer)


@describe("Every site: its last verified summary, its age, its place in the rollout order, "
          "and why it waits", tag="federation")
async def federation(request: web.Request) -> web.Response:
    return web.json_response(_federation(request).view())


@describe("Let this site apply a revision without waiting for the sites before it "
          "(admin; recorded in the journal)", body="{reason?}", tag="federation")
async def override(request: web.Request) -> web.Response:
    body = await read_body(request)
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ApiError(400, "bad_request", "reason must be a string")
    result = await _federation(request).override(request.match_info["sha"],
                                                 request.get(TOKEN_NAME, "api"), reason)
    return web.json_response(result)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def site_forwarding(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`?site=X` on any route: answered here if X is this site, else by a peer of X. Runs
    after the token check: this peer is no open relay to other sites."""
    site = request.query.get("site")
    c = ctx(request)
    if not site or site == c.site or c.federation is None:
        return await handler(request)
    if request.headers.get(_HOP):
        raise ApiError(400, "bad_request",
                       f"already forwarded once; site {site} is not this one ({c.site})")
    endpoints = c.federation.endpoints(site)
    if not endpoints:
        raise ApiError(404, "not_found", f"the SoT declares no site {site!r} (or no peer of it)")
    query = [(k, v) for k, v in request.query.items() if k != "site"]
    headers = {k: v for k, v in request.headers.items()
               if k.lower() in ("authorization", "content-type", "accept")}
    headers[_HOP] = c.site
    data = await request.read() if request.can_read_body else None
    errors = []
    timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in endpoints:
            try:
                async with session.request(request.method, url + request.path, params=query,
                                           data=data, headers=headers) as resp:
                    body = await resp.read()
                    log.info("federation.forwarded", site=site, to=url, path=request.path,
                             status=resp.status)
                    return web.Response(body=body, status=resp.status,
                                        content_type=resp.content_type,
                                        headers={"X-Vaquero-Site": site})
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{url}: {exc.__class__.__name__}")
    raise ApiError(502, "site_unreachable",
                   f"no peer of site {site} answered: " + json.dumps(errors))


def add_federation_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(EXCHANGE_PATH, exchange)
    r.add_get("/v1/federation", federation)
    r.add_post("/v1/federation/override/{sha}", override)
