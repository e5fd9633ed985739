"""The REST API under /v1, identical on every peer. Reads come from the local replica;
writes go through Raft from whichever peer receives them (pysyncobj forwards a follower's
command to the leader), so a client may talk to any peer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from appliance.errors import ApiError
from appliance.power.manager import ACTIONS

from .auth import TOKEN_NAME
from .context import ctx
from .openapi import describe


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} must be an integer") from None
    return max(lo, min(hi, value))


async def read_body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "bad_request", "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return data


def _status_dict(request: web.Request) -> dict:
    c = ctx(request)
    st = c.cluster.status
    return {
        "peer": c.peer, "site": c.site, "version": c.version, "time": time.time(),
        "uptime_s": round(time.time() - c.started, 1),
        "raft": {"self": st.self_address, "leader": st.leader, "is_leader": st.is_leader,
                 "has_quorum": st.has_quorum, "term": st.term, "commit_index": st.commit_index,
                 "last_applied": st.last_applied, "members": list(st.members),
                 "connected": list(st.connected), "ready": st.ready},
        "applied_revision": c.cluster.applied_revision(),
        # What this peer's data plane serves: the applied revision, or a fixed `sot:` one.
        "served_revision": c.boot().get("revision"),
        "boot": c.boot(),
    }


@describe("Liveness: the process answers", tag="health")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "peer": ctx(request).peer})


@describe("Readiness: this peer reaches a quorum and knows the leader", tag="health")
async def readyz(request: web.Request) -> web.Response:
    st = ctx(request).cluster.status
    ready = st.has_quorum and st.leader is not None and st.ready
    reason = None if ready else ("no quorum reachable" if not st.has_quorum else "no leader")
    return web.json_response({"ready": ready, "reason": reason, "leader": st.leader},
                             status=200 if ready else 503)


@describe("This peer, its Raft view and the applied revision")
async def status(request: web.Request) -> web.Response:
    return web.json_response(_status_dict(request))


@describe("The leader as this peer sees it")
async def leader(request: web.Request) -> web.Response:
    st = ctx(request).cluster.status
    return web.json_response({"leader": st.leader, "term": st.term, "self": st.self_address,
                              "is_leader": st.is_leader, "has_quorum": st.has_quorum})


@describe("The peers of the group, with this peer's connection to each")
async def peers(request: web.Request) -> web.Response:
    c = ctx(request)
    st = c.cluster.status
    listed = {p["address"]: p for p in c.cluster.peers()}
    out = []
    for address in sorted(set(st.members) | set(listed)):
        entry = dict(listed.get(address, {"address": address}))
        entry.update(member=address in st.members, leader=address == st.leader,
                     self=address == st.self_address,
                     connected=address == st.self_address or address in st.connected)
        out.append(entry)
    return web.json_response({"peers": out})


@describe("Add a peer to the group (one at a time; start it after this returns)",
          body="{address: host:port, name?, api_url?}")
async def add_peer(request: web.Request) -> web.Response:
    body = await read_body(request)
    address = body.get("address")
    if not isinstance(address, str):
        raise ApiError(400, "bad_request", "address (host:port) is required")
    await ctx(request).cluster.add_peer(address, name=body.get("name"),
                                        api_url=body.get("api_url"))
    return web.json_response({"added": address}, status=201)


@describe("Remove a peer from the group")
async def remove_peer(request: web.Request) -> web.Response:
    address = request.match_info["address"]
    await ctx(request).cluster.remove_peer(address)
    return web.json_response({"removed": address})


@describe("Revisions and their lifecycle", query={"state": "only revisions in this state"})
async def revisions(request: web.Request) -> web.Response:
    c = ctx(request)
    return web.json_response({"revisions": c.cluster.revisions(request.query.get("state")),
                              "applied": c.cluster.applied_revision()})


@describe("One revision: its lifecycle, validation report summary, plan summary, approvals")
async def revision(request: web.Request) -> web.Response:
    record = ctx(request).cluster.revision(request.match_info["sha"])
    if record is None:
        raise ApiError(404, "not_found", f"no revision {request.match_info['sha']}")
    return web.json_response(record)


@describe("Approve a revision", body="{note?}")
async def approve(request: web.Request) -> web.Response:
    body = await read_body(request)
    sha = request.match_info["sha"]
    by = request.get(TOKEN_NAME, "api")
    result = await ctx(request).cluster.approve_revision(sha, by=by, note=body.get("note"))
    return web.json_response(result)


@describe("Re-arm a superseded revision (rolling back): it is planned again against the "
          "applied one and then awaits approval", body="{note?}")
async def rearm(request: web.Request) -> web.Response:
    body = await read_body(request)
    sha = request.match_info["sha"]
    by = request.get(TOKEN_NAME, "api")
    note = body.get("note") if isinstance(body.get("note"), str) else None
    result = await ctx(request).cluster.transition_revision(
        sha, "validated", by=by, reason=f"re-armed for rollback{': ' + note if note else ''}")
    return web.json_response(result)


def _with_local(record: Mapping[str, Any], here: int | None) -> Mapping[str, Any]:
    """A replicated record, plus the stages this peer saw done that the group has not
    applied yet (a peer cut off from the majority serves from those)."""
    if here is not None and here > (record.get("done") or 0):
        return {**record, "done_here": here, "pending_replication": True}
    return record


@describe("Hosts and where each is in its workflow; `done_here` and `pending_replication` "
          "when this peer saw stages done that the group has not recorded yet")
async def hosts(request: web.Request) -> web.Response:
    c = ctx(request)
    local = c.local_done()
    records = c.cluster.hosts()
    known = {r.get("name") for r in records}
    out = [_with_local(r, local.get(r.get("name", ""))) for r in records]
    out += [_with_local({"name": name, "state": "unrecorded", "done": 0}, done)
            for name, done in sorted(local.items()) if name not in known]
    return web.json_response({"hosts": out})


@describe("One host: its record and what the applied revision says of it")
async def host(request: web.Request) -> web.Response:
    c = ctx(request)
    name = request.match_info["name"]
    record, facts = c.cluster.host(name), c.host_facts(name)
    if record is None and facts is None:
        raise ApiError(404, "not_found", f"no host {name!r}")
    shown = _with_local(record, c.local_done().get(name)) if record is not None else None
    return web.json_response({"name": name, "record": shown, "sot": facts})


async def _power(request: web.Request, action: str) -> web.Response:
    """The peer's power control answers or raises ApiError (no such host: 404, no BMC: 409,
    the BMC failed: 502)."""
    power = ctx(request).power
    if power is None:
        raise ApiError(409, "no_power", "this peer has no BMC secrets configured "
                       "(bmc.secrets_file)")
    return web.json_response(await power(request.match_info["name"], action))


@describe("A host's power state, asked of its BMC (any peer)")
async def host_power(request: web.Request) -> web.Response:
    return await _power(request, "status")


@describe("A power action on a host's BMC: on, off, soft_off, cycle, pxe (next boot once), "
          "pxe_persistent, pxe_boot (next boot PXE, then on, or cycle if it runs: one BMC "
          "session). Leader only: written to Raft as an intent, then its result",
          body="{action}")
async def host_power_action(request: web.Request) -> web.Response:
    body = await read_body(request)
    action = body.get("action")
    if not isinstance(action, str) or action == "status":
        raise ApiError(400, "bad_request",
                       "action: on|off|soft_off|cycle|pxe|pxe_persistent|pxe_boot")
    if action not in ACTIONS:
        raise ApiError(400, "bad_request",
                       f"unknown power action {action!r} (one of {', '.join(ACTIONS)})")
    return await _power(request, action)


@describe("Events, oldest first, after a sequence number",
          query={"after": "sequence number already seen (default 0)",
                 "limit": "at most this many (default 100, max 1000)"})
async def events(request: web.Request) -> web.Response:
    after = query_int(request, "after", 0, 0, 2**63)
    limit = query_int(request, "limit", 100, 1, 1000)
    return web.json_response(ctx(request).cluster.events_since(after, limit))


@describe("Follow events live: newline-delimited JSON, one event a line",
          query={"after": "sequence number already seen", "for": "seconds to follow (max 3600)"})
async def events_stream(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    after = query_int(request, "after", c.cluster.events_since(0, 0)["last_seq"], 0, 2**63)
    duration = query_int(request, "for", 3600, 1, 3600)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    deadline = time.monotonic() + duration
    while (remaining := deadline - time.monotonic()) > 0:
        page = await c.cluster.follow_events(after, limit=500, timeout=min(remaining, 15))
        if page["first_seq"] > after + 1 and after:
            gap = {"kind": "gap", "message": f"events {after + 1}..{page['first_seq'] - 1} "
                   "left the journal before they were read"}
            await response.write((json.dumps(gap) + "\n").encode())
        for event in page["events"]:
            await response.write((json.dumps(event) + "\n").encode())
            after = event["seq"]
        if not page["events"]:
            await response.write(b"\n")  # keep-alive; also notices a client that left
        await asyncio.sleep(0)
    await response.write_eof()
    return response


@describe("Record an operator note in the event journal", body="{message, host?}")
async def add_event(request: web.Request) -> web.Response:
    body = await read_body(request)
    message = body.get("message")
    if not isinstance(message, str) or not message:
        raise ApiError(400, "bad_request", "message is required")
    seq = await ctx(request).cluster.append_event(
        "note", host=body.get("host"), message=message,
        data={"by": request.get(TOKEN_NAME, "api")})
    return web.json_response({"seq": seq}, status=201)


@describe("Sites known to this peer")
async def sites(request: web.Request) -> web.Response:
    return web.json_response({"sites": ctx(request).sites()})


def add_api_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/v1/status", status)
    r.add_get("/v1/leader", leader)
    r.add_get("/v1/peers", peers)
    r.add_post("/v1/peers", add_peer)
    r.add_delete("/v1/peers/{address}", remove_peer)
    r.add_get("/v1/revisions", revisions)
    r.add_get("/v1/revisions/{sha}", revision)
    r.add_post("/v1/revisions/{sha}/approve", approve)
    r.add_post("/v1/revisions/{sha}/rearm", rearm)
    r.add_get("/v1/hosts", hosts)
    r.add_get("/v1/hosts/{name}", host)
    r.add_get("/v1/hosts/{name}/power", host_power)
    r.add_post("/v1/hosts/{name}/power", host_power_action)
    r.add_get("/v1/events", events)
    r.add_post("/v1/events", add_event)
    r.add_get("/v1/events/stream", events_stream)
    r.add_get("/v1/sites", sites)

