"""The per-host archive on disk: retention by count and age, gaps said out loud, names that
could escape the directory refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

from appliance.host_archive import HostArchive


def _event(seq: int, host: str | None, at: float | None = None) -> dict:
    return {"seq": seq, "at": at or time.time(), "kind": "host.armed", "host": host}


def test_events_are_kept_per_host_and_read_in_pages(tmp_path: Path) -> None:
    archive = HostArchive(tmp_path / "hosts")
    archive.add([_event(1, "a"), _event(2, "b"), _event(3, None), _event(4, "a")])
    assert [e["seq"] for e in archive.read("a")["events"]] == [1, 4]
    assert [e["seq"] for e in archive.read("a", after=1)["events"]] == [4]
    assert archive.read("a", limit=1)["events"][0]["seq"] == 1
    assert archive.read("c") is None
    # the position survives a restart: the peer resumes the journal where it stopped
    assert HostArchive(tmp_path / "hosts").archived == 4


def test_retention_by_count_and_age(tmp_path: Path) -> None:
    archive = HostArchive(tmp_path / "hosts", max_events=10, max_age_days=1)
    old = time.time() - 3 * 86400
    archive.add([_event(1, "a", at=old)])
    archive.add([_event(seq, "a") for seq in range(2, 14)])  # 13 > 10 * 5/4: compacted
    kept = archive.read("a", limit=1000)
    assert [e["seq"] for e in kept["events"]] == list(range(4, 14))
    lines = (tmp_path / "hosts" / "a.jsonl").read_text().splitlines()
    assert len(lines) == 10 and all(json.loads(line)["host"] == "a" for line in lines)


def test_a_gap_is_recorded_in_each_host_history(tmp_path: Path) -> None:
    archive = HostArchive(tmp_path / "hosts")
    archive.gap(5, 900, ["a", "b"])
    for host in ("a", "b"):
        (event,) = archive.read(host)["events"]
        assert event["kind"] == "gap" and "events 5..900 left the journal" in event["message"]


def test_names_that_are_not_plain_host_names_are_not_files(tmp_path: Path) -> None:
    archive = HostArchive(tmp_path / "hosts")
    archive.add([_event(1, "../escape"), _event(2, ".hidden"), _event(3, "x/y")])
    assert sorted(p.name for p in (tmp_path / "hosts").iterdir()) == ["archived.seq"]
    assert archive.read("../escape") is None
