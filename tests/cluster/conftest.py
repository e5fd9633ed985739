"""Fixtures for the cluster tests: a Raft password file, rig node processes that are always
killed at teardown, and a small network-namespace lab (198.18.0.0/24 behind one bridge)
that is always removed, also when a test fails."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.rigs.raft_node import RigNode, free_ports, stop_all_signal


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "raft.password"
    path.write_text(secrets.token_urlsafe(24) + "\n")
    path.chmod(0o600)
    return path


class RigFactory:
    def __init__(self, root: Path, password_file: Path) -> None:
        self.root = root
        self.password_file = password_file
        self.nodes: list[RigNode] = []

    def make(self, n: int, **kw) -> list[RigNode]:
        addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
        return [self.node(a, addrs, **kw) for a in addrs]

    def node(self, address: str, peers: list[str], **kw) -> RigNode:
        name = address.replace(":", "_").replace(".", "-")
        node = RigNode(address, peers, self.root / name, self.password_file, **kw)
        self.nodes.append(node)
        return node


@pytest.fixture
async def rigs(tmp_path: Path, password_file: Path):
    factory = RigFactory(tmp_path / "nodes", password_file)
    try:
        yield factory
    finally:
        stop_all_signal(factory.nodes)
        for node in factory.nodes:
            with contextlib.suppress(Exception):
                await node.kill()


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=10)


class NetnsLab:
    """A hub namespace with a bridge, and one namespace per node wired to it by a veth
    pair. cut()/heal() take a node's link down and up at both ends: a real partition
    (its sockets stay open, packets stop) rather than a paused process."""

    def __init__(self, n: int) -> None:
        tag = f"{os.getpid() % 100000}"
        self.hub = f"vqrh{tag}"
        self.names = [f"vqr{tag}n{i}" for i in range(n)]
        self.addresses = [f"198.18.0.{i + 1}" for i in range(n)]
        self._hub_ifs = [f"vqr{tag}h{i}" for i in range(n)]

    def create(self) -> None:
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for ns, hub_if, addr in zip(self.names, self._hub_ifs, self.addresses, strict=True):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", hub_if,
                "netns", self.hub)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", self.hub, "link", "set", hub_if, "master", "br0")
            _ip("-n", self.hub, "link", "set", hub_if, "up")

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[i]]

    def cut(self, i: int) -> None:
        _ip("-n", self.names[i], "link", "set", "eth0", "down")
        _ip("-n", self.hub, "link", "set", self._hub_ifs[i], "down")

    def heal(self, i: int) -> None:
        _ip("-n", self.hub, "link", "set", self._hub_ifs[i], "up")
        _ip("-n", self.names[i], "link", "set", "eth0", "up")

    def destroy(self) -> None:
        for ns in [*self.names, self.hub]:
            _ip("netns", "del", ns, check=False)


@pytest.fixture
def netns_lab() -> Iterator[NetnsLab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    lab = NetnsLab(3)
    try:
        lab.create()
        yield lab
    finally:
        lab.destroy()
