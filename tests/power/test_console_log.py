"""A recorded console on disk: appended, rotated at its size limit with a bounded number of
old files, read by tail or offset (a reader that was rotated past starts over)."""

from __future__ import annotations

from pathlib import Path

from appliance.power.console import ConsoleLog, ConsoleRecorder


def test_rotation_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    log = ConsoleLog(tmp_path / "h.log", max_bytes=100, keep=2)
    for i in range(10):
        log.append(f"line {i:02d} ".encode() * 5)  # 40 bytes a write
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["h.log", "h.log.1", "h.log.2"], names
    assert all(p.stat().st_size <= 140 for p in tmp_path.iterdir())
    assert b"line 09" in (tmp_path / "h.log").read_bytes()


def test_read_by_tail_and_offset(tmp_path: Path) -> None:
    recorder = ConsoleRecorder(tmp_path / "consoles")
    assert recorder.read("h") is None and recorder.read("../x") is None
    (tmp_path / "consoles" / "h.log").write_bytes(b"Linux version 6.1\nVAQ-TEST: RUNNING\n")
    tail = recorder.read("h", tail=18)
    assert tail["text"] == "VAQ-TEST: RUNNING\n" and tail["next_offset"] == 36
    assert recorder.read("h", offset=36)["text"] == ""
    assert recorder.read("h", offset=1000)["text"].startswith("Linux version")  # rotated
