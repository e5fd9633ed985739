"""A `vaq-peer serve` restarted on the same data directory (after a crash, then after a clean
stop) announces itself at every start, sometimes before its replica has caught up with its
own journal; the replicated journal still holds exactly one `peer.added` for it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tools.rigs.peer_proc import (
    READER,
    PeerProcess,
    call,
    free_tcp_ports,
    start_peer,
    write_config,
    write_secrets,
)

REPO = Path(__file__).resolve().parents[2]
ANNOUNCE_PERIOD_S = 5  # appliance/peer.py re-checks its announcement this often
pytestmark = pytest.mark.slow


def _events(base: str) -> list[dict]:
    status, text = call(f"{base}/v1/events?after=0&limit=1000",
                        headers={"Authorization": f"Bearer {READER}"})
    assert status == 200, text
    return json.loads(text)["events"]


def _serve_until_announced(config: Path, port: int, address: str,
                           settle: float) -> PeerProcess:
    peer = start_peer(config, port)
    deadline = time.monotonic() + 60
    while not any(e["kind"] == "peer.added" for e in
                  (_events(peer.base) if call(f"{peer.base}/healthz")[0] == 200 else [])):
        assert peer.proc.poll() is None and time.monotonic() < deadline, \
            peer.log.read_text()[-3000:]
        time.sleep(0.2)
    status, text = call(f"{peer.base}/v1/peers", headers={"Authorization": f"Bearer {READER}"})
    assert status == 200 and address in text, text
    time.sleep(settle)
    return peer


def test_restarts_journal_one_peer_added(tmp_path: Path) -> None:
    sot = tmp_path / "sot"
    shutil.copytree(REPO / "sot_examples" / "lab", sot)
    http_port, raft_port = free_tcp_ports(2)
    address = f"127.0.0.1:{raft_port}"
    write_secrets(tmp_path)
    config = write_config(tmp_path, f"sot: {{path: {sot}}}", http_port=http_port,
                          raft=[address])
    # first start killed (as a crash would) before its commit index reached disk; then
    # two starts stopped cleanly after their announcement loop ran at least twice
    for crash in (True, False, False):
        peer = _serve_until_announced(config, http_port, address,
                                      settle=0.0 if crash else ANNOUNCE_PERIOD_S + 1)
        try:
            added = [e for e in _events(peer.base) if e["kind"] == "peer.added"]
        finally:
            if crash:
                peer.proc.kill()
            peer.stop()
        assert [e["message"] for e in added] == [address], added
