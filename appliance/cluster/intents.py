"""What became of a hardware step the leader wrote down as an intent before running it.

An intent's result in the log is `{ok, detail, at}`; that shape is the Raft format and stays.
A step whose leader stopped during it has no result; the next leader never repeats it (the
machine may already be powered) and writes a failed result whose detail starts with
OUTCOME_UNKNOWN. That text is the only mark of an unknown outcome in entries already
written, so it is read here, once, and everything else asks `outcome()`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypedDict

__all__ = ["OUTCOME_UNKNOWN", "IntentOutcome", "IntentRecord", "IntentResult",
           "outcome", "unknown_detail"]

OUTCOME_UNKNOWN = "outcome unknown"  # its text is in journals already written: never change it


class IntentResult(TypedDict):
    ok: bool
    detail: str | None
    at: float


class IntentRecord(TypedDict):
    """An intent as the replicated state holds it (state.py `_intent_record`)."""

    intent_id: str
    host: str
    action: str
    stage: str | None
    revision: str | None
    term: int
    at: float
    result: IntentResult | None
    seq: int


class IntentOutcome(StrEnum):
    PENDING = "pending"  # recorded, running (or its leader died and nobody looked yet)
    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"  # its leader stopped during it: it may or may not have happened


def unknown_detail(why: str) -> str:
    """The detail of the failed result that marks a step's outcome unknown."""
    return f"{OUTCOME_UNKNOWN}: {why}"


def outcome(intent: IntentRecord | dict[str, Any] | None) -> IntentOutcome | None:
    """The outcome of a recorded intent; None when there is no intent."""
    if intent is None:
        return None
    result = intent["result"]
    if result is None:
        return IntentOutcome.PENDING
    if result["ok"]:
        return IntentOutcome.OK
    if OUTCOME_UNKNOWN in (result.get("detail") or ""):  # as every version has read it
        return IntentOutcome.UNKNOWN
    return IntentOutcome.FAILED
