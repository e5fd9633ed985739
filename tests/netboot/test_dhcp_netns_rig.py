"""The namespace rig the DHCP tests (and the QEMU boot tests) stand on: it must always clean up."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from tools.rigs.netns import NETNS_DIR, NetnsRig, sweep_stale

pytestmark = pytest.mark.root


def namespaces() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else set()


def test_everything_is_removed_when_the_block_fails() -> None:
    created: list[str] = []
    proc = None
    with pytest.raises(RuntimeError, match="test body failed"), NetnsRig() as rig:
        a, b = rig.netns("a"), rig.netns("b")
        created += [a.name, b.name]
        rig.bridge(a, "br0", "198.18.0.1/24")
        rig.veth(a, b, bridge="br0", cidr_b="198.18.0.2/24", mac_b="52:54:00:aa:bb:cc")
        assert "52:54:00:aa:bb:cc" in b.run("ip", "link", "show", "eth0").stdout
        with (
            a.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
            b.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
        ):
            rx.bind(("198.18.0.1", 0))
            rx.settimeout(10)
            tx.sendto(b"across the bridge", rx.getsockname())
            assert rx.recvfrom(64) == (b"across the bridge", (("198.18.0.2", tx.getsockname()[1])))
        proc = b.popen(["sleep", "600"])
        raise RuntimeError("test body failed")
    assert not set(created) & namespaces()
    assert proc is not None and proc.poll() is not None  # killed, not left running


def test_sockets_and_loops_live_in_the_namespace() -> None:
    with NetnsRig() as rig:
        ns = rig.netns("s")
        rig.bridge(ns, "br0", "198.18.0.1/24")
        sock = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.bind(("198.18.0.1", 0))  # that address exists only inside the namespace

        async def bind_in_loop() -> int:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("198.18.0.1", 0))
                return s.getsockname()[1]

        with ns.loop_thread() as lt:
            assert lt.run(bind_in_loop()) > 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outside, pytest.raises(OSError):
            outside.bind(("198.18.0.1", 0))


def test_sweep_removes_what_a_dead_run_left() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"vq-{dead.pid}-1-stale"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in sweep_stale()
        assert name not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
