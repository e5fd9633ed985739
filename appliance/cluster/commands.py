"""Shapes of the commands replicated through the Raft log, and their builders.

Commands are plain dicts of JSON-like values, never pydantic models or class instances: the
log and the snapshots outlive the code that wrote them, and a pickled class would tie old
entries to today's class names. Every command is validated twice: by the submitter (fail
fast, with a clear error, before anything is replicated) and again inside apply (an entry
written by another code version must not corrupt the state). Entries stay small: SHAs and
short records, never file contents.

The code names states by StrEnum (RevisionState, RolloutState, HostState); validate stores
their plain string values, so an entry never holds an enum. Each operation is one row of
OPERATIONS: its fields, the check that normalizes them, the ClusterState method that
applies it.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from appliance.cluster.errors import InvalidCommand


class RevisionState(StrEnum):
    """Where a SoT revision is in its lifecycle (the pipeline moves it, TRANSITIONS says how).
    Stored and replicated as the plain string: a log entry never names a Python class."""

    OBSERVED = "observed"
    VALIDATED = "validated"
    REJECTED = "rejected"
    PLANNED = "planned"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    APPLYING = "applying"
    APPLIED = "applied"
    SUPERSEDED = "superseded"


class RolloutState(StrEnum):
    """Where a revision's rollout (the hardware work of applying it) stands."""

    RUNNING = "running"
    PAUSED = "paused"
    ABORTED = "aborted"
    FAILED = "failed"
    DONE = "done"
    SUPERSEDED = "superseded"


class HostState(StrEnum):
    """What a host record says of the machine. A host is served its next stage while it is
    armed (queued ... checking) and has stages left; otherwise it boots its disk."""

    QUEUED = "queued"
    POWERING = "powering"
    BOOTING = "booting"
    WAITING = "waiting"
    RETRYING = "retrying"
    INSTALLED = "installed"
    CHECKING = "checking"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"


R, RO, H = RevisionState, RolloutState, HostState
REVISION_STATES = tuple(s.value for s in RevisionState)
# States a revision rests in: the oldest of them are pruned when the table is full.
TERMINAL_STATES = frozenset({R.REJECTED, R.SUPERSEDED})
# Allowed lifecycle moves. "applied" is reached once per revision; when a revision becomes
# applied the state machine supersedes the previously applied one by itself.
TRANSITIONS: dict[str, frozenset[str]] = {
    R.OBSERVED: frozenset({R.VALIDATED, R.REJECTED, R.SUPERSEDED}),
    R.VALIDATED: frozenset({R.PLANNED, R.REJECTED, R.SUPERSEDED}),
    R.PLANNED: frozenset({R.AWAITING_APPROVAL, R.APPROVED, R.REJECTED, R.SUPERSEDED}),
    R.AWAITING_APPROVAL: frozenset({R.APPROVED, R.REJECTED, R.SUPERSEDED}),
    R.APPROVED: frozenset({R.APPLYING, R.SUPERSEDED}),
    R.APPLYING: frozenset({R.APPLIED, R.SUPERSEDED}),
    R.APPLIED: frozenset({R.SUPERSEDED}),
    R.REJECTED: frozenset(),
    # Rolling back: an operator re-arms an older revision; it is planned again against the
    # applied one and needs approval like any other.
    R.SUPERSEDED: frozenset({R.VALIDATED}),
}

ROLLOUT_STATES = tuple(s.value for s in RolloutState)
ROLLOUT_TRANSITIONS: dict[str, frozenset[str]] = {
    RO.RUNNING: frozenset({RO.PAUSED, RO.ABORTED, RO.FAILED, RO.DONE, RO.SUPERSEDED}),
    RO.PAUSED: frozenset({RO.RUNNING, RO.ABORTED, RO.SUPERSEDED}),
    # a failed rollout halts; an operator may resume it (after fixing the cause) or abort it
    RO.FAILED: frozenset({RO.RUNNING, RO.ABORTED, RO.SUPERSEDED}),
    RO.ABORTED: frozenset(),
    RO.DONE: frozenset({RO.SUPERSEDED}),
    RO.SUPERSEDED: frozenset(),
}
# Rollouts still to finish: one of them is superseded when a newer revision rolls out.
ROLLOUT_OPEN = frozenset({RO.RUNNING, RO.PAUSED, RO.FAILED})
HOST_STATES = tuple(s.value for s in HostState)
HOST_TERMINAL = frozenset({H.DONE, H.FAILED, H.ABORTED})
# A host waiting on the machine (powered, or to be): a phone-home for its stage ends that.
HOST_WAITING = frozenset({H.POWERING, H.BOOTING, H.WAITING, H.RETRYING})

MAX_TEXT = 1024  # characters of a free-text field (message, reason, detail)
MAX_NAME = 253  # a DNS name
MAX_BLOB = 4096  # bytes of a small structured value (report summary, event data), as JSON
MAX_PEERS = 9
MAX_SEEN_BATCH = 200  # hosts in one hosts.seen entry (~100 bytes each)

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-_:\[\]]{1,250}:[0-9]{1,5}$")


def _fail(message: str) -> InvalidCommand:
    return InvalidCommand(message)


def _text(cmd: dict[str, Any], key: str, *, required: bool = False,
          max_len: int = MAX_TEXT) -> str | None:
    value = cmd.get(key)
    if value is None:
        if required:
            raise _fail(f"{key} is required")
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise _fail(f"{key} must be a non-empty string of at most {max_len} characters")
    return str(value)  # a StrEnum member becomes its plain value: entries hold no classes


def _sha(cmd: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = cmd.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _SHA.match(value):
        raise _fail(f"{key} must be a lowercase hex commit SHA (40 or 64 digits)")
    return value


def _blob(cmd: dict[str, Any], key: str) -> dict[str, Any] | None:
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
    plain: dict[str, Any] = json.loads(encoded)
    return plain


def _int(cmd: dict[str, Any], key: str, *, low: int, high: int, default: int | None = None) -> int:
    value = cmd.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(f"{key} must be an integer in [{low}, {high}]")
    return value


def _address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise _fail("address must be host:port")
    return value


def _peer(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - {"address", "name", "api_url"}:
        raise _fail("a peer is an object with address and optional name, api_url")
    return {
        "address": _address(value.get("address")),
        "name": _text(value, "name", max_len=MAX_NAME),
        "api_url": _text(value, "api_url", max_len=MAX_NAME),
    }


# What a peer saw a booting machine do: fetch its stage's script, then (generated scripts
# only) finish loading the stage's kernel and initrds, just before booting them.
SEEN_STEPS = ("script", "loaded")
MAX_ENVELOPE = 6144  # a signed site summary (appliance/federation/summary.py), as JSON


def _seen_step(cmd: dict[str, Any]) -> str:
    step = cmd.get("step", "script")
    if step not in SEEN_STEPS:
        raise _fail(f"step must be one of {', '.join(SEEN_STEPS)}")
    return str(step)


def _seen_batch(value: Any) -> list[dict[str, Any]]:
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


Check = Callable[[dict[str, Any], dict[str, Any]], None]


@dataclass(frozen=True)
class Operation:
    """One replicated operation (see OPERATIONS)."""

    required: frozenset[str]
    optional: frozenset[str]
    check: Check  # (command, normalized copy so far): adds the operation's fields
    handler: str  # the ClusterState method that applies it


def _state(cmd: dict[str, Any], states: tuple[str, ...]) -> str:
    if cmd["state"] not in states:
        raise _fail(f"state must be one of {', '.join(states)}")
    return str(cmd["state"])  # the plain value, never the enum, in the log


def _op(required: str, optional: str, check: Check, handler: str) -> Operation:
    return Operation(frozenset(required.split()), frozenset(optional.split()), check, handler)


def _check_revision_observe(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["sha"] = _sha(cmd, "sha")
    out["source"] = _text(cmd, "source", max_len=MAX_NAME)


def _check_revision_transition(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["sha"] = _sha(cmd, "sha")
    out["state"] = _state(cmd, REVISION_STATES)
    out["by"] = _text(cmd, "by", max_len=MAX_NAME)
    out["reason"] = _text(cmd, "reason")
    out["summary"] = _blob(cmd, "summary")
    out["approvals_required"] = _int(cmd, "approvals_required", low=1, high=9, default=1)


def _check_revision_approve(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["sha"] = _sha(cmd, "sha")
    out["by"] = _text(cmd, "by", required=True, max_len=MAX_NAME)
    out["note"] = _text(cmd, "note")


def _check_host_set(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["name"] = _text(cmd, "name", required=True, max_len=MAX_NAME)
    for key in ("stage", "state", "last_event"):
        if key in cmd:
            out[key] = _text(cmd, key, max_len=MAX_NAME if key != "last_event" else MAX_TEXT)
    if "revision" in cmd:
        out["revision"] = _sha(cmd, "revision", required=False)


def _check_host_arm(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["name"] = _text(cmd, "name", required=True, max_len=MAX_NAME)
    out["revision"] = _sha(cmd, "revision")
    out["stages"] = _int(cmd, "stages", low=1, high=64)
    out["by"] = _text(cmd, "by", max_len=MAX_NAME)
    out["reason"] = _text(cmd, "reason")


def _check_host_step(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["name"] = _text(cmd, "name", required=True, max_len=MAX_NAME)
    out["revision"] = _sha(cmd, "revision")
    out["state"] = _state(cmd, HOST_STATES)
    out["stage"] = _int(cmd, "stage", low=1, high=64)
    out["attempt"] = _int(cmd, "attempt", low=0, high=100, default=0)
    out["message"] = _text(cmd, "message")
    deadline = cmd.get("deadline")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(
            deadline, int | float) or not math.isfinite(deadline)):
        raise _fail("deadline must be a timestamp in seconds")
    out["deadline"] = float(deadline) if deadline is not None else None


def _check_host_stage_done(cmd: dict[str, Any], out: dict[str, Any]) -> None:
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


def _check_host_seen(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["name"] = _text(cmd, "name", required=True, max_len=MAX_NAME)
    out["stage"] = _int(cmd, "stage", low=1, high=64)
    out["revision"] = _sha(cmd, "revision", required=False)
    out["step"] = _seen_step(cmd)


def _check_hosts_seen(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["hosts"] = _seen_batch(cmd.get("hosts"))


def _check_rollout_start(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["revision"] = _sha(cmd, "revision")
    out["base"] = _sha(cmd, "base", required=False)
    out["by"] = _text(cmd, "by", max_len=MAX_NAME)


def _check_rollout_set(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["revision"] = _sha(cmd, "revision")
    out["state"] = _state(cmd, ROLLOUT_STATES)
    out["by"] = _text(cmd, "by", max_len=MAX_NAME)
    out["reason"] = _text(cmd, "reason")


def _check_intent_record(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["intent_id"] = _text(cmd, "intent_id", required=True, max_len=64)
    out["host"] = _text(cmd, "host", required=True, max_len=MAX_NAME)
    out["action"] = _text(cmd, "action", required=True, max_len=MAX_NAME)
    out["stage"] = _text(cmd, "stage", max_len=MAX_NAME)
    out["revision"] = _sha(cmd, "revision", required=False)
    out["term"] = _int(cmd, "term", low=0, high=2**62)


def _check_intent_result(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["intent_id"] = _text(cmd, "intent_id", required=True, max_len=64)
    if not isinstance(cmd["ok"], bool):
        raise _fail("ok must be true or false")
    out["ok"] = cmd["ok"]
    out["detail"] = _text(cmd, "detail")


def _check_event_append(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["kind"] = _text(cmd, "kind", required=True, max_len=64)
    out["host"] = _text(cmd, "host", max_len=MAX_NAME)
    out["revision"] = _sha(cmd, "revision", required=False)
    out["message"] = _text(cmd, "message")
    out["data"] = _blob(cmd, "data")


def _check_peer_add_remove(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out.update(_peer({k: cmd.get(k) for k in ("address", "name", "api_url") if k in cmd}))
    if cmd["op"] == "peer.remove":
        del out["name"], out["api_url"]


def _check_federation_summary(cmd: dict[str, Any], out: dict[str, Any]) -> None:
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


def _check_federation_override(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    out["revision"] = _sha(cmd, "revision")
    out["by"] = _text(cmd, "by", required=True, max_len=MAX_NAME)
    out["reason"] = _text(cmd, "reason")


def _check_peers_set(cmd: dict[str, Any], out: dict[str, Any]) -> None:
    peers = cmd["peers"]
    if not isinstance(peers, list) or not 1 <= len(peers) <= MAX_PEERS:
        raise _fail(f"peers must be a list of 1 to {MAX_PEERS} peers")
    out["peers"] = [_peer(p) for p in peers]
    if len({p["address"] for p in out["peers"]}) != len(out["peers"]):
        raise _fail("peers must have distinct addresses")


# Every replicated operation: the fields of its command beyond op, op_id and at (required,
# optional), the check that normalizes them, and the ClusterState method that applies it
# (state.py looks each up when imported). Adding an operation is one row and its check.
OPERATIONS: dict[str, Operation] = {
    "revision.observe": _op("sha", "source", _check_revision_observe, "_observe"),
    "revision.transition": _op("sha state", "by reason summary approvals_required",
        _check_revision_transition, "_transition"),
    "revision.approve": _op("sha by", "note", _check_revision_approve, "_approve"),
    "host.set": _op("name", "stage state last_event revision", _check_host_set, "_host_set"),
    "host.arm": _op("name revision stages", "by reason", _check_host_arm, "_host_arm"),
    "host.step": _op("name revision state stage", "attempt message deadline",
        _check_host_step, "_host_step"),
    "host.stage_done": _op("name stage stages", "revision armed_seq",
        _check_host_stage_done, "_host_stage_done"),
    "host.seen": _op("name stage", "revision step", _check_host_seen, "_host_seen"),
    "hosts.seen": _op("hosts", "", _check_hosts_seen, "_hosts_seen"),
    "rollout.start": _op("revision", "base by", _check_rollout_start, "_rollout_start"),
    "rollout.set": _op("revision state", "by reason", _check_rollout_set, "_rollout_set"),
    "intent.record": _op("intent_id host action term", "stage revision",
        _check_intent_record, "_intent_record"),
    "intent.result": _op("intent_id ok", "detail", _check_intent_result, "_intent_result"),
    "event.append": _op("kind", "host revision message data", _check_event_append, "_event"),
    "peer.add": _op("address", "name api_url", _check_peer_add_remove, "_peer_add"),
    "peer.remove": _op("address", "", _check_peer_add_remove, "_peer_remove"),
    "peers.set": _op("peers", "", _check_peers_set, "_peers_set"),
    "federation.summary": _op("site seq digest envelope", "via",
        _check_federation_summary, "_federation_summary"),
    "federation.override": _op("revision by", "reason",
        _check_federation_override, "_federation_override"),
}
OPS = frozenset(OPERATIONS)


def validate(cmd: Any) -> dict[str, Any]:
    """Return a normalized copy of `cmd` or raise InvalidCommand. Pure and deterministic."""
    if not isinstance(cmd, dict):
        raise _fail("a command is an object")
    op = cmd.get("op")
    if op not in OPERATIONS:
        raise _fail(f"unknown op {op!r}")
    operation = OPERATIONS[op]
    required, optional = operation.required, operation.optional
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
    operation.check(cmd, out)
    return out


def new_op_id() -> str:
    """A fresh idempotency key; a retried submission must reuse the one it was given."""
    return uuid.uuid4().hex


def build(op: str, at: float, **fields: Any) -> dict[str, Any]:
    """Build and validate a command; fields that are None are left out."""
    cmd = {"op": op, "op_id": new_op_id(), "at": at}
    cmd.update({k: v for k, v in fields.items() if v is not None})
    return validate(cmd)
