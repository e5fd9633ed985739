"""The shapes of the records the replicated state holds (state.py writes every one of them).

They are TypedDicts, not classes, on purpose: the records are pickled into Raft journals and
snapshots that outlive the code, so at run time they stay plain dicts of plain values (a
state is its string, never its StrEnum member). The types only tell a reader, and mypy,
which keys a record has. A key marked NotRequired is really absent from some records: set
later than the record is made, or only by some of the operations that make it.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

__all__ = ["Approval", "EventPage", "EventRecord", "HistoryEntry", "HostRecord",
           "HostRunning", "PeerRecord", "RevisionRecord", "RolloutRecord"]


class HistoryEntry(TypedDict):
    """One state change of a revision or a rollout (the newest HISTORY_LIMIT are kept)."""

    state: str
    at: float
    by: str | None
    reason: str | None


class Approval(TypedDict):
    by: str
    at: float
    note: str | None


class RevisionRecord(TypedDict):
    """A SoT revision (`revision.observe` makes it, `transition` and `approve` change it)."""

    sha: str
    state: str  # a RevisionState value
    source: str | None
    observed_at: float
    updated_at: float
    history: list[HistoryEntry]
    summaries: dict[str, dict[str, Any]]  # state -> the report that took it there
    approvals: list[Approval]
    approvals_required: int


class RolloutRecord(TypedDict):
    """The hardware work of applying a revision (`rollout.start`, `rollout.set`)."""

    revision: str
    base: str | None
    state: str  # a RolloutState value
    started_at: float
    updated_at: float
    by: str | None
    reason: str | None
    history: list[HistoryEntry]


class HostRunning(TypedDict):
    """What a machine reported it runs, until the leader next powers it."""

    revision: str | None
    stage: int


class HostRecord(TypedDict):
    """A machine as the workflow sees it. `host.arm` makes the full record; `host.set` makes
    one with only the first six keys, and `host.stage_done` of a host never armed one
    without `armed_at`. Evidence keys (seen_*, loaded_*) come with `host.seen`."""

    name: str
    # an int (the stage in progress) when armed or reported; host.set stores it as text
    stage: int | str | None
    state: str | None  # a HostState value; None only in a host.set record that set none
    last_event: str | None
    revision: str | None
    updated_at: float
    stages: NotRequired[int]
    done: NotRequired[int]
    attempt: NotRequired[int]
    armed_seq: NotRequired[int | None]  # the event seq of its arming: None if never armed
    armed_at: NotRequired[float]
    message: NotRequired[str | None]
    deadline: NotRequired[float | None]
    running: NotRequired[HostRunning]
    seen_at: NotRequired[float]
    seen_stage: NotRequired[int]
    seen_seq: NotRequired[int]
    loaded_stage: NotRequired[int]
    loaded_seq: NotRequired[int]


class EventRecord(TypedDict):
    """One entry of the event ring; the optional keys are present only when not None."""

    seq: int
    at: float
    kind: str
    host: NotRequired[str]
    revision: NotRequired[str]
    message: NotRequired[str]
    data: NotRequired[dict[str, Any]]


class EventPage(TypedDict):
    """`first_seq` > after_seq + 1 means the reader fell behind the ring and lost events."""

    events: list[EventRecord]
    first_seq: int
    last_seq: int


class PeerRecord(TypedDict):
    """A member of the peer list; `joined_at` is absent until the peer announced itself."""

    address: str
    name: str | None
    api_url: str | None
    added_at: float
    joined_at: NotRequired[float]
