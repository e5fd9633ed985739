"""Raft's append rule (log_matching.trim_append) against pysyncobj's delete-all-after: the
messages a late acknowledgement makes a leader send, and the ones pysyncobj must still see
unchanged (mismatches, conflicts with older terms, snapshots)."""

from __future__ import annotations

from appliance.cluster.log_matching import trim_append


def log_of(*terms: int, first: int = 1) -> tuple[int, int, dict[int, int]]:
    """A follower's log: entry `first + k` has term `terms[k]`."""
    by_index = {first + k: t for k, t in enumerate(terms)}
    return first, first + len(terms) - 1, by_index


def append(prev: int, prev_term: int, term: int, *entries: tuple[int, int]) -> dict:
    return {"type": "append_entries", "term": term, "commit_index": 0, "prevLogIdx": prev,
            "prevLogTerm": prev_term, "entries": [(b"cmd", i, t) for i, t in entries]}


def trim(message: dict, log: tuple[int, int, dict[int, int]]) -> dict | None:
    first, last, by_index = log
    return trim_append(message, first, last, by_index.__getitem__)


def test_a_resend_of_held_entries_deletes_nothing() -> None:
    log = log_of(1, 2, 2, 2, 2, 2)  # indexes 1..6
    # The leader moved our next index back to 3 and re-sends 3..4 only (a capped batch).
    out = trim(append(2, 2, 2, (3, 2), (4, 2)), log)
    assert out is not None
    # Everything up to 6 is of the leader's term: kept and acknowledged, nothing deleted.
    assert (out["prevLogIdx"], out["prevLogTerm"], out["entries"]) == (6, 2, [])
    assert out["commit_index"] == 0 and out["term"] == 2


def test_held_entries_are_skipped_and_new_ones_appended_after_our_last() -> None:
    log = log_of(1, 2, 2, 2)  # 1..4
    out = trim(append(2, 2, 2, (3, 2), (4, 2), (5, 2), (6, 2)), log)
    assert out["prevLogIdx"] == 4 and out["prevLogTerm"] == 2
    assert [e[1] for e in out["entries"]] == [5, 6]


def test_a_conflict_deletes_from_the_conflict_not_from_prev() -> None:
    log = log_of(1, 1, 1, 1, 1)  # 1..5 from an old leader
    # The new leader (term 3) agrees up to 3, and has index 4 of term 3.
    out = trim(append(2, 1, 3, (3, 1), (4, 3)), log)
    assert out["prevLogIdx"] == 3 and out["prevLogTerm"] == 1
    assert [(e[1], e[2]) for e in out["entries"]] == [(4, 3)]  # pysyncobj deletes 4.. here


def test_older_term_entries_after_the_sent_ones_are_left_to_pysyncobj() -> None:
    log = log_of(1, 1, 1, 1)  # 1..4, all of term 1; the leader is at term 2
    out = trim(append(1, 1, 2, (2, 1)), log)
    # 2 is held (skipped); 3..4 of term 1 are not known to be the leader's: not claimed.
    assert out["prevLogIdx"] == 2 and out["entries"] == []


def test_messages_pysyncobj_handles_itself_pass_unchanged() -> None:
    log = log_of(1, 2, 2, 2)  # 1..4
    assert trim(append(2, 1, 2, (3, 2)), log) is None  # prevLogTerm mismatch: refused there
    assert trim(append(4, 2, 2, (5, 2)), log) is None  # plain append at our end
    assert trim(append(4, 2, 2), log) is None  # heartbeat at our end
    assert trim(append(2, 2, 2, (3, 3)), log) is None  # conflict right after prev
    assert trim(append(7, 2, 2, (8, 2)), log) is None  # beyond our log: pysyncobj resets
    compacted = log_of(2, 2, 2, first=10)  # a snapshot covers ..10
    assert trim(append(5, 1, 2, (6, 1)), compacted) is None
    assert trim({"type": "append_entries", "term": 2, "commit_index": 0,
                 "serialized": b"snapshot"}, log) is None
    assert trim({**append(2, 2, 2), "transmission": "start", "data": b""}, log) is None


def test_a_heartbeat_behind_our_last_entry_is_left_to_pysyncobj() -> None:
    # A leader sends an empty append only when our next index is past its own last entry:
    # what we hold after prevLogIdx is not in its log, so deleting it is Raft's rule too.
    log = log_of(1, 1, 1, 1)  # 1..4 from an old leader
    assert trim(append(2, 1, 2), log) is None
