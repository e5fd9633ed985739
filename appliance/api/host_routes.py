"""A host's own history under /v1/hosts/<name>: its events across revisions, kept by each
peer beyond the journal's ring (appliance.host_archive), and its console, gathered from the
peers that recorded it (power/console.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from aiohttp import web

from ..cluster.records import PeerRecord
from ..errors import ApiError
from ..power.console import MAX_READ, merge_runs
from .context import ctx
from .openapi import describe
from .routes import query_int

log = structlog.get_logger("vaquero.api")
# Another peer's recorded sessions of one host: the last MAX_READ bytes of its console as
# JSON text, where an escaped control byte takes up to 6 bytes. More is not an answer.
MAX_PEER_ANSWER = 8 * MAX_READ


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


@describe("A host's serial-over-LAN console as recorded while it was in a stage, gathered "
          "from every peer that recorded part of it (the leader records; a leader change "
          "splits it) and ordered by time, each part under a line naming its peer: the last "
          "`tail` bytes, or from `offset` on (follow with the answer's next_offset)",
          query={"offset": "bytes into the whole console", "tail": "last bytes (default 65536)",
                 "local": "1: only this peer's recorded sessions, as a list (`runs`)"})
async def host_console(request: web.Request) -> web.Response:
    c = ctx(request)
    name = request.match_info["name"]
    tail = query_int(request, "tail", 65536, 1, 1 << 20)
    offset = request.query.get("offset")
    start = query_int(request, "offset", 0, 0, 2**63) if offset is not None else None
    own = c.console_runs(name)
    if request.query.get("local") == "1":
        if own is None:
            raise ApiError(404, "not_found", f"no console of {name!r} recorded on this peer")
        return web.json_response({"host": name, "peer": c.peer, "runs": own})
    by_peer = await _from_other_peers(request, c.cluster.peers(), c.peer)
    if own is not None:
        by_peer[c.peer] = own
    if not by_peer:
        raise ApiError(404, "not_found", f"no console recorded for {name!r} on any peer (only "
                       "hosts with an IPMI BMC are recorded, by the leader, while in a stage)")
    data = merge_runs(by_peer).encode()
    if start is None:
        start = max(0, len(data) - tail)
    elif start > len(data):  # a peer's log rotated since: start over
        start = 0
    text = data[start:start + MAX_READ]
    return web.json_response({"host": name, "offset": start, "next_offset": start + len(text),
                              "text": text.decode(errors="replace"),
                              "peers": sorted(by_peer)})


async def _from_other_peers(request: web.Request, peers: list[PeerRecord], me: str
                            ) -> dict[str, list[dict[str, Any]]]:
    """Each other peer's recorded sessions of the host, asked all at once (5 s each); a
    peer that cannot answer is left out."""
    import aiohttp

    headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
    others = [p for p in peers if p.get("api_url") and p.get("name") != me]

    async def ask(http: aiohttp.ClientSession, peer: PeerRecord) -> list[dict[str, Any]] | None:
        try:
            async with http.get(f"{peer['api_url']}{request.path}", params={"local": "1"},
                                headers=headers) as resp:
                if resp.status == 200:
                    raw = bytearray()
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        raw += chunk
                        if len(raw) > MAX_PEER_ANSWER:
                            log.warning("console.peer_answer_too_large",
                                        peer=peer.get("name"), limit=MAX_PEER_ANSWER)
                            return None
                    body = json.loads(raw)
                    return body.get("runs") if isinstance(body, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass
        return None

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        answers = await asyncio.gather(*(ask(http, p) for p in others))
    return {str(p["name"]): runs for p, runs in zip(others, answers, strict=True)
            if isinstance(runs, list) and all(_is_run(r) for r in runs)}


def _is_run(run: object) -> bool:
    """A session as another peer described it: checked before it is merged."""
    return (isinstance(run, dict) and isinstance(run.get("at"), int | float)
            and isinstance(run.get("text"), str)
            and all(isinstance(run.get(k), int | None) for k in ("stage", "attempt")))


def add_host_routes(app: web.Application) -> None:
    app.router.add_get("/v1/hosts/{name}/events", host_events)
    app.router.add_get("/v1/hosts/{name}/console", host_console)
