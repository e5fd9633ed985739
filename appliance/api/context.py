"""What the API handlers read: typed application state (aiohttp AppKey), set once at start."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from appliance.cluster import Cluster


@dataclass
class ApiContext:
    peer: str
    site: str
    version: str
    cluster: Cluster
    # Counters of the data plane and others, by metric name, read at scrape time.
    metrics: dict[str, Callable[[], dict[str, float]]] = field(default_factory=dict)
    # The applied revision's SoT facts for a host (site, cluster, workflow...), if known.
    host_facts: Callable[[str], dict[str, Any] | None] = lambda _: None
    sites: Callable[[], list[dict[str, Any]]] = list
    # The boot network as this peer serves it (interface, address, ports; None when off).
    boot: Callable[[], dict[str, Any]] = dict
    # power(host, action) -> result; None when this peer has no power control configured.
    power: Callable[[str, str], Awaitable[dict[str, Any]]] | None = None
    # rollout_progress(sha) -> the rollout's progress; None without a workflow engine.
    rollout_progress: Callable[[str], Awaitable[dict[str, Any]]] | None = None
    # Stages this peer saw a host complete (its phone-homes), replicated or not yet: a peer
    # cut off from the group serves from this, so it shows it too: {host: stages done}.
    local_done: Callable[[], dict[str, int]] = dict
    # host_events(name, after, limit) -> the host's archived history, None if it has none.
    host_events: Callable[[str, int, int], dict[str, Any] | None] = lambda *_: None
    # console_runs(name) -> the sessions of the host's SOL console this peer recorded
    # (power/console.py ConsoleRecorder.runs), or None.
    console_runs: Callable[[str], list[dict[str, Any]] | None] = lambda _: None
    # appliance/federation/service.py FederationService (api/federation_routes.py
    # FederationApi); None when the peer takes no part in a federation.
    federation: Any = None
    started: float = field(default_factory=time.time)


API_CONTEXT = web.AppKey("api_context", ApiContext)


def ctx(request: web.Request) -> ApiContext:
    return request.app[API_CONTEXT]
