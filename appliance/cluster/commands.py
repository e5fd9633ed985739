"""Shapes of the commands replicated through the Raft log, and their builders.

Commands are plain dicts of JSON-like values, never pydantic models or class instances: the
log and the snapshots outlive the code that wrote them, and a pickled class would tie old
entries to today's class names. Every command is validated twice: by the submitter (fail
fast, with a clear error, before anything is replicated) and again inside apply (an entry
written by another code version must not corrupt the state). Entries stay small: SHAs and
short records, never file contents.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any

from appliance.cluster.errors import InvalidCommand

REVISION_STATES = (
    "observed",
    "validated",
    "rejected",
    "planned",
    "awaiting_approval",
    "approved",
    "applying",
    "applied",
    "superseded",
)
# States a revision rests in: the oldest of them are pruned when the table is full.
TERMINAL_STATES = frozenset({"rejected", "superseded"})
# Allowed lifecycle moves. "applied" is reached once per revision; when a revision becomes
# applied the state machine supersedes the previously applied one by itself.
TRANSITIONS: dict[str, frozenset[str]] = {
    "observed": frozenset({"validated", "rejected", "superseded"}),
    "validated": frozenset({"planned", "rejected", "superseded"}),
    "planned": frozenset({"awaiting_approval", "approved", "rejected", "superseded"}),
    "awaiting_approval": frozenset({"approved", "rejected", "superseded"}),
    "approved": frozenset({"applying", "superseded"}),
    "applying": frozenset({"applied", "superseded"}),
    "applied": frozenset({"superseded"}),
    "rejected": frozenset(),
    # Rolling back: an operator re-arms an older revision; it is planned again against the
    # applied one and needs approval like any other.
    "superseded": frozenset({"validated"}),
}

# Where a revision's rollout (the hardware work of applying it) stands, and the moves between.
ROLLOUT_STATES = ("running", "paused", "aborted", "failed", "done", "superseded")
ROLLOUT_TRANSITIONS: dict[str, frozenset[str]] = {
    "running": frozenset({"paused", "aborted", "failed", "done", "superseded"}),
    "paused": frozenset({"running", "aborted", "superseded"}),
    # a failed rollout halts; an operator may resume it (after fixing the cause) or abort it
    "failed": frozenset({"running", "aborted", "superseded"}),
    "aborted": frozenset(),
    "done": frozenset({"superseded"}),
    "superseded": frozenset(),
}
# What a host record says of the machine. A host is served its next stage while it is armed
# (queued ... checking) and has stages left; otherwise it boots its disk.
HOST_STATES = ("queued", "powering", "booting", "waiting", "retrying", "installed", "checking",
               "done", "failed", "aborted")
HOST_TERMINAL = frozenset({"done", "failed", "aborted"})

MAX_TEXT = 1024  # characters of a free-text field (message, reason, detail)
MAX_NAME = 253  # a DNS name
MAX_BLOB = 4096  # bytes of a small structured value (report summary, event data), as JSON
MAX_PEERS = 9
MAX_SEEN_BATCH = 200  # hosts in one hosts.seen entry (~100 bytes each)

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-_:\[\]]{1,250}:[0-9]{1,5}$")


def _fail(message: str) -> InvalidCommand:
    return InvalidCommand(message)


def _text(cmd: dict, key: str, *, required: bool = False, max_len: int = MAX_TEXT) -> str | None:
    value = cmd.get(key)
    if value is None:
        if required:
            raise _fail(f"{key} is required")
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise _fail(f"{key} must be a non-empty string of at most {max_len} characters")
    return value


def _sha(cmd: dict, key: str, *, required: bool = True) -> str | None:
    value = cmd.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _SHA.match(value):
        raise _fail(f"{key} must be a lowercase hex commit SHA (40 or 64 digits)")
    return value


def _blob(cmd: dict, key: str) -> dict | None:
    value = cmd.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(f"{key} must be an object")
    try:
        encoded = json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise _fail(f"{key} must hold only JSON values: {exc}") from None
    if len(encoded.encode()) > MAX_BLOB:
        raise _fail(f"{key} is larger than {MAX_BLOB} bytes as JSON; keep log entries small")
    # A JSON round trip gives every peer an identical, plain copy (tuples become lists...).
    return json.loads(encoded)


def _int(cmd: dict, key: str, *, low: int, high: int, default: int | None = None) -> int:
    value = cmd.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(f"{key} must be an integer in [{low}, {high}]")
    return value


def _address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise _fail("address must be host:port")
    return value


def _peer(value: Any) -> dict:
    if not isinstance(value, dict) or set(value) - {"address", "name", "api_url"}:
        raise _fail("a peer is an object with address and optional name, api_url")
    return {
        "address": _address(value.get("address")),
        "name": _text(value, "name", max_len=MAX_NAME),
        "api_url": _text(value, "api_url", max_len=MAX_NAME),
    }


# op -> (required fields, optional fields) beyond op, op_id, at
# What a peer saw a booting machine do: fetch its stage's script, then (generated scripts
# only) finish loading the stage's kernel and initrds, just before booting them.
SEEN_STEPS = ("script", "loaded")

_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "revision.observe": (frozenset({"sha"}), frozenset({"source"})),
    "revision.transition": (
        frozenset({"sha", "state"}),
        frozenset({"by", "reason", "summary", "approvals_required"}),
    ),
    "revision.approve": (frozenset({"sha", "by"}), frozenset({"note"})),
    "host.set": (frozenset({"name"}), frozenset({"stage", "state", "last_event", "revision"})),
    "host.arm": (frozenset({"name", "revision", "stages"}), frozenset({"by", "reason"})),
    "host.step": (
        frozenset({"name", "revision", "state", "stage"}),
        frozenset({"attempt", "message", "deadline"}),
    ),
    "host.stage_done": (frozenset({"name", "stage", "stages"}),
                        frozenset({"revision", "armed_seq"})),
    "host.seen": (frozenset({"name", "stage"}), frozenset({"revision", "step"})),
    "hosts.seen": (frozenset({"hosts"}), frozenset()),
    "rollout.start": (frozenset({"revision"}), frozenset({"base", "by"})),
    "rollout.set": (frozenset({"revision", "state"}), frozenset({"by", "reason"})),
    "intent.record": (
        frozenset({"intent_id", "host", "action", "term"}),
        frozenset({"stage", "revision"}),
    ),
    "intent.result": (frozenset({"intent_id", "ok"}), frozenset({"detail"})),
    "event.append": (frozenset({"kind"}), frozenset({"host", "revision", "message", "data"})),
    "peer.add": (frozenset({"address"}), frozenset({"name", "api_url"})),
    "peer.remove": (frozenset({"address"}), frozenset()),
    "peers.set": (frozenset({"peers"}), frozenset()),
    "federation.summary": (frozenset({"site", "seq", "digest", "envelope"}), frozenset({"via"})),
    "federation.override": (frozenset({"revision", "by"}), frozenset({"reason"})),
}
MAX_ENVELOPE = 6144  # a signed site summary (appliance/federation/summary.py), as JSON
OPS = frozenset(_FIELDS)


def _seen_step(cmd: dict) -> str:
    step = cmd.get("step", "script")
    if step not in SEEN_STEPS:
        raise _fail(f"step must be one of {', '.join(SEEN_STEPS)}")
    return step


def _seen_batch(value: Any) -> list[dict]:
    """The boot evidence of many hosts in one entry: [{name, stage, at, revision?, step?}]."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SEEN_BATCH:
        raise _fail(f"hosts must be a list of 1 to {MAX_SEEN_BATCH} objects")
    out = []
    for item in value:
        if not isinstance(item, dict) or set(item) - {"name", "stage", "at", "revision", "step"}:
            raise _fail("each of hosts is an object with name, stage, at and optional revision "
                        "and step")
        at = item.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) \
                or at < 0:
            raise _fail("at must be a timestamp in seconds (the submitter's clock)")
        out.append({"name": _text(item, "name", required=True, max_len=MAX_NAME),
                     "stage": _int(item, "stage", low=1, high=64), "at": float(at),
                     "revision": _sha(item, "revision", required=False),
                     "step": _seen_step(item)})
    return out


# long: one branch per operation, until one table per replicated operation replaces it.
def validate(cmd: Any) -> dict:
    """Return a normalized copy of `cmd` or raise InvalidCommand. Pure and deterministic."""
    if not isinstance(cmd, dict):
        raise _fail("a command is an object")
    op = cmd.get("op")
    if op not in _FIELDS:
        raise _fail(f"unknown op {op!r}")
    required, optional = _FIELDS[op]
    present = set(cmd) - {"op", "op_id", "at"}
    if missing := required - present:
        raise _fail(f"{op}: missing {', '.join(sorted(missing))}")
    if unknown := present - required - optional:
        raise _fail(f"{op}: unknown field {', '.join(sorted(unknown))}")
    at = cmd.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) or at < 0:
        raise _fail("at must be a timestamp in seconds (the submitter's clock)")
    out: dict[str, Any] = {
        "op": op,
        "op_id": _text(cmd, "op_id", required=True, max_len=64),
        "at": float(at),
    }
    if op == "revision.observe":
        out["sha"] = _sha(cmd, "sha")
        out["source"] = _text(cmd, "source", max_len=MAX_NAME)
    elif op == "revision.transition":
        out["sha"] = _sha(cmd, "sha")
        if cmd["state"] not in REVISION_STATES:
            raise _fail(f"state must be one of {', '.join(REVISION_STATES)}")
        out["state"] = cmd["state"]
        out["by"] = _text(cmd, "by", max_len=MAX_NAME)
        out["reason"] = _text(cmd, "reason")
        out["summary"] = _blob(cmd, "summary")
        out["approvals_required"] = _int(cmd, "approvals_required", low=1, high=9, default=1)
    elif op == "revision.approve":
        out["sha"] = _sha(cmd, "sha")
        out["by"] = _text(cmd, "by", required=True, max_len=MAX_NAME)
        out["note"] = _text(cmd, "note")
    elif op == "host.set":
        out["name"] = _text(cmd, "name", required=True, max_len=MAX_NAME)
        for key in ("stage", "state", "last_event"):
            if key in cmd:
                out[key] = _text(cmd, key, max_len=MAX_NAME if key != "last_event" else MAX_TEXT)
        if "revision" in cmd:
            out["revision"] = _sha(cmd, "revision", required=False)
    elif op == "host.arm":
        out["name"] = _text(cmd, "name", required=True, max_len=MAX_NAME)
        out["revision"] = _sha(cmd, "revision")
        out["stages"] = _int(cmd, "stages", low=1, high=64)
        out["by"] = _text(cmd, "by", max_len=MAX_NAME)
        out["reason"] = _text(cmd, "reason")
    elif op == "host.step":
        out["name"] = _text(cmd, "name", required=True, max_len=MAX_NAME)
        out["revision"] = _sha(cmd, "revision")
        if cmd["state"] not in HOST_STATES:
            raise _fail(f"state must be one of {', '.join(HOST_STATES)}")
        out["state"] = cmd["state"]
        out["stage"] = _int(cmd, "stage", low=1, high=64)
        out["attempt"] = _int(cmd, "attempt", low=0, high=100, default=0)
        out["message"] = _text(cmd, "message")
        deadline = cmd.get("deadline")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(
                deadline, int | float) or not math.isfinite(deadline)):
            raise _fail("deadline must be a timestamp in seconds")
        out["deadline"] = float(deadline) if deadline is not None else None
    elif op == "host.stage_done":
        out["name"] = _text(cmd, "name", required=True, max_len=MAX_NAME)
        out["stage"] = _int(cmd, "stage", low=1, high=64)
        out["stages"] = _int(cmd, "stages", low=1, high=64)
        out["revision"] = _sha(cmd, "revision", required=False)
        if "armed_seq" in cmd:  # the arming the phone-home's token was made for (None: none)
            armed = cmd["armed_seq"]
            if armed is not None and (isinstance(armed, bool) or not isinstance(armed, int)
                                      or armed < 0):
                raise _fail("armed_seq must be an event sequence number or null")
            out["armed_seq"] = armed
    elif op == "host.seen":
        out["name"] = _text(cmd, "name", required=True, max_len=MAX_NAME)
        out["stage"] = _int(cmd, "stage", low=1, high=64)
        out["revision"] = _sha(cmd, "revision", required=False)
        out["step"] = _seen_step(cmd)
    elif op == "hosts.seen":
        out["hosts"] = _seen_batch(cmd.get("hosts"))
    elif op == "rollout.start":
        out["revision"] = _sha(cmd, "revision")
        out["base"] = _sha(cmd, "base", required=False)
        out["by"] = _text(cmd, "by", max_len=MAX_NAME)
    elif op == "rollout.set":
        out["revision"] = _sha(cmd, "revision")
        if cmd["state"] not in ROLLOUT_STATES:
            raise _fail(f"state must be one of {', '.join(ROLLOUT_STATES)}")
        out["state"] = cmd["state"]
        out["by"] = _text(cmd, "by", max_len=MAX_NAME)
        out["reason"] = _text(cmd, "reason")
    elif op == "intent.record":
        out["intent_id"] = _text(cmd, "intent_id", required=True, max_len=64)
        out["host"] = _text(cmd, "host", required=True, max_len=MAX_NAME)
        out["action"] = _text(cmd, "action", required=True, max_len=MAX_NAME)
        out["stage"] = _text(cmd, "stage", max_len=MAX_NAME)
        out["revision"] = _sha(cmd, "revision", required=False)
        out["term"] = _int(cmd, "term", low=0, high=2**62)
    elif op == "intent.result":
        out["intent_id"] = _text(cmd, "intent_id", required=True, max_len=64)
        if not isinstance(cmd["ok"], bool):
            raise _fail("ok must be true or false")
        out["ok"] = cmd["ok"]
        out["detail"] = _text(cmd, "detail")
    elif op == "event.append":
        out["kind"] = _text(cmd, "kind", required=True, max_len=64)
        out["host"] = _text(cmd, "host", max_len=MAX_NAME)
        out["revision"] = _sha(cmd, "revision", required=False)
        out["message"] = _text(cmd, "message")
        out["data"] = _blob(cmd, "data")
    elif op in ("peer.add", "peer.remove"):
        out.update(_peer({k: cmd.get(k) for k in ("address", "name", "api_url") if k in cmd}))
        if op == "peer.remove":
            del out["name"], out["api_url"]
    elif op == "federation.summary":
        # verified by the receiving peer before it is submitted; apply keeps the newest only
        out["site"] = _text(cmd, "site", required=True, max_len=63)
        out["seq"] = _int(cmd, "seq", low=1, high=2**53)
        out["digest"] = _text(cmd, "digest", required=True, max_len=64)
        out["via"] = _text(cmd, "via", max_len=MAX_NAME)
        envelope = cmd["envelope"]
        if not isinstance(envelope, dict):
            raise _fail("envelope must be an object")
        encoded = json.dumps(envelope, sort_keys=True, allow_nan=False, separators=(",", ":"))
        if len(encoded.encode()) > MAX_ENVELOPE:
            raise _fail(f"envelope is larger than {MAX_ENVELOPE} bytes")
        out["envelope"] = json.loads(encoded)
    elif op == "federation.override":
        out["revision"] = _sha(cmd, "revision")
        out["by"] = _text(cmd, "by", required=True, max_len=MAX_NAME)
        out["reason"] = _text(cmd, "reason")
    elif op == "peers.set":
        peers = cmd["peers"]
        if not isinstance(peers, list) or not 1 <= len(peers) <= MAX_PEERS:
            raise _fail(f"peers must be a list of 1 to {MAX_PEERS} peers")
        out["peers"] = [_peer(p) for p in peers]
        if len({p["address"] for p in out["peers"]}) != len(out["peers"]):
            raise _fail("peers must have distinct addresses")
    return out


def new_op_id() -> str:
    """A fresh idempotency key; a retried submission must reuse the one it was given."""
    return uuid.uuid4().hex


def build(op: str, at: float, **fields: Any) -> dict:
    """Build and validate a command; fields that are None are left out."""
    cmd = {"op": op, "op_id": new_op_id(), "at": at}
    cmd.update({k: v for k, v in fields.items() if v is not None})
    return validate(cmd)
