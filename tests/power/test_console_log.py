"""A recorded console on disk: appended, rotated at its size limit with a bounded number of
old files, cut into its sessions (stage, attempt, start time), and merged with what other
peers recorded of the same host."""

from __future__ import annotations

from pathlib import Path

from appliance.power.console import ConsoleLog, ConsoleRecorder, merge_runs


def test_rotation_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    log = ConsoleLog(tmp_path / "h.log", max_bytes=100, keep=2)
    for i in range(10):
        log.append(f"line {i:02d} ".encode() * 5)  # 40 bytes a write
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["h.log", "h.log.1", "h.log.2"], names
    assert all(p.stat().st_size <= 140 for p in tmp_path.iterdir())
    assert b"line 09" in (tmp_path / "h.log").read_bytes()


def test_sessions_are_noted_and_cut_out_of_the_log(tmp_path: Path) -> None:
    """Each session notes where it starts; `runs` gives them back with their text, and a
    rotation keeps the note of the session that goes on in the new file."""
    recorder = ConsoleRecorder(tmp_path / "consoles")
    log = ConsoleLog(tmp_path / "consoles" / "h.log", max_bytes=1000, keep=1)
    log.begin(1, 0, at=100.0)
    log.append(b"iPXE\nLinux version 6.1\n")
    log.begin(2, 0, at=200.0)
    log.append(b"second stage\n")
    assert recorder.runs("h") == [
        {"at": 100.0, "stage": 1, "attempt": 0, "text": "iPXE\nLinux version 6.1\n"},
        {"at": 200.0, "stage": 2, "attempt": 0, "text": "second stage\n"}]
    log.append(b"x" * 1000)  # over max_bytes: rotated, the stage 2 session goes on
    log.append(b"after the rotation\n")
    assert recorder.runs("h") == [{"at": 200.0, "stage": 2, "attempt": 0,
                                   "text": "after the rotation\n"}]
    assert recorder.runs("other") is None and recorder.runs("../h") is None


def test_a_log_without_notes_is_one_session_and_bad_notes_are_skipped(tmp_path: Path) -> None:
    consoles = tmp_path / "consoles"
    recorder = ConsoleRecorder(consoles)
    (consoles / "h.log").write_bytes(b"from an older peer\n")
    (run,) = recorder.runs("h")
    assert run["text"] == "from an older peer\n" and run["stage"] is None
    (consoles / "h.log.runs").write_text('not json\n{"offset": 5, "at": 10, "stage": 1, '
                                         '"attempt": 0}\n{"offset": 9999, "at": 11}\n')
    assert [(r["stage"], r["text"]) for r in recorder.runs("h")] == [
        (None, "from "), (1, "an older peer\n")]


def test_merged_runs_are_ordered_by_time_under_their_peer() -> None:
    """A leader change: peer-1 recorded the start of stage 1, peer-2 the rest and stage 2."""
    merged = merge_runs({
        "peer-2": [{"at": 60.0, "stage": 1, "attempt": 0, "text": "installing"},
                   {"at": 120.0, "stage": 2, "attempt": 0, "text": "first boot\n"}],
        "peer-1": [{"at": 0.0, "stage": 1, "attempt": 0, "text": "Linux version 6.1\n"}]})
    assert merged == (
        "--- vaquero: console recorded by peer-1: stage 1 attempt 0, from "
        "1970-01-01T00:00:00Z ---\nLinux version 6.1\n"
        "--- vaquero: console recorded by peer-2: stage 1 attempt 0, from "
        "1970-01-01T00:01:00Z ---\ninstalling\n"
        "--- vaquero: console recorded by peer-2: stage 2 attempt 0, from "
        "1970-01-01T00:02:00Z ---\nfirst boot\n")
