"""A site summary: what one site tells the others about itself, as canonical JSON signed with
the site's Ed25519 key.

The summary is small (bounded counts, at most RECENT revisions, no host names): a site of
10,000 hosts publishes the same few hundred bytes as a site of ten. Canonical JSON (sorted
keys, no spaces, UTF-8) makes the signed bytes a pure function of the content, so any site
can relay a summary unchanged and any receiver can check it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from appliance.cluster import commands

from .keys import SigningKey

FORMAT = 1
MAX_SUMMARY_BYTES = 4096  # the signed document
MAX_ENVELOPE_BYTES = 6144  # the document, its signature and key id
RECENT = 8  # revisions a summary lists
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
REVISION_STATES = frozenset(commands.REVISION_STATES)
ROLLOUT_STATES = frozenset(commands.ROLLOUT_STATES)


class SummaryError(Exception):
    """A summary or envelope that is not well formed; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def digest(summary: dict) -> str:
    return hashlib.sha256(canonical(summary)).hexdigest()


@dataclass(frozen=True)
class SiteFacts:
    """What the site's leader knows of its own state when it publishes."""

    applied: str | None
    revisions: dict[str, str]  # sha -> lifecycle state, newest last
    rollout: dict[str, Any] | None  # revision, state, since, done, failed, in_flight
    quorum: bool
    peers_up: int
    peers: int


def build_summary(site: str, seq: int, at: float, facts: SiteFacts, prev: str | None) -> dict:
    recent = dict(list(facts.revisions.items())[-RECENT:])
    return {"v": FORMAT, "site": site, "seq": seq, "at": round(at, 3),
            "applied": facts.applied, "revisions": recent, "rollout": facts.rollout,
            "quorum": facts.quorum, "peers_up": facts.peers_up, "peers": facts.peers,
            "prev": prev}


def sign(summary: dict, key: SigningKey) -> dict:
    """The envelope that travels: the summary, the key id, the signature of its bytes."""
    data = canonical(summary)
    if len(data) > MAX_SUMMARY_BYTES:
        raise SummaryError("too_large", f"summary of {len(data)} bytes (max "
                           f"{MAX_SUMMARY_BYTES})")
    return {"summary": summary, "key": key.id,
            "sig": base64.b64encode(key.sign(data)).decode()}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _time(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def check_shape(summary: Any) -> None:
    """Raise SummaryError unless `summary` is a well-formed summary (before any signature
    check: a malformed document is refused as such, whoever signed it)."""
    def bad(message: str) -> SummaryError:
        return SummaryError("malformed", message)

    if not isinstance(summary, dict):
        raise bad("a summary is an object")
    fields = {"v", "site", "seq", "at", "applied", "revisions", "rollout", "quorum",
              "peers_up", "peers", "prev"}
    if set(summary) != fields:
        raise bad(f"fields must be exactly {sorted(fields)}")
    if summary["v"] != FORMAT:
        raise bad(f"unknown summary format {summary['v']!r}")
    if not isinstance(summary["site"], str) or not _ID.match(summary["site"]):
        raise bad("site must be a site id")
    if not _count(summary["seq"]) or summary["seq"] < 1:
        raise bad("seq must be a positive integer")
    if not _time(summary["at"]):
        raise bad("at must be a timestamp")
    if summary["applied"] is not None and not (isinstance(summary["applied"], str)
                                               and _SHA.match(summary["applied"])):
        raise bad("applied must be a commit SHA or null")
    revs = summary["revisions"]
    if not isinstance(revs, dict) or len(revs) > RECENT or any(
            not _SHA.match(k) or v not in REVISION_STATES for k, v in revs.items()):
        raise bad(f"revisions must map at most {RECENT} SHAs to lifecycle states")
    rollout = summary["rollout"]
    if rollout is not None:
        keys = {"revision", "state", "since", "done", "failed", "in_flight"}
        if (not isinstance(rollout, dict) or set(rollout) != keys
                or not (isinstance(rollout["revision"], str) and _SHA.match(rollout["revision"]))
                or rollout["state"] not in ROLLOUT_STATES or not _time(rollout["since"])
                or not all(_count(rollout[k]) for k in ("done", "failed", "in_flight"))):
            raise bad("rollout must be {revision, state, since, done, failed, in_flight}")
    if not isinstance(summary["quorum"], bool):
        raise bad("quorum must be true or false")
    if not _count(summary["peers_up"]) or not _count(summary["peers"]):
        raise bad("peers_up and peers must be counts")
    if summary["prev"] is not None and not (isinstance(summary["prev"], str)
                                            and _HEX64.match(summary["prev"])):
        raise bad("prev must be the SHA-256 of the previous summary or null")


def open_envelope(envelope: Any) -> tuple[dict, str, bytes, bytes]:
    """(summary, key id, signature, signed bytes) of a well-formed envelope."""
    if not isinstance(envelope, dict) or set(envelope) != {"summary", "key", "sig"}:
        raise SummaryError("malformed", "an envelope is {summary, key, sig}")
    summary, kid, sig = envelope["summary"], envelope["key"], envelope["sig"]
    if not isinstance(kid, str) or not _HEX16.match(kid):
        raise SummaryError("malformed", "key must be a key id (16 hex digits)")
    if not isinstance(sig, str) or len(sig) > 200:
        raise SummaryError("malformed", "sig must be a base64 signature")
    try:
        signature = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise SummaryError("malformed", "sig is not base64") from None
    data = canonical(summary)  # the request body is bounded; refuse big ones before parsing
    if len(data) > MAX_SUMMARY_BYTES:
        raise SummaryError("too_large", f"summary of {len(data)} bytes (max "
                           f"{MAX_SUMMARY_BYTES})")
    check_shape(summary)
    return summary, kid, signature, data
