"""Raft's rule for a follower appending entries (Raft paper, §5.3, receiver step 3 and 4),
applied to an AppendEntries message before pysyncobj 0.3.17 handles it.

Why: pysyncobj's follower deletes every entry after `prevLogIdx` whenever it holds any, and
then adds the message's entries. The leader re-sends entries a follower already holds
whenever an acknowledgement arrives late (it moves the follower's next index back to what
that acknowledgement says), so on a loaded peer this deletes entries that are already
committed and applied, and logs "truncating already-applied log entries ... may have
diverged" at critical level. The state machine does not diverge when the re-sent entries
cover all that was deleted (they are the same entries); but a re-send is capped at
`appendEntriesBatchSizeBytes`, and then the follower has lost, until the leader sends them
again, entries it acknowledged: a majority that counted on them no longer holds them.

Raft says: delete only from the first entry that conflicts (same index, other term), and
append only the entries not already held. `trim_append` rewrites the message so that
pysyncobj's own code does exactly that: it skips the entries the follower holds, and moves
`prevLogIdx` to the last of them, so pysyncobj deletes nothing or only from the conflict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def trim_append(message: dict[str, Any], first_index: int, last_index: int,
                term_at: Callable[[int], int]) -> dict[str, Any] | None:
    """The message to hand to pysyncobj instead, or None to hand it on unchanged.

    `first_index`..`last_index` is the follower's log (after compaction the first entry is
    the snapshot's); `term_at(i)` is the term of its entry at index i in that range.
    """
    if "transmission" in message or "entries" not in message:
        return None  # a large entry in pieces, a snapshot, or a heartbeat of another kind
    prev = message.get("prevLogIdx")
    if not isinstance(prev, int) or not first_index <= prev < last_index:
        return None  # nothing after prevLogIdx to delete, or not in our log: pysyncobj's case
    if term_at(prev) != message.get("prevLogTerm"):
        return None  # a mismatch: pysyncobj refuses it and the leader backs up
    entries = list(message["entries"])
    held = 0
    for entry in entries:
        index, term = entry[1], entry[2]
        if index > last_index or term_at(index) != term:
            break  # beyond our log, or the first conflict: pysyncobj deletes from here
        held += 1
    if held == 0:
        return None
    new_prev = prev + held
    rest = entries[held:]
    if not rest and new_prev < last_index and term_at(last_index) == message.get("term"):
        # All sent entries are held and so is more, up to an entry of the leader's own term:
        # only this leader wrote that entry, so our log up to it is the leader's (the Log
        # Matching property) and keeping it is safe. Entries of older terms after the sent
        # ones are left to pysyncobj, which deletes them; the leader sends them again.
        new_prev = last_index
    return {**message, "prevLogIdx": new_prev, "prevLogTerm": term_at(new_prev),
            "entries": rest}
