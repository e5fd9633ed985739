"""`vaq-peer init` as an operator runs it for a site of three: the first peer's secrets are
new and random (mode 600), copied to the second, whose init keeps them; nothing is ever
overwritten; the configs name the site's peers as the Raft group."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

from appliance.config import load_config

VAQ = str(Path(sys.executable).parent / "vaq-peer")
REPO = Path(__file__).resolve().parents[1]


def init(directory: Path, peer: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VAQ, "init", "--sot", str(REPO / "sot_examples/lab"), "--site", "lab",
                           "--peer", peer, "--interface", "lo", "--dir", str(directory),
                           "--data-dir", str(directory / "data")],
                          capture_output=True, text=True, timeout=60)


def test_init_a_site_of_three(tmp_path: Path) -> None:
    first = init(tmp_path / "p1", "peer-1")
    assert first.returncode == 0, first
    secrets = tmp_path / "p1" / "secrets"
    for name in ("phone-home.key", "raft.key", "ops.token"):
        path = secrets / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_text().strip()) >= 40
        assert f"  {path}" in first.stdout.split("Copy these")[1], first.stdout
    assert "peer-2 (198.18.0.3)" in first.stdout
    assert "BMC credentials lab-ipmi" in first.stdout
    config = load_config(tmp_path / "p1" / "peer.yaml")
    assert config.raft.peers == ["198.18.0.2:7650", "198.18.0.3:7650", "198.18.0.4:7650"]
    assert config.http.port == 8080  # the site's netboot.http_port, explicit
    # the operator copies the shared secrets to peer-2; its init keeps them
    (tmp_path / "p2" / "secrets").mkdir(parents=True)
    for path in secrets.iterdir():
        shutil.copy2(path, tmp_path / "p2" / "secrets" / path.name)
    second = init(tmp_path / "p2", "peer-2")
    assert second.returncode == 0 and second.stdout.count("kept (exists)") == 3, second
    for path in secrets.iterdir():
        assert (tmp_path / "p2" / "secrets" / path.name).read_bytes() == path.read_bytes()
    # never overwritten: a second init of the same directory is refused
    before = (secrets / "raft.key").read_bytes()
    again = init(tmp_path / "p1", "peer-1")
    assert again.returncode == 2 and "exists; not overwritten" in again.stderr, again
    assert (secrets / "raft.key").read_bytes() == before
    unknown = init(tmp_path / "p9", "peer-9")
    assert unknown.returncode == 2 and "not listed in sites/lab/env.yml" in unknown.stderr
