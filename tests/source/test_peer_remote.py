"""Air-gapped site: `git push` straight to a peer (smart HTTP served by the peer), no
GitHub; the pushed commit goes through the pipeline like any other."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_peer_source import ENV, LAB01, REPO, git, revision_state, until

from tools.rigs.peer_proc import ADMIN, READER, call, single_peer

pytestmark = pytest.mark.slow
GIT_ENV = {**ENV, "GIT_TERMINAL_PROMPT": "0"}


def git_net(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                          env=GIT_ENV, timeout=60)


def test_git_push_to_a_peer_with_tokens(tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(REPO / "sot_examples" / "lab", work)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "lab site")
    sha = git(work, "rev-parse", "HEAD")
    own_remote = ("remote: {enabled: true}\n"
                  "source: {url: local, ref: main, poll_interval: 60, poll_jitter: 0}")
    with single_peer(tmp_path, own_remote) as peer:
        base, log = peer.base, peer.log
        remote = f"127.0.0.1:{peer.http_port}/git/sot.git"
        until(lambda: call(f"{base}/healthz")[0] == 200, "the peer")
        anonymous = git_net(work, "push", f"http://{remote}", "main")
        assert anonymous.returncode != 0  # no token: refused
        reader = git_net(work, "push", f"http://x-access-token:{READER}@{remote}", "main")
        assert reader.returncode != 0 and "403" in reader.stderr, reader.stderr
        pushed = git_net(work, "push", f"http://x-access-token:{ADMIN}@{remote}", "main")
        assert pushed.returncode == 0, pushed.stderr
        # the push triggers a fetch at once (poll interval is 60 s): judged and planned
        until(lambda: revision_state(base, sha) == "awaiting_approval", "pushed commit planned")
        assert call(f"{base}/ipxe?mac={LAB01}")[0] == 503  # not approved: not served
        clone = git_net(tmp_path, "clone", "-q", f"http://x-access-token:{READER}@{remote}",
                        "clone")
        assert clone.returncode == 0, clone.stderr
        assert git(tmp_path / "clone", "rev-parse", "HEAD") == sha
    text = log.read_text()
    assert ADMIN not in text and READER not in text
    assert '"git.push"' in text
