"""Exceptions of the cluster module.

Callers (the REST API, the workflow engine) must tell apart "try another peer", "nothing can
be written right now" and "the command itself is wrong", so each Raft failure maps to one
exception class rather than a numeric pysyncobj fail reason.
"""

from __future__ import annotations


class ClusterError(Exception):
    """Base class: a replicated operation did not complete."""


class InvalidCommand(ClusterError, ValueError):
    """The command has the wrong shape; it was not submitted."""


class CommandRejected(ClusterError):
    """The command was committed but the state machine refused it (e.g. bad transition).

    It is deterministic: every peer refused it the same way, and retrying will not help.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NotLeader(ClusterError):
    """A leader-only operation was called on a follower; `leader` is "host:port" or None."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class NoQuorum(ClusterError):
    """This peer cannot reach a majority of the group: it refuses writes, reads still work."""


class NoLeader(ClusterError):
    """A majority is reachable but no leader was elected before the deadline."""


class CommitTimeout(ClusterError):
    """No answer before the deadline. The outcome is unknown: the write may still commit.

    Retrying with the same op_id is safe: the state machine applies an op_id only once.
    """


class MembershipChangeDenied(ClusterError):
    """The leader refused a membership change (another change is still being committed)."""


class ClusterStartError(ClusterError):
    """The Raft node could not start (port in use, unreadable password file...)."""
