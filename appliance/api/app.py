"""The API application: middlewares (request ids and logs, every error as JSON, auth), routes,
/metrics and the OpenAPI document."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from appliance.cluster.errors import (
    ClusterError,
    CommandRejected,
    CommitTimeout,
    InvalidCommand,
    MembershipChangeDenied,
    NoLeader,
    NoQuorum,
    NotLeader,
)
from appliance.errors import ApiError

from .auth import ApiToken, auth_middleware, is_public
from .context import API_CONTEXT, ApiContext, ctx
from .federation_routes import add_federation_routes, site_forwarding
from .host_routes import add_host_routes
from .openapi import build_document, describe
from .rollout_routes import add_rollout_routes
from .routes import add_api_routes

log = structlog.get_logger("vaquero.api")
# Request ids: a random per-process prefix and a counter. uuid4() per request was 7% of the
# event loop's time serving per-host scripts (tools/bench/http_boot.py, py-spy).
_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request id on every log line of the request; one access line at the end."""
    structlog.contextvars.clear_contextvars()
    c = request.app[API_CONTEXT]
    request_id = request.headers.get("X-Request-Id") or f"{_ID_PREFIX}-{next(_ids):x}"
    structlog.contextvars.bind_contextvars(request_id=request_id, peer=c.peer, site=c.site)
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        # Public routes are health checks and the boot chain, which logs its own steps (and
        # whose phone-home paths carry a host's token: never written to a log).
        if not is_public(request.path):
            log.info("api.request", method=request.method, path=request.path, status=status,
                     ms=round((time.perf_counter() - start) * 1000, 1), client=request.remote)


def cluster_error(exc: ClusterError) -> ApiError:
    """A replication failure as a clear HTTP answer; a cut-off peer says so with 503."""
    if isinstance(exc, NoQuorum):
        return ApiError(503, "no_quorum", str(exc), retry="any peer that reaches a majority")
    if isinstance(exc, NoLeader):
        return ApiError(503, "no_leader", str(exc))
    if isinstance(exc, NotLeader):
        return ApiError(409, "not_leader", str(exc), leader=exc.leader)
    if isinstance(exc, CommitTimeout):
        return ApiError(504, "commit_timeout", str(exc))
    if isinstance(exc, MembershipChangeDenied):
        return ApiError(409, "membership_change_in_progress", str(exc))
    if isinstance(exc, CommandRejected):
        return ApiError(404 if exc.code.startswith("unknown") else 409, exc.code, exc.message)
    if isinstance(exc, InvalidCommand):
        return ApiError(400, "bad_request", str(exc))
    return ApiError(503, "cluster_error", str(exc))


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place an error becomes JSON: every ApiError a handler, the auth or the site
    forwarding raises, and every replication failure, as {"error", "message", ...}."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except ClusterError as exc:
        return cluster_error(exc).response()


def _prometheus(values: dict[str, float]) -> str:
    lines, typed = [], set()
    for name, value in sorted(values.items()):
        base = name.split("{", 1)[0]
        if base not in typed:  # one TYPE line per metric, also when it has labels
            typed.add(base)
            lines.append(f"# TYPE {base} gauge")
        lines.append(f"{name} {value}")
    return "\n".join(lines) + "\n"


@describe("Prometheus metrics: Raft, boot steps, DHCP, TFTP, artifact cache", tag="health")
async def metrics(request: web.Request) -> web.Response:
    c = ctx(request)
    st = c.cluster.status
    values: dict[str, float] = {
        "vaquero_raft_term": st.term, "vaquero_raft_commit_index": st.commit_index,
        "vaquero_raft_last_applied": st.last_applied,
        "vaquero_raft_is_leader": int(st.is_leader), "vaquero_raft_has_quorum": int(st.has_quorum),
        "vaquero_raft_members": len(st.members),
        "vaquero_raft_connected_peers": len(st.connected),
        "vaquero_events_last_seq": c.cluster.events_since(0, 0)["last_seq"],
        "vaquero_uptime_seconds": round(time.time() - c.started, 1),
    }
    for prefix, source in c.metrics.items():
        for key, value in source().items():
            values[f"vaquero_{prefix}_{key}"] = value
    return web.Response(text=_prometheus(values), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


@describe("This API's OpenAPI 3 document", tag="health")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build_document(request.app, ctx(request).version),
                             dumps=lambda d: json.dumps(d, indent=1))


def make_api_app(context: ApiContext, tokens: list[ApiToken],
                 extra_routes: Callable[[web.Application], None] | None = None
                 ) -> web.Application:
    """The peer's one HTTP application: the API, plus (extra_routes) the boot endpoints."""
    app = web.Application(middlewares=[request_context, errors, auth_middleware(tokens),
                                       site_forwarding])
    app[API_CONTEXT] = context
    add_api_routes(app)
    add_rollout_routes(app)
    add_host_routes(app)
    add_federation_routes(app)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/openapi.json", openapi)
    if extra_routes is not None:
        extra_routes(app)
    return app
