"""The `vaq-peer` API commands, run as a real process against 3 real `vaq-peer serve`
processes on loopback: output, exit codes, live events, a cut-off peer, doctor."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peer_group import ADMIN, READER, REPO, PeerGroup, PeerProc, cli_command, free_ports

pytestmark = pytest.mark.slow

COMMAND = cli_command()


def vaq(peer: PeerProc | str, *args: str, token: str | None = ADMIN,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VAQ_TOKEN", "VAQ_PEER")}
    if token is not None:
        env["VAQ_TOKEN"] = token
    url = peer if isinstance(peer, str) else peer.url
    return subprocess.run([*COMMAND, *args, "--peer", url], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerGroup]:
    """One healthy group for the tests that leave it healthy."""
    g = PeerGroup(tmp_path_factory.mktemp("cli_group"), 3)
    g.start_all()
    try:
        g.register_api_urls()
        g.wait_settled()  # every peer knows the leader: the tests compare their answers
        yield g
    finally:
        g.stop_all()


def test_status_peers_leader_human_and_json(group: PeerGroup) -> None:
    peer = group.peers[0]
    leader = group.call(peer, "GET", "/v1/leader").body
    out = vaq(peer, "status")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^peer\s+peer-1\s+site kinds", out.stdout, re.M), out.stdout
    assert re.search(rf"^leader\s+{re.escape(leader['leader'])}$", out.stdout, re.M)
    assert re.search(r"^quorum\s+yes\s+\(3 of 3 members", out.stdout, re.M), out.stdout
    data = json.loads(vaq(peer, "status", "--json").stdout)
    assert data["peer"] == "peer-1" and data["raft"]["leader"] == leader["leader"]
    assert len(data["raft"]["members"]) == 3

    out = vaq(peer, "peers")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ADDRESS", "NAME", "MEMBER", "CONNECTED", "LEADER", "API"]
    for p in group.peers:
        row = next(line for line in lines if line.startswith(p.raft))
        cells = row.split()
        assert f"peer-{p.index + 1}" in cells and p.url in cells, row
        assert (cells[1] == "*") == (p is peer), row
        assert ("yes" if p.raft == leader["leader"] else "no") == cells[-2], row
    listed = json.loads(vaq(peer, "peers", "--json").stdout)["peers"]
    assert sorted(p["address"] for p in listed) == sorted(p.raft for p in group.peers)

    out = vaq(peer, "leader")
    assert out.returncode == 0 and out.stdout.startswith(f"{leader['leader']}  term "), out
    assert json.loads(vaq(peer, "leader", "--json").stdout)["leader"] == leader["leader"]


def test_hosts_after_a_phone_home(group: PeerGroup) -> None:
    peer = group.peers[1]
    # The install config of rk-01 holds its phone-home URL, on the site's address: call the
    # same path on this loopback peer, as the installed machine would at the end.
    config = group.call(peer, "GET", "/boot/rk-01/1/config", token=None).body["text"]
    path = re.search(r"/phone-home/rk-01/1/[0-9a-f]+", config).group(0)
    assert group.call(peer, "POST", path, token=None).status == 200
    deadline = time.monotonic() + 15
    while not group.call(peer, "GET", "/v1/hosts").body.get("hosts"):
        assert time.monotonic() < deadline, "the phone home never reached the host records"
        time.sleep(0.1)
    out = vaq(peer, "hosts")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("rk-01 "))
    assert row.split()[1:3] == ["1", "done"], row
    assert json.loads(vaq(peer, "hosts", "--json").stdout)["hosts"][0]["name"] == "rk-01"
    out = vaq(peer, "host", "rk-01")
    assert out.returncode == 0, out.stderr
    assert "  state: done" in out.stdout and "  workflow: rocky" in out.stdout, out.stdout
    missing = vaq(peer, "host", "no-such-host")
    assert missing.returncode == 1 and "no host 'no-such-host'" in missing.stderr, missing


def test_events_after_notes_written_through_the_api(group: PeerGroup) -> None:
    peer = group.peers[2]
    last = group.call(peer, "GET", "/v1/events?limit=1").body["last_seq"]
    for i in range(3):
        assert group.call(group.peers[0], "POST", "/v1/events",
                          {"message": f"cli-note-{i}", "host": "rk-01"}).status == 201
    deadline = time.monotonic() + 10  # written on peer 1, applied on peer 3 a beat later
    while group.call(peer, "GET", "/v1/events?limit=1").body["last_seq"] < last + 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    out = vaq(peer, "events", "--after", str(last))
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stdout.splitlines() if "cli-note-" in line]
    assert [re.search(r"cli-note-\d", n).group(0) for n in notes] == \
        ["cli-note-0", "cli-note-1", "cli-note-2"]
    assert all(" note " in n and "host=rk-01" in n for n in notes), notes
    page = json.loads(vaq(peer, "events", "--after", str(last), "--limit", "2", "--json").stdout)
    assert [e["message"] for e in page["events"]] == ["cli-note-0", "cli-note-1"]
    out = vaq(peer, "events", "--after", str(last), "--limit", "2")
    assert f"(more: --after {last + 2})" in out.stdout, out.stdout


def _read_line(proc: subprocess.Popen, deadline: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                return proc.stdout.readline()  # type: ignore[union-attr]
        return ""
    finally:
        sel.close()


def test_events_follow_prints_a_note_written_meanwhile(group: PeerGroup) -> None:
    peer = group.peers[0]
    first = group.call(peer, "POST", "/v1/events", {"message": "follow-first"}).body["seq"]
    env = dict(os.environ, VAQ_TOKEN=ADMIN)
    proc = subprocess.Popen([*COMMAND, "events", "--follow", "--for", "3", "--after",
                             str(first - 1), "--peer", peer.url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        # The first line proves the stream is open; the second note is written after it.
        line = _read_line(proc, time.monotonic() + 15)
        assert "follow-first" in line, (line, proc.stderr)
        assert group.call(peer, "POST", "/v1/events", {"message": "follow-live"}).status == 201
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, err
    assert re.search(r"\bnote\s+follow-live\b", out), out

    # Without --for it follows until Ctrl-C, which ends it with exit code 0.
    proc = subprocess.Popen([*COMMAND, "events", "-f", "--after", str(first - 1), "--peer",
                             peer.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    try:
        assert "follow-first" in _read_line(proc, time.monotonic() + 15)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, err


def test_rollout_follow_waits_for_a_first_applied_revision(group: PeerGroup) -> None:
    """Right after an approval the peer asked may not have applied the revision yet: a plain
    `rollout` says so and fails, `rollout --follow` says so once and keeps waiting (here for
    --for seconds, then fails: nothing was ever applied in this group)."""
    peer = group.peers[0]
    out = vaq(peer, "rollout")
    assert out.returncode == 1 and "no revision has been applied yet" in out.stderr, out
    out = vaq(peer, "rollout", "--follow", "--for", "3", "--interval", "0.5")
    assert out.returncode == 1, out
    assert out.stdout.count("no revision has been applied yet: waiting for one") == 1, out
    assert "no revision has been applied yet" in out.stderr, out


def test_approve_and_show_of_unknown_revisions(group: PeerGroup, tmp_path: Path) -> None:
    peer = group.peers[0]
    unknown = "ab" * 20
    out = vaq(peer, "approve", unknown, "--note", "looks fine")
    assert out.returncode == 1, out
    assert f"revision {unknown} was never observed" in out.stderr
    out = vaq(peer, "approve", "abcd")
    assert out.returncode == 1 and "no revision known" in out.stderr and "abcd" in out.stderr
    out = vaq(peer, "show", "abcd1234")
    assert out.returncode == 1 and "no revision known" in out.stderr, out
    out = vaq(peer, "approve", "not-a-sha")
    assert out.returncode == 2 and "not a revision" in out.stderr, out
    reader = tmp_path / "reader.token"
    reader.write_text(READER + "\n")
    out = vaq(peer, "approve", unknown, "--token-file", str(reader), token=None)
    assert out.returncode == 4 and "may only read" in out.stderr, out
    assert vaq(peer, "revisions", "--token-file", str(reader), token=None).returncode == 0


def test_missing_or_wrong_token_exits_4_without_showing_it(group: PeerGroup) -> None:
    peer = group.peers[0]
    out = vaq(peer, "status", token=None)
    assert out.returncode == 4 and "--token-file" in out.stderr, out
    wrong = "wrong-token-0123456789abcdef"
    out = vaq(peer, "hosts", token=wrong)
    assert out.returncode == 4 and "not valid" in out.stderr, out
    assert wrong not in out.stderr + out.stdout
    out = vaq(peer, "doctor", token=wrong)
    assert out.returncode == 1 and re.search(r"^FAIL\s+token", out.stdout, re.M), out.stdout
    assert wrong not in out.stderr + out.stdout


def test_wrong_peer_url_exits_3_naming_url_and_reason(group: PeerGroup) -> None:
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    out = vaq(url, "status")
    assert out.returncode == 3, out
    assert url in out.stderr and "connection refused" in out.stderr, out.stderr
    assert ADMIN not in out.stderr


def test_doctor_passes_on_a_healthy_group(group: PeerGroup) -> None:
    group.wait_settled()
    out = vaq(group.peers[1], "doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout
    for p in group.peers:
        if p.index != 1:
            assert re.search(rf"^PASS\s+peer peer-{p.index + 1} .*answers /healthz", out.stdout,
                             re.M), out.stdout
        assert re.search(rf"^PASS\s+clock peer-{p.index + 1}:", out.stdout, re.M), out.stdout
    assert re.search(r"^PASS\s+leader: all 3 peers asked agree", out.stdout, re.M)
    data = json.loads(vaq(group.peers[1], "doctor", "--json").stdout)
    assert data["ok"] is True and data["counts"]["FAIL"] == 0


def test_cut_off_peer_refuses_writes_with_5_and_still_answers_status(group3: PeerGroup) -> None:
    group3.wait_leader()
    lonely, *others = group3.peers
    for peer in others:
        group3.kill(peer, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 20
        while group3.call(lonely, "GET", "/v1/status").body["raft"]["has_quorum"]:
            assert time.monotonic() < deadline, "the peer never noticed it lost its quorum"
            time.sleep(0.1)
        out = vaq(lonely, "note", "while cut off")
        assert out.returncode == 5, out
        assert "reads still work" in out.stderr and "another peer" in out.stderr, out.stderr
        assert vaq(lonely, "approve", "cd" * 20).returncode == 5
        out = vaq(lonely, "status")  # the status is printed, and the exit says: no quorum
        assert out.returncode == 5 and "NO QUORUM" in out.stdout, out
        assert "has no quorum" in out.stderr, out
        assert vaq(lonely, "events").returncode == 0
        # The machine phones home to the cut-off peer: it serves what comes next, and says so.
        config = group3.call(lonely, "GET", "/boot/rk-01/1/config", token=None).body["text"]
        path = re.search(r"/phone-home/rk-01/1/[0-9a-f]+", config).group(0)
        assert group3.call(lonely, "POST", path, token=None).status == 200
        out = vaq(lonely, "hosts")
        row = next(line for line in out.stdout.splitlines() if line.startswith("rk-01 "))
        assert "(+1 here)" in row and "not yet recorded by the group" in out.stdout, out.stdout
    finally:
        for peer in others:
            group3.kill(peer, signal.SIGCONT)


def test_doctor_fails_naming_a_killed_peer(group3: PeerGroup) -> None:
    group3.register_api_urls()
    group3.wait_settled()
    healthy = vaq(group3.peers[0], "doctor")
    assert healthy.returncode == 0, healthy.stdout
    group3.kill(group3.peers[2])
    out = vaq(group3.peers[0], "doctor")
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"^FAIL\s+peer peer-3 .*unreachable at http://127\.0\.0\.1:\d+",
                     out.stdout, re.M), out.stdout
    assert re.search(r"^PASS\s+peer peer-2 ", out.stdout, re.M), out.stdout
