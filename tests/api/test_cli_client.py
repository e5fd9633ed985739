"""Two mistakes mypy found in the CLI's client, each held by a test: `at()` (follow the
leader for a power action) was a property that took an argument, and `has_token` a method
read as a property, so the doctor never said first that no token was given."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from peer_group import REPO, PeerGroup, cli_command

from appliance.cli.client import PeerClient


def test_at_keeps_the_credentials_for_another_peer() -> None:
    client = PeerClient("http://198.18.0.1:8080/", "s3cret-token", timeout=7.0)
    other = client.at("http://198.18.0.2:8080")
    assert other.url == "http://198.18.0.2:8080" and other.timeout == 7.0
    assert other.has_token is True and "s3cret" not in repr(other)
    assert PeerClient("http://198.18.0.1:8080", None).has_token is False


@pytest.fixture
def peer_of_one(tmp_path: Path) -> Iterator[PeerGroup]:
    group = PeerGroup(tmp_path, 1)
    group.start_all()
    try:
        yield group
    finally:
        group.stop_all()


@pytest.mark.slow
def test_doctor_without_a_token_says_so(peer_of_one: PeerGroup) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VAQ_TOKEN", "VAQ_PEER")}
    out = subprocess.run([*cli_command(), "doctor", "--peer", peer_of_one.peers[0].url],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"^FAIL\s+token: none given \(--token-file FILE or \$VAQ_TOKEN\)",
                     out.stdout, re.M), out.stdout
