"""A console split by a leader change, read whole from any peer: the old leader recorded the
start of the stage, the new one the rest; `vaq-peer console` asked of the third peer shows
both parts in order, each under the peer that recorded it, and `--follow` goes on with what
the new leader appends. The parts are written with the recorder's own log class
(ConsoleLog: text plus session notes), on the peers that led when each was recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from peer_group import PeerGroup, cli_command

from appliance.power.console import ConsoleLog

HOST = "db-01"


def console_log(group: PeerGroup, index: int) -> ConsoleLog:
    return ConsoleLog(group.root / f"data{index}" / "consoles" / f"{HOST}.log",
                      max_bytes=1 << 20, keep=1)


def test_console_split_by_a_leader_change_reads_whole_from_any_peer(tmp_path: Path) -> None:
    (tmp_path / "bmc.yaml").write_text("kinds-ipmi: {user: admin, password: pw-0123456789}\n"
                                       "kinds-redfish: {user: admin, password: pw-012345678}\n")
    (tmp_path / "bmc.yaml").chmod(0o600)
    group = PeerGroup(tmp_path, 3, extra=f"bmc: {{secrets_file: {tmp_path / 'bmc.yaml'}}}")
    group.start_all()
    try:
        group.register_api_urls()
        group.wait_settled()
        old = group.wait_leader()
        first = console_log(group, old.index)
        first.begin(1, 0)
        first.append(b"Linux version 6.1.0-28-amd64\nLoading installer components")
        os.killpg(old.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            new = group.wait_leader([p for p in group.peers if p is not old], timeout=60)
        finally:
            os.killpg(old.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        second = console_log(group, new.index)
        second.begin(1, 0)
        second.append(b"Installing the base system\n")
        third = next(p for p in group.peers if p not in (old, new))
        auth = ["--peer", third.url, "--token-file", str(tmp_path / "admin.token")]
        shown = subprocess.run([*cli_command(), "console", HOST, *auth], capture_output=True,
                               text=True, timeout=60)
        assert shown.returncode == 0, shown
        lines = shown.stdout.splitlines()
        assert lines[0].startswith(f"--- vaquero: console recorded by peer-{old.index + 1}: "
                                   "stage 1 attempt 0, from "), lines
        assert lines[1:3] == ["Linux version 6.1.0-28-amd64", "Loading installer components"]
        assert lines[3].startswith(f"--- vaquero: console recorded by peer-{new.index + 1}: "
                                   "stage 1 attempt 0, from "), lines
        assert lines[4:] == ["Installing the base system"], lines
        # --follow: what the new leader appends comes once, after what was there
        follow = subprocess.Popen([*cli_command(), "console", HOST, "--follow", "--for", "8",
                                   *auth], stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        second.append(b"Installation complete\n")
        out, _ = follow.communicate(timeout=60)
        assert out.endswith("Installing the base system\nInstallation complete\n"), out
        assert out.count("Installation complete") == 1 and out.count("Linux version") == 1
        # a peer's own part, as the others ask for it
        local = group.call(third, "GET", f"/v1/hosts/{HOST}/console?local=1")
        assert local.status == 404, local
        mine = group.call(new, "GET", f"/v1/hosts/{HOST}/console?local=1").body
        assert [r["text"] for r in mine["runs"]] == [
            "Installing the base system\nInstallation complete\n"]
        # a long part (an installer's whole log) crosses from peer to peer in many reads
        second.append(b"".join(b"installer line %06d\n" % i for i in range(20_000)))
        whole = group.call(third, "GET", f"/v1/hosts/{HOST}/console?tail=1048576").body
        assert whole["peers"] == sorted([f"peer-{old.index + 1}", f"peer-{new.index + 1}"])
        assert "Linux version" in whole["text"], whole["text"][:300]
        assert whole["text"].endswith("installer line 019999\n"), whole["text"][-300:]
    finally:
        group.stop_all()
