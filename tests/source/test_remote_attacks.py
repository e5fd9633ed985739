"""Attacks through the peer's own git remote, against a real peer process: a 200 MB push
and clone (the peer's memory measured from /proc), a push over the limit, and a force-push
and a branch deletion, each found in the replicated journal with old and new SHA and the
token's name. Each asserts the peer still answers the boot chain for a known machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from test_peer_remote import GIT_ENV
from test_peer_source import LAB01, REPO, git, until

from tools.rigs.peer_proc import ADMIN, READER, call, single_peer

pytestmark = pytest.mark.slow
MB = 1 << 20


def memory_mb(pid: int) -> dict[str, float]:
    """RssAnon (the process's own memory), RssFile (mapped files: dulwich maps pack files,
    pages the kernel may drop at any time) and VmHWM (peak of both), in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile", "VmHWM")}


class PeakAnon:
    """Samples a process's RssAnon every 20 ms in a thread while a block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, memory_mb(self.pid)["RssAnon"])

    def __enter__(self) -> PeakAnon:
        self.peak = memory_mb(self.pid)["RssAnon"]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def events(base: str) -> list[dict]:
    status, text = call(f"{base}/v1/events?limit=1000",
                        headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 200, text
    return json.loads(text)["events"]


def boot_answers(base: str) -> bool:
    """The boot chain answers for a known machine (503 until a revision is approved)."""
    return call(f"{base}/ipxe?mac={LAB01}")[0] in (200, 503)


def push(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # random data neither compresses nor deltifies: do not let git try (minutes of CPU)
    return subprocess.run(["git", "-C", str(work), "-c", "pack.window=0",
                           "-c", "core.compression=0", "push", "-q", *args],
                          capture_output=True, text=True, env=GIT_ENV, timeout=600)


def add_random_files(work: Path, total_mb: int, name: str) -> None:
    blobs = work / "blobs" / name
    blobs.mkdir(parents=True)
    for i in range(total_mb // 4):
        (blobs / f"{i}.bin").write_bytes(os.urandom(4 * MB))


def test_big_push_and_clone_are_streamed_and_ref_changes_journaled(tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(REPO / "sot_examples" / "lab", work)
    git(work, "init", "-q", "-b", "main")
    git(work, "config", "core.compression", "0")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "lab site")
    first = git(work, "rev-parse", "HEAD")
    own_remote = ("remote: {enabled: true}\n"
                  "source: {url: local, ref: main, poll_interval: 60, poll_jitter: 0}")
    with single_peer(tmp_path, own_remote) as peer:
        base = peer.base
        pid = peer.proc.pid
        remote = f"127.0.0.1:{peer.http_port}/git/sot.git"
        admin = f"http://x-access-token:{ADMIN}@{remote}"
        until(lambda: call(f"{base}/healthz")[0] == 200, "the peer")
        assert push(work, admin, "main").returncode == 0
        base_mem = memory_mb(pid)

        # 200 MB of incompressible files: accepted, streamed to disk
        add_random_files(work, 200, "big")
        git(work, "add", "-A")
        git(work, "commit", "-qm", "200 MB")
        big = git(work, "rev-parse", "HEAD")
        with PeakAnon(pid) as push_peak:
            pushed = push(work, admin, "main")
        assert pushed.returncode == 0, pushed.stderr
        after_push = memory_mb(pid)
        with PeakAnon(pid) as clone_peak:
            clone = subprocess.run(["git", "clone", "-q", "--bare",
                                    f"http://x-access-token:{READER}@{remote}",
                                    str(tmp_path / "c")],
                                   capture_output=True, text=True, timeout=600)
        assert clone.returncode == 0, clone.stderr
        assert git(tmp_path / "c", "rev-parse", "main") == big
        after_clone = memory_mb(pid)
        print(f"\npeer memory MB: before {base_mem}\n  200 MB push: peak RssAnon "
              f"{push_peak.peak:.0f}, after {after_push}\n  clone: peak RssAnon "
              f"{clone_peak.peak:.0f}, after {after_clone}")
        # was +1,560 MB (body collected, copied, clone built in a BytesIO)
        assert push_peak.peak - base_mem["RssAnon"] < 150, push_peak.peak
        assert clone_peak.peak - base_mem["RssAnon"] < 150, clone_peak.peak
        assert boot_answers(base)

        # over the limit (256 MB): refused, nothing stored, memory still bounded
        add_random_files(work, 300, "huge")
        git(work, "add", "-A")
        git(work, "commit", "-qm", "300 MB")
        with PeakAnon(pid) as refused_peak:
            refused = push(work, admin, "main")
        assert refused.returncode != 0
        print(f"  300 MB push (refused): peak RssAnon {refused_peak.peak:.0f}")
        assert refused_peak.peak - base_mem["RssAnon"] < 150
        assert call(f"{base}/healthz")[0] == 200 and boot_answers(base)

        # a force-push that rewrites history, then a deleted branch: both on record
        git(work, "reset", "-q", "--hard", first)
        (work / "README").write_text("rewritten\n")
        git(work, "add", "-A")
        git(work, "commit", "-qm", "rewritten history")
        rewritten = git(work, "rev-parse", "HEAD")
        forced = push(work, "--force", admin, "main")
        assert forced.returncode == 0, forced.stderr
        assert push(work, admin, "main:side").returncode == 0
        assert push(work, admin, ":side").returncode == 0

        def journaled(kind: str) -> list[dict]:
            return [e for e in events(base) if e["kind"] == kind]

        until(lambda: journaled("git-ref-deleted"), "the deletion in the journal")
        force = journaled("git-ref-forced")
        assert len(force) == 1, force
        data = force[0]["data"]
        assert (data["ref"], data["old"], data["new"], data["token"]) == (
            "refs/heads/main", big, rewritten, "ops")
        deleted = journaled("git-ref-deleted")[0]["data"]
        assert (deleted["ref"], deleted["old"], deleted["new"]) == (
            "refs/heads/side", rewritten, "0" * 40)
        updates = journaled("git-ref-updated")
        assert any(e["data"]["new"] == big and e["data"]["old"] == first for e in updates)
        assert boot_answers(base)
