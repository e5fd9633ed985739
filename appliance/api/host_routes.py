"""A host's own history under /v1/hosts/<name>: its events across revisions, kept by each
peer beyond the journal's ring (appliance.host_archive)."""

from __future__ import annotations

from aiohttp import web

from appliance.errors import ApiError

from .context import ctx
from .openapi import describe
from .routes import query_int


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
            raise ApiError(404, "not_found", f"no host {name!r}")
        history = {"host": name, "events": [], "total": 0}
    return web.json_response(history)


@describe("A host's serial-over-LAN console as recorded while it was in a stage: the last "
          "`tail` bytes, or from `offset` on (follow with the answer's next_offset). Asked of "
          "a peer that did not record it, the answer comes from the peer that did",
          query={"offset": "bytes into the current file", "tail": "last bytes (default 65536)",
                 "local": "1: only this peer's recording"})
async def host_console(request: web.Request) -> web.Response:
    c = ctx(request)
    name = request.match_info["name"]
    offset = request.query.get("offset")
    tail = query_int(request, "tail", 65536, 1, 1 << 20)
    start = query_int(request, "offset", 0, 0, 2**63) if offset is not None else None
    found = c.console(name, start, tail)
    if found is not None:
        return web.json_response({**found, "peer": c.peer})
    if request.query.get("local") != "1":
        answer = await _from_other_peers(request, c.cluster.peers(), c.peer)
        if answer is not None:
            return web.json_response(answer)
    raise ApiError(404, "not_found", f"no console recorded for {name!r} on any peer (only "
                   "hosts with an IPMI BMC are recorded, by the leader, while in a stage)")


async def _from_other_peers(request: web.Request, peers: list[dict], me: str) -> dict | None:
    import aiohttp

    query = {**request.query, "local": "1"}
    headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for peer in peers:
            url = peer.get("api_url")
            if not url or peer.get("name") == me:
                continue
            try:
                async with http.get(f"{url}{request.path}", params=query,
                                    headers=headers) as resp:
                    if resp.status == 200:
                        return await resp.json()
            except (aiohttp.ClientError, TimeoutError):
                continue
    return None


def add_host_routes(app: web.Application) -> None:
    app.router.add_get("/v1/hosts/{name}/events", host_events)
    app.router.add_get("/v1/hosts/{name}/console", host_console)
