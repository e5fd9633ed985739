"""The start-up check as an operator meets it: `vaq-peer serve` on a config with several
problems prints all of them, each with file:line, exits 2 and starts nothing; a peer whose
start fails anyway (here: called without the check) stops what it had started."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.peer import Peer, PeerError

VAQ = str(Path(sys.executable).parent / "vaq-peer")
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(root: Path, raft_port: int, bmc: str = "bmc.yml") -> Path:
    (root / "raft.key").write_text("cmFmdC1rZXktZm9yLXRlc3RzLTAxMjM=\n")
    (root / "raft.key").chmod(0o600)
    config = root / "peer.yaml"
    config.write_text(f"""site: lab
peer: peer-1
data_dir: data
interface: lo
address: 127.0.0.1
sot: {{path: {REPO / 'sot_examples/lab'}}}
token_secret_file: phone-home.key
bmc: {{secrets_file: {bmc}}}
http: {{listen: 127.0.0.1, port: {_free_port()}}}
tftp: {{enabled: false}}
dhcp: {{enabled: false}}
prefetch_artifacts: false
raft: {{address: "127.0.0.1:{raft_port}", password_file: raft.key}}
api:
  tokens:
    - {{name: ops, role: admin, file: ops.token}}
""")
    return config


def test_every_problem_at_once_with_file_and_line(tmp_path: Path) -> None:
    config = _config(tmp_path, _free_port())
    (tmp_path / "ops.token").write_text("short\n")
    out = subprocess.run([VAQ, "serve", "--config", str(config)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out
    lines = out.stderr.splitlines()
    assert any(line.startswith(f"{config}:7: the phone-home token key: ") and
               "phone-home.key does not exist" in line for line in lines), lines
    assert any(line.startswith(f"{config}:8: the BMC secrets file: ") and "bmc.yml does not "
               "exist" in line for line in lines), lines
    assert any(line.startswith(f"{config}:16: API token 'ops': ") and "holds 5 byte(s)" in line
               for line in lines), lines
    assert lines[-1].endswith("3 problem(s) in " + str(config) + "; nothing was started")
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


def test_check_only_and_warnings(tmp_path: Path) -> None:
    config = _config(tmp_path, _free_port())
    for name in ("phone-home.key", "ops.token"):
        (tmp_path / name).write_text("c2VjcmV0LXZhbHVlLWZvci10ZXN0cw==\n")
    (tmp_path / "bmc.yml").write_text("lab-ipmi: {user: admin, password: pw}\n")
    (tmp_path / "bmc.yml").chmod(0o600)
    out = subprocess.run([VAQ, "serve", "--check", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out
    assert "ok (2 warning(s))" in out.stdout, out.stdout
    assert f"{config}:7: warning: the phone-home token key: " in out.stderr, out.stderr


def test_a_failed_start_leaves_no_raft_node_behind(tmp_path: Path) -> None:
    """The BMC secrets file is unusable (a bad entry): Peer.start raises PeerError, not the
    loader's exception, and the Raft port it had bound is free again."""
    raft_port = _free_port()
    config = _config(tmp_path, raft_port)
    for name in ("phone-home.key", "ops.token"):
        (tmp_path / name).write_text("c2VjcmV0LXZhbHVlLWZvci10ZXN0cw==\n")
    (tmp_path / "bmc.yml").write_text("lab-ipmi: {password: no-user}\n")
    peer = Peer(load_config(config))

    async def start() -> None:
        await peer.start()

    with pytest.raises(PeerError, match=r"bmc\.yml"):
        asyncio.run(start())
    assert peer.cluster is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", raft_port))  # free: the node was stopped
    peer.local_progress.close()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root to run the check as another user")
def test_a_secret_behind_a_closed_directory_is_a_finding(tmp_path: Path) -> None:
    """What docs/install.md's Debian host path met: secrets/ made 0700 by root, the check run
    as the peer's user. A finding with the file's line, not a PermissionError traceback."""
    root = Path(tempfile.mkdtemp(prefix="vaq-check-", dir="/tmp"))
    try:
        root.chmod(0o755)
        config = _config(root, _free_port(), bmc="secrets/bmc.yml")
        (root / "secrets").mkdir(mode=0o700)
        (root / "secrets/bmc.yml").write_text("lab-ipmi: {user: admin, password: pw}\n")
        for name in ("phone-home.key", "ops.token", "raft.key"):
            (root / name).write_text("c2VjcmV0LXZhbHVlLWZvci10ZXN0cw==\n")
            (root / name).chmod(0o644)
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              VAQ, "serve", "--check", "--config", str(config)],
                             capture_output=True, text=True, timeout=60)
        assert "Traceback" not in out.stderr, out.stderr
        assert out.returncode == 2, out
        assert f"{config}:8: the BMC secrets file: {root}/secrets/bmc.yml cannot be reached " \
               "by this user (Permission denied)" in out.stderr, out.stderr
    finally:
        shutil.rmtree(root)
