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
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Callable
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


def boot_ipxe_script(bases: tuple[str, ...]) -> str:
    return ("#!ipxe\n# Vaquero: ask the peers for this machine's script\n"
            + ipxe_try_peers(bases, BOOT_ATTEMPT))


IPXE_TYPE = "text/plain; charset=utf-8"


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


def _state(request: web.Request) -> BootState:
    state = request.app[BOOT_STATE]
    if state.table is None:
        raise web.HTTPServiceUnavailable(text="no revision has been applied yet\n",
                                         headers={"Retry-After": "10"})
    return state


def _client(request: web.Request) -> str:
    return request.remote or "?"


def _host_stage(request: web.Request) -> tuple[BootState, BootTable, str, int]:
    state = _state(request)
    table = state.table
    assert table is not None
    host = request.match_info["host"]
    if host not in table.hosts:
        raise web.HTTPNotFound(text=f"no host {host!r} in this site's applied revision\n")
    try:
        stage = int(request.match_info["stage"])
    except ValueError:
        raise web.HTTPNotFound(text="stage must be a number\n") from None
    if not 1 <= stage <= table.stages(host):
        raise web.HTTPNotFound(text=f"host {host!r} has no stage {stage}\n")
    return state, table, host, stage


async def boot_ipxe(request: web.Request) -> web.Response:
    state = _state(request)
    table = state.table
    assert table is not None  # one table for the whole request, even across a swap
    state.count("boot_ipxe")
    host = table.by_ip.get(_client(request))
    log.info("boot.chain", host=host, client=_client(request))
    return web.Response(text=boot_ipxe_script(table.peer_urls), content_type="text/plain")


async def _stage_content(state: BootState, table: BootTable, host: str, stage: int
                         ) -> tuple[str, tuple[str, str] | None]:
    """A render not cached yet runs in a thread: a template that is slow for the real token
    (validation rendered it with a placeholder) stalls its own request, not the event loop
    that serves DHCP-chained boots; its own deadline and output budget still apply."""
    arming = state.progress.arming(host)
    cached = table.cached_stage_content(host, stage, arming)
    if cached is not None:
        return cached
    return await asyncio.to_thread(table.stage_content, host, stage, arming)


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5,19}$")


def _shown_mac(mac: str) -> str:
    """The reported MAC as echoed into a script: the query is the client's text."""
    return mac if _MAC.match(mac) else "(no valid MAC given)"


async def host_script(request: web.Request) -> web.Response:
    state = _state(request)
    table = state.table
    assert table is not None
    q = request.query
    identity = Identity.from_report(q.get("mac", ""), q.get("uuid", ""), q.get("serial", ""),
                                    q.get("asset", ""))
    mac = identity.mac
    found = resolve(table, identity)
    if found.conflict:
        state.count("ambiguous_machine")
        log.warning("boot.ambiguous_machine", **identity.fields(), matches=found.matches,
                    client=_client(request))
        state.event("ambiguous-machine", **identity.fields(), client=_client(request),
                    matches=" ".join(f"{k}:{h}" for k, h in found.matches.items()))
        return web.Response(status=409, content_type="text/plain", text=(
            "#!ipxe\necho Vaquero: this machine matches more than one host of the SoT; "
            "refused (fix the SoT)\nexit\n"))
    host = found.host
    if host is None:
        state.count("unknown_host")
        client = _client(request)
        state.refused("unknown-machine", mac or client, **identity.fields(), client=client)
        # 200, not 404: iPXE would take a 404 for a failed peer and ask the next one,
        # which knows this machine no better.
        return web.Response(content_type="text/plain", text=(
            f"#!ipxe\necho Vaquero: machine {_shown_mac(mac)} is not declared in the SoT\n"
            "exit\n"))
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
        return web.Response(text=local_disk_script(host, reason), content_type="text/plain")
    script, _ = await _stage_content(state, table, host, stage)
    state.count("scripts")
    log.info("boot.script", host=host, stage=stage, stages=stages, revision=table.sha[:12],
             matched_by=found.matched_by, arch=request.query.get("arch"),
             platform=request.query.get("platform"), client=_client(request))
    state.event("stage-booting", host=host, stage=stage, revision=table.sha,
                matched_by=found.matched_by)
    return web.Response(body=script.encode(), content_type="text/plain", charset="utf-8")


def _current_stage_only(state: BootState, table: BootTable, host: str, stage: int) -> None:
    """A stage's script and config (which carry its phone-home token) are served only while
    it is the stage the host is at: the token of a stage not started yet never leaves."""
    entry = table.hosts[host]
    serving = None if entry.host.never_provision else state.progress.stage_to_serve(
        host, table.stages(host), fresh=table.site.policy.install_new_hosts)
    if serving != stage:
        state.count("stage_not_current")
        at = f"stage {serving}" if serving is not None else "no install stage"
        raise web.HTTPNotFound(text=f"{host!r} is at {at}, not stage {stage}\n")


async def stage_script(request: web.Request) -> web.Response:
    state, table, host, stage = _host_stage(request)
    _current_stage_only(state, table, host, stage)
    script, _ = await _stage_content(state, table, host, stage)
    state.count("scripts")
    log.info("boot.script", host=host, stage=stage, client=_client(request))
    return web.Response(body=script.encode(), content_type="text/plain", charset="utf-8")


async def stage_loaded(request: web.Request) -> web.Response:
    state, table, host, stage = _host_stage(request)
    state.count("loaded")
    log.info("boot.loaded", host=host, stage=stage, client=_client(request))
    state.event("stage-loaded", host=host, stage=stage, revision=table.sha)
    return web.Response(text="loaded\n", content_type="text/plain")


async def stage_config(request: web.Request) -> web.Response:
    state, table, host, stage = _host_stage(request)
    _current_stage_only(state, table, host, stage)
    _, config = await _stage_content(state, table, host, stage)
    if config is None:
        raise web.HTTPNotFound(text=f"stage {stage} of {host!r} has no install config\n")
    kind, text = config
    state.count("configs")
    log.info("boot.config", host=host, stage=stage, kind=kind, client=_client(request))
    ctype = "application/json" if kind == "ignition" else "text/plain"
    return web.Response(text=text, content_type=ctype)


async def stage_meta_data(request: web.Request) -> web.Response:
    _, table, host, stage = _host_stage(request)
    entry = table.hosts[host]
    iface = entry.host.boot_interface()
    hostname = (iface.hostname if iface and iface.hostname else host)
    return web.Response(content_type="text/plain", text=(
        f"instance-id: {host}-{stage}-{table.sha[:12]}\nlocal-hostname: {hostname}\n"))


async def phone_home(request: web.Request) -> web.Response:
    """Only the token of this host, this stage and the host's current arming counts; only
    the next stage moves the host on; a replay answers as the first report did."""
    state, table, host, stage = _host_stage(request)
    token = request.match_info["token"]
    arming = state.progress.arming(host)
    stages = table.stages(host)
    if not hmac.compare_digest(token.encode(), table.token(host, stage, arming).encode()):
        _refuse_phone_home(state, request, host, stage, "bad token, or one of an earlier "
                           "arming or another stage")
        raise web.HTTPForbidden(text="bad token\n")
    body = (await request.content.read(4096)).decode(errors="replace")
    before = state.progress.record(host)
    try:
        record = state.progress.stage_done(host, stage, table.sha)
    except OutOfOrder as exc:
        _refuse_phone_home(state, request, host, stage, str(exc))
        raise web.HTTPConflict(text=f"{exc}\n") from None
    await state.progress.sync()  # acknowledged once on disk (one fsync for many phone-homes)
    replay = before is not None and before.done >= stage
    answer = {"host": host, "stage": stage, "done": record.done,
              "workflow_done": record.done >= stages}
    if replay:
        state.count("phone_home_replays")
        log.info("boot.phone_home_replayed", host=host, stage=stage, client=_client(request))
        return web.json_response({**answer, "replay": True})
    state.count("phone_homes")
    log.info("boot.phone_home", host=host, stage=stage, stages=stages, client=_client(request),
             done=record.done >= stages, report=body[:1024] or None)
    state.event("stage-done", host=host, stage=stage, stages=stages, revision=table.sha,
                arming=arming)
    return web.json_response(answer)


def _refuse_phone_home(state: BootState, request: web.Request, host: str, stage: int,
                       reason: str) -> None:
    """Refusals are journaled, but through the rate limiter: anyone on the boot network can
    make them, and they must not flush the real events out of the journal."""
    state.count("phone_home_refused")
    state.refused("phone-home-refused", key=f"{host}/{stage}", client=_client(request),
                  host=host, stage=stage, reason=reason)


async def firmware(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    table = state.table
    name = request.match_info["name"]
    if "/" in name or name.startswith("."):
        raise web.HTTPNotFound()
    for root in state.firmware_roots:
        path = root / name
        if path.is_file():
            log.info("boot.firmware", file=name, client=_client(request),
                     host=table.by_ip.get(_client(request)) if table else None)
            return web.FileResponse(path)
    raise web.HTTPNotFound(text=f"no firmware {name!r}\n")


def add_boot_routes(app: web.Application, state: BootState) -> None:
    app[BOOT_STATE] = state
    app.router.add_get("/boot.ipxe", boot_ipxe)
    app.router.add_get("/ipxe", host_script)
    app.router.add_get("/boot/{host}/{stage}/script.ipxe", stage_script)
    app.router.add_get("/boot/{host}/{stage}/loaded", stage_loaded)
    app.router.add_get("/boot/{host}/{stage}/config", stage_config)
    app.router.add_get("/boot/{host}/{stage}/user-data", stage_config)
    app.router.add_get("/boot/{host}/{stage}/meta-data", stage_meta_data)
    app.router.add_post("/phone-home/{host}/{stage}/{token}", phone_home)
    app.router.add_get("/firmware/{name}", firmware)
