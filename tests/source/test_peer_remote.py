"""Air-gapped site: `git push` straight to a peer (smart HTTP served by the peer), no
GitHub; the pushed commit goes through the pipeline like any other."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_peer_source import ADMIN, ENV, LAB01, REPO, call, git, revision_state, until

pytestmark = pytest.mark.slow
READER = "source-test-read-token-0123456789"
GIT_ENV = {**ENV, "GIT_TERMINAL_PROMPT": "0"}


def git_net(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                          env=GIT_ENV, timeout=60)


def test_git_push_to_a_peer_with_tokens(tmp_path: Path) -> None:
    with socket.socket() as s1, socket.socket() as s2:
        s1.bind(("127.0.0.1", 0))
        s2.bind(("127.0.0.1", 0))
        http_port, raft_port = s1.getsockname()[1], s2.getsockname()[1]
    for name, value in (("secret", "cGhvbmUtaG9tZS1rZXktZm9yLXRlc3Rz"),
                        ("raft.secret", "cmFmdC1rZXktZm9yLXRlc3Rz"), ("admin.token", ADMIN),
                        ("read.token", READER)):
        (tmp_path / name).write_text(value + "\n")
        (tmp_path / name).chmod(0o600)
    (tmp_path / "peer.yaml").write_text(f"""
site: lab
peer: peer-1
data_dir: {tmp_path / 'data'}
interface: lo
address: 127.0.0.1
remote: {{enabled: true}}
source: {{url: local, ref: main, poll_interval: 60, poll_jitter: 0}}
token_secret_file: secret
http: {{listen: 127.0.0.1, port: {http_port}}}
tftp: {{enabled: false}}
dhcp: {{enabled: false}}
prefetch_artifacts: false
raft: {{address: "127.0.0.1:{raft_port}", password_file: raft.secret}}
api:
  tokens:
    - {{name: ops, role: admin, file: admin.token}}
    - {{name: viewer, role: read, file: read.token}}
""")
    base = f"http://127.0.0.1:{http_port}"
    remote = f"127.0.0.1:{http_port}/git/sot.git"
    work = tmp_path / "work"
    shutil.copytree(REPO / "sot_examples" / "lab", work)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "lab site")
    sha = git(work, "rev-parse", "HEAD")
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "vaq-peer"), "serve",
                                 "--config", str(tmp_path / "peer.yaml")],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
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
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    text = log.read_text()
    assert ADMIN not in text and READER not in text
    assert '"git.push"' in text
