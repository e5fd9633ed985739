"""Rollouts under /v1: where the hardware work of a revision stands, and the operator's hand on
it (pause, resume, abort, arm one host). Progress is derived on the peer asked, from its
replica and the plan; the controls are Raft writes, so any peer takes them."""

from __future__ import annotations

from aiohttp import web

from appliance.errors import ApiError

from .auth import TOKEN_NAME
from .context import ctx
from .openapi import describe
from .routes import read_body

CONTROLS = {"pause": "paused", "resume": "running", "abort": "aborted"}


def _sha(request: web.Request) -> str:
    sha = request.match_info["sha"]
    if sha in ("current", "applied"):
        applied = ctx(request).cluster.applied_revision()
        if applied is None:
            raise ApiError(404, "not_found", "no revision has been applied yet")
        return applied
    return sha


async def _reason(request: web.Request) -> str | None:
    reason = (await read_body(request)).get("reason")
    return reason if isinstance(reason, str) and reason else None


@describe("Rollouts: the hardware work of each applied revision, newest last")
async def rollouts(request: web.Request) -> web.Response:
    c = ctx(request)
    return web.json_response({"rollouts": c.cluster.rollouts(),
                              "applied": c.cluster.applied_revision()})


@describe("One rollout's progress ('current' for the applied revision): per wave and cluster, "
          "each batch's hosts with their stage and state, what is armed next, what failed "
          "and why")
async def rollout(request: web.Request) -> web.Response:
    c = ctx(request)
    sha = _sha(request)
    if c.rollout_progress is None:
        raise ApiError(409, "no_engine", "this peer runs no workflow engine (a fixed `sot:` peer)")
    if c.cluster.revision(sha) is None:
        raise ApiError(404, "not_found", f"no revision {sha}")
    return web.json_response(await c.rollout_progress(sha))


async def _control(request: web.Request, action: str) -> web.Response:
    c = ctx(request)
    sha = _sha(request)
    by = request.get(TOKEN_NAME, "api")
    result = await c.cluster.set_rollout(sha, CONTROLS[action], by=by,
                                         reason=await _reason(request) or f"{action} by {by}")
    return web.json_response(result)


@describe("Pause a rollout: hosts in flight finish their stage, no new batch starts",
          body="{reason?}")
async def pause(request: web.Request) -> web.Response:
    return await _control(request, "pause")


@describe("Resume a paused or failed rollout; the hosts that failed in it are armed again "
          "(retried from stage 1)", body="{reason?}")
async def resume(request: web.Request) -> web.Response:
    return await _control(request, "resume")


@describe("Abort a rollout: no new batch; hosts in flight get no further power action and "
          "boot their disk", body="{reason?}")
async def abort(request: web.Request) -> web.Response:
    return await _control(request, "abort")


@describe("Arm one host for the applied revision: it is walked through its workflow again "
          "(re-provisioning by hand, or a host the site policy did not install)",
          body="{reason?}")
async def arm(request: web.Request) -> web.Response:
    c = ctx(request)
    name = request.match_info["name"]
    facts = c.host_facts(name)
    applied = c.cluster.applied_revision()
    if c.rollout_progress is None:
        raise ApiError(409, "no_engine", "this peer serves a fixed `sot:` revision and runs no "
                       "workflow engine: arming needs peers that follow a git remote (`source:`)")
    if facts is None or applied is None:
        raise ApiError(404, "not_found", f"no host {name!r} in this site's applied revision")
    if facts.get("never_provision"):
        raise ApiError(409, "never_provision",
                       f"host {name!r} is never_provision; change the SoT to provision it")
    by = request.get(TOKEN_NAME, "api")
    result = await c.cluster.arm_host(name, applied, facts["stages"], by=by,
                                      reason=await _reason(request) or f"armed by {by}")
    return web.json_response(result)


def add_rollout_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/rollouts", rollouts)
    r.add_get("/v1/rollouts/{sha}", rollout)
    r.add_post("/v1/rollouts/{sha}/pause", pause)
    r.add_post("/v1/rollouts/{sha}/resume", resume)
    r.add_post("/v1/rollouts/{sha}/abort", abort)
    r.add_post("/v1/hosts/{name}/arm", arm)
