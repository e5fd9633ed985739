"""A peer following a git remote: pushes made with the real git CLI, signalled by a signed
GitHub webhook, go through the replicated pipeline; only approved revisions are served.

One `vaq-peer serve` process (a one-peer group) follows a bare repository over file://.
Nothing is served before a revision is applied; an invalid push is rejected with its report
and the applied revision keeps being served; an approval through the CLI makes the new
revision the one every boot request gets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.waiting import until
from tools.rigs.peer_proc import (
    ADMIN,
    EXE,
    PeerProcess,
    call,
    free_tcp_ports,
    single_peer,
    start_peer,
    write_config,
    write_secrets,
)

REPO = Path(__file__).resolve().parents[2]
ENV = {"GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.test",
       "GIT_COMMITTER_NAME": "Ops", "GIT_COMMITTER_EMAIL": "ops@example.test",
       "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}
HOOK_SECRET = b"webhook-secret-for-tests-0123456789"
LAB01 = "52:54:00:18:00:11"
pytestmark = pytest.mark.slow


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True, env=ENV, timeout=30).stdout.strip()


def push(work: Path, message: str) -> str:
    git(work, "add", "-A")
    git(work, "commit", "-qm", message)
    git(work, "push", "-q", "origin", "main")
    return git(work, "rev-parse", "HEAD")


def hook(base: str, sha: str) -> int:
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    sig = "sha256=" + hmac.new(HOOK_SECRET, body, hashlib.sha256).hexdigest()
    status, _ = call(f"{base}/v1/hooks/github", "POST", body, {
        "X-GitHub-Event": "push", "X-Hub-Signature-256": sig, "X-GitHub-Delivery": f"t-{sha[:12]}",
        "Content-Type": "application/json"})
    return status


def revision_state(base: str, sha: str) -> str | None:
    status, text = call(f"{base}/v1/revisions/{sha}", headers={"Authorization": f"Bearer {ADMIN}"})
    return json.loads(text)["state"] if status == 200 else None




def test_peer_follows_pushes_through_the_pipeline(tmp_path: Path) -> None:
    bare, work = tmp_path / "sot.git", tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True,
                   env=ENV, timeout=30)
    shutil.copytree(REPO / "sot_examples" / "lab", work)
    git(work, "init", "-q", "-b", "main")
    git(work, "remote", "add", "origin", f"file://{bare}")
    first = push(work, "lab site")

    source = (f'source: {{url: "file://{bare}", ref: main, poll_interval: 60, poll_jitter: 0}}\n'
              "github: {webhook_secret_file: hook.secret}")
    with single_peer(tmp_path, source, **{"hook.secret": HOOK_SECRET.decode()}) as peer:
        base, log = peer.base, peer.log
        until(lambda: call(f"{base}/healthz")[0] == 200, "the peer")
        # the first fetch at start observes the commit; approval is manual (lab policy)
        until(lambda: revision_state(base, first) == "awaiting_approval", "first revision",
              timeout=60)
        assert call(f"{base}/ipxe?mac={LAB01}")[0] == 503  # nothing applied: nothing served
        _, status_text = call(f"{base}/v1/status", headers={"Authorization": f"Bearer {ADMIN}"})
        source = json.loads(status_text)["boot"]["source"]
        assert source["last_fetched_sha"] == first and source["consecutive_failures"] == 0
        assert source["url"] == f"file://{bare}"

        auth = ["--peer", base, "--token-file", str(tmp_path / "admin.token")]
        approve = subprocess.run([EXE, "approve", first[:12], *auth],
                                 capture_output=True, text=True, timeout=30)
        assert approve.returncode == 0, approve.stdout + approve.stderr
        until(lambda: revision_state(base, first) == "applied", "first applied")
        until(lambda: call(f"{base}/ipxe?mac={LAB01}")[0] == 200, "boot script served")
        assert f"revision {first[:12]}" in call(f"{base}/ipxe?mac={LAB01}")[1]

        edit = work / "sites/lab/cluster-lab.yml"
        edit.write_text(edit.read_text().replace('"52:54:00:18:00:12"', '"52:54:00:18:00:11"'))
        bad = push(work, "duplicate MAC")
        assert hook(base, bad) == 202  # the webhook makes the peer fetch at once
        until(lambda: revision_state(base, bad) == "rejected", "invalid push rejected")
        assert f"revision {first[:12]}" in call(f"{base}/ipxe?mac={LAB01}")[1]

        git(work, "revert", "--no-edit", "HEAD")
        os_file = work / "os/debian-12.yml"
        os_file.write_text(os_file.read_text().replace(
            "d8808aa4ca188560da1e6d749dcb930c87a5fd8b11ebff1f3fa6d728af35203d", "ab" * 32))
        upgrade = push(work, "installer kernel bump")
        assert hook(base, upgrade) == 202
        until(lambda: revision_state(base, upgrade) == "awaiting_approval", "upgrade planned")
        _, text = call(f"{base}/v1/revisions/{upgrade}",
                            headers={"Authorization": f"Bearer {ADMIN}"})
        assert json.loads(text)["summaries"]["planned"]["counts"] == {"reinstall": 3}
        show = subprocess.run([EXE, "show", upgrade[:12], *auth], capture_output=True,
                              text=True, timeout=30)
        assert show.returncode == 0 and "awaiting_approval" in show.stdout, show.stdout
        assert subprocess.run([EXE, "approve", upgrade, *auth], capture_output=True,
                              timeout=30).returncode == 0
        until(lambda: f"revision {upgrade[:12]}" in call(f"{base}/ipxe?mac={LAB01}")[1],
              "upgrade served")
        assert revision_state(base, first) == "superseded"
        # roll back: re-arm the first revision, review its new plan, approve it
        rearm = subprocess.run([EXE, "rearm", first[:12], "--note", "kernel regression",
                                *auth], capture_output=True, text=True, timeout=30)
        assert rearm.returncode == 0, rearm.stdout + rearm.stderr
        until(lambda: revision_state(base, first) == "awaiting_approval", "rollback planned")
        assert subprocess.run([EXE, "approve", first[:12], *auth], capture_output=True,
                              timeout=30).returncode == 0
        until(lambda: f"revision {first[:12]}" in call(f"{base}/ipxe?mac={LAB01}")[1],
              "rolled back")
        bad_sig = call(f"{base}/v1/hooks/github", "POST", b"{}", {
            "X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64})
        assert bad_sig[0] == 401
    text = log.read_text()
    assert ADMIN not in text and HOOK_SECRET.decode() not in text


def test_three_peers_serve_the_revision_the_group_applied(tmp_path: Path) -> None:
    """Each peer mirrors a `git daemon` remote itself (git://, loopback); the leader judges;
    all serve the applied SHA."""
    bare, work = tmp_path / "sot.git", tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True,
                   env=ENV, timeout=30)
    ports = free_tcp_ports(7)
    raft = [f"127.0.0.1:{p}" for p in ports[3:6]]
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", f"--base-path={tmp_path}",
                               "--export-all", "--enable=receive-pack", "--listen=127.0.0.1",
                               f"--port={ports[6]}", str(tmp_path)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # `git` runs git-daemon as its child
    url = f"git://127.0.0.1:{ports[6]}/sot.git"
    try:
        _three_peers(tmp_path, work, url, ports, raft)
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)  # the wrapper and the daemon it started
        daemon.wait(timeout=10)


def _three_peers(tmp_path: Path, work: Path, url: str, ports: list[int],
                 raft: list[str]) -> None:
    shutil.copytree(REPO / "sot_examples" / "lab", work)
    git(work, "init", "-q", "-b", "main")
    git(work, "remote", "add", "origin", url)
    git(work, "add", "-A")
    git(work, "commit", "-qm", "lab site")
    first = git(work, "rev-parse", "HEAD")
    deadline = time.monotonic() + 15
    while subprocess.run(["git", "-C", str(work), "push", "-q", "origin", "main"], env=ENV,
                         capture_output=True, timeout=30).returncode != 0:
        assert time.monotonic() < deadline, "git daemon did not come up"
        time.sleep(0.2)  # the daemon takes a moment to listen
    write_secrets(tmp_path)
    source = f'source: {{url: "{url}", ref: main, poll_interval: 1, poll_jitter: 0}}'
    peers: list[PeerProcess] = []
    try:
        for i in range(3):
            config = write_config(tmp_path, source, name=f"peer{i}.yaml", index=i,
                                  http_port=ports[i], raft=raft)
            peers.append(start_peer(config, ports[i]))
        bases = [peer.base for peer in peers]
        until(lambda: all(revision_state(b, first) == "awaiting_approval" for b in bases),
              "the group to plan the first commit", timeout=60)
        status, _ = call(f"{bases[2]}/v1/revisions/{first}/approve", "POST", b"{}", {
            "Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
        assert status == 200
        for base in bases:  # every peer, from its own mirror, serves the applied revision
            until(lambda base=base: f"revision {first[:12]}" in
                  call(f"{base}/ipxe?mac={LAB01}")[1], f"{base} serving", timeout=30)
    finally:
        for peer in peers:
            peer.stop()
