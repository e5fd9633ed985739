"""A real one-peer Raft group, in process, for the pipeline tests."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import pytest

from appliance.cluster import Cluster, ClusterSettings


@pytest.fixture
async def cluster(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = tmp_path / "raft.password"
    password.write_text(secrets.token_urlsafe(24))
    password.chmod(0o600)
    address = f"127.0.0.1:{port}"
    node = Cluster(ClusterSettings(self_address=address, peers=(address,),
                                   data_dir=tmp_path / "raft", password_file=password))
    await node.start()
    await node.wait_for_leader(timeout=10)
    yield node
    await node.stop()
