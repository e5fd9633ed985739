"""A host's own history under /v1/hosts/<name>: its events across revisions, kept by each
peer beyond the journal's ring (appliance.host_archive)."""

from __future__ import annotations

from aiohttp import web

from .context import ctx
from .openapi import describe
from .routes import api_error, query_int


@describe("Every event that concerns one host (armed, served, phone-home, power intents and "
          "results, health checks, failures), oldest first, across revisions",
          query={"after": "sequence number already seen (default 0)",
                 "limit": "at most this many (default 100, max 1000)"})
async def host_events(request: web.Request) -> web.Response:
    c = ctx(request)
    name = request.match_info["name"]
    after = query_int(request, "after", 0, 0, 2**63)
    limit = query_int(request, "limit", 100, 1, 1000)
    history = c.host_events(name, after, limit)
    if history is None:
        if c.host_facts(name) is None and c.cluster.host(name) is None:
            raise api_error(f"no host {name!r}", 404)
        history = {"host": name, "events": [], "total": 0}
    return web.json_response(history)


def add_host_routes(app: web.Application) -> None:
    app.router.add_get("/v1/hosts/{name}/events", host_events)
