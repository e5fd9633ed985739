"""The machine-facing HTTP endpoints of the boot chain (no bearer token: machines have none).

  GET  /boot.ipxe                       what DHCP hands iPXE: chains to /ipxe with MAC and UUID
  GET  /ipxe?mac=&uuid=&serial=&asset=  the host's script for the stage it is at (or disk boot)
  GET  /boot/{host}/{stage}/script.ipxe the script of one stage
  GET  /boot/{host}/{stage}/loaded      a generated script has loaded the stage's kernel
                                        and initrds and is about to boot them
  GET  /boot/{host}/{stage}/config      the rendered install config of one stage
  GET  /boot/{host}/{stage}/user-data   the same, for cloud-init's nocloud-net datasource
  GET  /boot/{host}/{stage}/meta-data   instance-id and hostname for nocloud-net
  POST /phone-home/{host}/{stage}/{token}  the host reports the stage done
  GET  /firmware/{name}                 iPXE binaries over HTTP (UEFI HTTP boot)

Each step a host takes is logged with its name: that log is how an operator follows a boot.

Why the routes answer a `BootRequest` with a `BootAnswer` instead of aiohttp objects: in a
boot storm every machine asks for its script, and aiohttp's request and response objects
and the API's middlewares cost three times the route itself (tools/bench/http_boot.py,
py-spy). The boot port's lean front (netboot/boot_front.py) calls these routes straight
from its protocol; `add_boot_routes` mounts the same routes on an aiohttp application
(the API's, for connections the front hands over, and the tests'). A route that needs to
wait (a render not cached yet, a phone-home's fsync) returns an awaitable instead.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from appliance.metrics import counter_values
from appliance.netboot.boottable import BootTable
from appliance.netboot.identify import Identity, resolve
from appliance.netboot.progress import HostProgress, OutOfOrder
from appliance.netboot.refusals import RefusalDigest
from appliance.sot.render import ipxe_try_peers, local_disk_script

log = structlog.get_logger("vaquero.netboot.boot")

# What DHCP hands iPXE: ask a peer for this machine's script, by the MAC that booted and
# SMBIOS UUID, serial number and asset tag; the peer that answered DHCP first, then the
# site's other peers. The script it chains falls back the same way for every fetch
# (sot.render.ipxe_try_peers). A chained script that returns (a local-disk `exit`) ends
# this one the same way.
BOOT_ATTEMPT = ("chain --autofree ${vq-base}/ipxe?mac=${netX/mac}&uuid=${uuid}"
                "&serial=${serial:uristring}&asset=${asset:uristring}"
                "&arch=${buildarch}&platform=${platform} || goto ${vq-next}\nexit\n")
MAX_REPORT = 4096  # bytes of a phone-home's body that are read (and logged, up to 1,024)


def boot_ipxe_script(bases: tuple[str, ...]) -> str:
    return ("#!ipxe\n# Vaquero: ask the peers for this machine's script\n"
            + ipxe_try_peers(bases, BOOT_ATTEMPT))


IPXE_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class BootAnswer:
    status: int
    body: bytes
    content_type: str = IPXE_TYPE
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, text: str, *headers: tuple[str, str]) -> BootAnswer:
    return BootAnswer(status, text.encode(), IPXE_TYPE, headers)


def _json(value: dict) -> BootAnswer:
    return BootAnswer(200, json.dumps(value).encode(), JSON_TYPE)


class Refused(Exception):
    """An answer other than the route's own (404, 403, 409, 503), raised where it is found."""

    def __init__(self, status: int, text: str, *headers: tuple[str, str]) -> None:
        super().__init__(text)
        self.answer = _text(status, text, *headers)


@dataclass(slots=True)
class BootRequest:
    """What a route reads: the client's address, the path's parameters, the query (first
    value of each name, decoded) and up to MAX_REPORT bytes of the body."""

    client: str
    params: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes = b""


Answer = BootAnswer | Awaitable[BootAnswer]
Route = Callable[["BootState", BootRequest], Answer]


@dataclass
class BootState:
    """What the routes read: swapped as a whole when a new revision is applied."""

    table: BootTable | None  # None until the group has applied a revision
    progress: HostProgress
    firmware_roots: list[Path] = field(default_factory=list)
    on_event: Callable[..., None] | None = None
    counters: dict[str, int] = field(default_factory=dict)
    digest: RefusalDigest = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.digest = RefusalDigest(self.event, log, "boot")

    def metrics(self) -> dict[str, float]:
        return counter_values(self.counters)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def event(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, **fields)

    def refused(self, kind: str, key: str, **fields: Any) -> None:
        """Unknown or refused machine traffic: journaled as digests (`RefusalDigest`)."""
        self.digest.note(kind, key, **fields)


BOOT_STATE = web.AppKey("boot_state", BootState)


def _table(state: BootState) -> BootTable:
    """One table for the whole request, even across a swap."""
    table = state.table
    if table is None:
        raise Refused(503, "no revision has been applied yet\n", ("Retry-After", "10"))
    return table


def _host_stage(state: BootState, req: BootRequest) -> tuple[BootTable, str, int]:
    table = _table(state)
    host = req.params["host"]
    if host not in table.hosts:
        raise Refused(404, f"no host {host!r} in this site's applied revision\n")
    try:
        stage = int(req.params["stage"])
    except ValueError:
        raise Refused(404, "stage must be a number\n") from None
    if not 1 <= stage <= table.stages(host):
        raise Refused(404, f"host {host!r} has no stage {stage}\n")
    return table, host, stage


Content = tuple[str, tuple[str, str] | None]


def _with_content(state: BootState, table: BootTable, host: str, stage: int,
                  then: Callable[[Content], BootAnswer]) -> Answer:
    """`then(content)` now when the stage's content is cached for the host's arming; else
    after a render in a thread: a template that is slow for the real token (validation
    rendered it with a placeholder) stalls its own request, not the event loop that serves
    DHCP-chained boots; its own deadline and output budget still apply."""
    arming = state.progress.arming(host)
    cached = table.cached_stage_content(host, stage, arming)
    if cached is not None:
        return then(cached)

    async def rendered() -> BootAnswer:
        return then(await asyncio.to_thread(table.stage_content, host, stage, arming))

    return rendered()


def boot_ipxe(state: BootState, req: BootRequest) -> Answer:
    table = _table(state)
    state.count("boot_ipxe")
    log.info("boot.chain", host=table.by_ip.get(req.client), client=req.client)
    return _text(200, boot_ipxe_script(table.peer_urls))


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5,19}$")


def _shown_mac(mac: str) -> str:
    """The reported MAC as echoed into a script: the query is the client's text."""
    return mac if _MAC.match(mac) else "(no valid MAC given)"


def host_script(state: BootState, req: BootRequest) -> Answer:
    table = _table(state)
    q = req.query
    identity = Identity.from_report(q.get("mac", ""), q.get("uuid", ""), q.get("serial", ""),
                                    q.get("asset", ""))
    found = resolve(table, identity)
    if found.conflict:
        state.count("ambiguous_machine")
        log.warning("boot.ambiguous_machine", **identity.fields(), matches=found.matches,
                    client=req.client)
        state.event("ambiguous-machine", **identity.fields(), client=req.client,
                    matches=" ".join(f"{k}:{h}" for k, h in found.matches.items()))
        return _text(409, "#!ipxe\necho Vaquero: this machine matches more than one host of "
                     "the SoT; refused (fix the SoT)\nexit\n")
    host = found.host
    if host is None:
        state.count("unknown_host")
        state.refused("unknown-machine", identity.mac or req.client, **identity.fields(),
                      client=req.client)
        # 200, not 404: iPXE would take a 404 for a failed peer and ask the next one,
        # which knows this machine no better.
        return _text(200, f"#!ipxe\necho Vaquero: machine {_shown_mac(identity.mac)} is not "
                     "declared in the SoT\nexit\n")
    stages = table.stages(host)
    entry = table.hosts[host]
    stage = None if entry.host.never_provision else state.progress.stage_to_serve(
        host, stages, fresh=table.site.policy.install_new_hosts)
    if stage is None:
        state.count("local_boot")
        record = state.progress.record(host)
        reason = ("never_provision" if entry.host.never_provision
                  else "workflow done" if record is not None and record.done >= stages
                  else "not armed (failed, aborted, or held by site policy)")
        log.info("boot.local_disk", host=host, reason=reason, revision=table.sha[:12])
        return _text(200, local_disk_script(host, reason))

    def served(content: Content) -> BootAnswer:
        state.count("scripts")
        log.info("boot.script", host=host, stage=stage, stages=stages, revision=table.sha[:12],
                 matched_by=found.matched_by, arch=q.get("arch"), platform=q.get("platform"),
                 client=req.client)
        state.event("stage-booting", host=host, stage=stage, revision=table.sha,
                    matched_by=found.matched_by)
        return _text(200, content[0])

    return _with_content(state, table, host, stage, served)


def _current_stage_only(state: BootState, table: BootTable, host: str, stage: int) -> None:
    """A stage's script and config (which carry its phone-home token) are served only while
    it is the stage the host is at: the token of a stage not started yet never leaves."""
    entry = table.hosts[host]
    serving = None if entry.host.never_provision else state.progress.stage_to_serve(
        host, table.stages(host), fresh=table.site.policy.install_new_hosts)
    if serving != stage:
        state.count("stage_not_current")
        at = f"stage {serving}" if serving is not None else "no install stage"
        raise Refused(404, f"{host!r} is at {at}, not stage {stage}\n")


def stage_script(state: BootState, req: BootRequest) -> Answer:
    table, host, stage = _host_stage(state, req)
    _current_stage_only(state, table, host, stage)

    def served(content: Content) -> BootAnswer:
        state.count("scripts")
        log.info("boot.script", host=host, stage=stage, client=req.client)
        return _text(200, content[0])

    return _with_content(state, table, host, stage, served)


def stage_loaded(state: BootState, req: BootRequest) -> Answer:
    table, host, stage = _host_stage(state, req)
    state.count("loaded")
    log.info("boot.loaded", host=host, stage=stage, client=req.client)
    state.event("stage-loaded", host=host, stage=stage, revision=table.sha)
    return _text(200, "loaded\n")


def stage_config(state: BootState, req: BootRequest) -> Answer:
    table, host, stage = _host_stage(state, req)
    _current_stage_only(state, table, host, stage)

    def served(content: Content) -> BootAnswer:
        config = content[1]
        if config is None:
            raise Refused(404, f"stage {stage} of {host!r} has no install config\n")
        kind, text = config
        state.count("configs")
        log.info("boot.config", host=host, stage=stage, kind=kind, client=req.client)
        return BootAnswer(200, text.encode(), JSON_TYPE if kind == "ignition" else IPXE_TYPE)

    return _with_content(state, table, host, stage, served)


def stage_meta_data(state: BootState, req: BootRequest) -> Answer:
    table, host, stage = _host_stage(state, req)
    iface = table.hosts[host].host.boot_interface()
    hostname = (iface.hostname if iface and iface.hostname else host)
    return _text(200, f"instance-id: {host}-{stage}-{table.sha[:12]}\n"
                 f"local-hostname: {hostname}\n")


def phone_home(state: BootState, req: BootRequest) -> Answer:
    """Only the token of this host, this stage and the host's current arming counts; only
    the next stage moves the host on; a replay answers as the first report did."""
    table, host, stage = _host_stage(state, req)
    arming = state.progress.arming(host)
    stages = table.stages(host)
    if not hmac.compare_digest(req.params["token"].encode(),
                               table.token(host, stage, arming).encode()):
        _refuse_phone_home(state, req, host, stage, "bad token, or one of an earlier "
                           "arming or another stage")
        raise Refused(403, "bad token\n")
    before = state.progress.record(host)
    try:
        record = state.progress.stage_done(host, stage, table.sha)
    except OutOfOrder as exc:
        _refuse_phone_home(state, req, host, stage, str(exc))
        raise Refused(409, f"{exc}\n") from None
    replay = before is not None and before.done >= stage
    answer = {"host": host, "stage": stage, "done": record.done,
              "workflow_done": record.done >= stages}

    async def synced() -> BootAnswer:
        started = time.monotonic()
        await state.progress.sync()  # acknowledged once on disk (one fsync for many)
        waited_ms = round((time.monotonic() - started) * 1000, 1)
        if replay:
            state.count("phone_home_replays")
            log.info("boot.phone_home_replayed", host=host, stage=stage, client=req.client)
            return _json({**answer, "replay": True})
        state.count("phone_homes")
        log.info("boot.phone_home", host=host, stage=stage, stages=stages, client=req.client,
                 done=record.done >= stages, sync_ms=waited_ms,
                 report=req.body[:1024].decode(errors="replace") or None)
        state.event("stage-done", host=host, stage=stage, stages=stages, revision=table.sha,
                    arming=arming)
        return _json(answer)

    return synced()


def _refuse_phone_home(state: BootState, req: BootRequest, host: str, stage: int,
                       reason: str) -> None:
    """Refusals are journaled, but through the rate limiter: anyone on the boot network can
    make them, and they must not flush the real events out of the journal."""
    state.count("phone_home_refused")
    state.refused("phone-home-refused", key=f"{host}/{stage}", client=req.client,
                  host=host, stage=stage, reason=reason)


STAGE_ROUTES: dict[str, Route] = {
    "script.ipxe": stage_script, "loaded": stage_loaded, "config": stage_config,
    "user-data": stage_config, "meta-data": stage_meta_data}


def find_route(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route for a decoded path, and its parameters; None for every other path (the
    firmware files and whatever the application behind serves)."""
    if method == "GET":
        if path == "/ipxe":
            return host_script, {}
        if path == "/boot.ipxe":
            return boot_ipxe, {}
        if path.startswith("/boot/"):
            parts = path[6:].split("/")
            if len(parts) == 3 and parts[0] and parts[1] and parts[2] in STAGE_ROUTES:
                return STAGE_ROUTES[parts[2]], {"host": parts[0], "stage": parts[1]}
    elif method == "POST" and path.startswith("/phone-home/"):
        parts = path[12:].split("/")
        if len(parts) == 3 and all(parts):
            return phone_home, {"host": parts[0], "stage": parts[1], "token": parts[2]}
    return None


async def answer(state: BootState, route: Route, req: BootRequest) -> BootAnswer:
    """A route's answer, waited for when it has to wait."""
    try:
        result = route(state, req)
        return result if isinstance(result, BootAnswer) else await result
    except Refused as exc:
        return exc.answer


# -- the same routes on an aiohttp application ----------------------------------------------


def _response(result: BootAnswer) -> web.Response:
    return web.Response(status=result.status, body=result.body,
                        headers={"Content-Type": result.content_type, **dict(result.headers)})


def _aiohttp_handler(route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        body = await request.content.read(MAX_REPORT) if request.method == "POST" else b""
        req = BootRequest(request.remote or "?", dict(request.match_info),
                          {k: request.query[k] for k in request.query}, body)
        return _response(await answer(request.app[BOOT_STATE], route, req))

    return handler


async def firmware(request: web.Request) -> web.StreamResponse:
    state = request.app[BOOT_STATE]
    try:
        table = _table(state)
    except Refused as exc:
        return _response(exc.answer)
    name = request.match_info["name"]
    if "/" in name or name.startswith("."):
        raise web.HTTPNotFound()
    client = request.remote or "?"
    for root in state.firmware_roots:
        path = root / name
        if path.is_file():
            log.info("boot.firmware", file=name, client=client, host=table.by_ip.get(client))
            return web.FileResponse(path)
    raise web.HTTPNotFound(text=f"no firmware {name!r}\n")


def add_boot_routes(app: web.Application, state: BootState) -> None:
    """The boot routes on an aiohttp application: the same answers as the lean front's."""
    app[BOOT_STATE] = state
    app.router.add_get("/boot.ipxe", _aiohttp_handler(boot_ipxe))
    app.router.add_get("/ipxe", _aiohttp_handler(host_script))
    for leaf, route in STAGE_ROUTES.items():
        app.router.add_get(f"/boot/{{host}}/{{stage}}/{leaf}", _aiohttp_handler(route))
    app.router.add_post("/phone-home/{host}/{stage}/{token}", _aiohttp_handler(phone_home))
    app.router.add_get("/firmware/{name}", firmware)
