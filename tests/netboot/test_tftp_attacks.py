"""Attacks on the TFTP server from the boot network, on loopback: one client address asking
for every slot with a 255 s timeout it never acknowledges, and a flood of refused requests.
Each asserts the attack fails and a real client (the tftp-hpa client, another address) still
fetches its file."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
import structlog

from appliance.netboot.tftp import TftpServer

ATTACKER = "127.0.0.2"  # all of 127/8 is loopback: another client address, no namespace
MACHINE = "127.0.0.1"  # what the tftp client's packets to 127.0.0.1 come from


def rrq(name: str, **options: object) -> bytes:
    body = name.encode() + b"\0octet\0" + b"".join(f"{k}\0{v}\0".encode()
                                                   for k, v in options.items())
    return b"\x00\x01" + body


async def fetch_as_machine(port: int, tmp_path: Path) -> bytes:
    out = tmp_path / "got.kpxe"
    proc = await asyncio.create_subprocess_exec(
        "tftp", "-m", "binary", MACHINE, str(port), "-c", "get",
        "undionly.kpxe", str(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    await asyncio.wait_for(proc.communicate(), 60)
    return out.read_bytes() if out.exists() else b""


@pytest.mark.skipif(shutil.which("tftp") is None, reason="tftp-hpa client not installed")
async def test_one_client_cannot_take_every_slot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    payload = bytes(range(256)) * 400  # 100 KiB
    (root / "undionly.kpxe").write_bytes(payload)
    srv = TftpServer(roots=[root], host="0.0.0.0", port=0, max_transfers=64)
    await srv.start()
    socks = []
    try:
        # 200 read requests from one address (each from its own port), timeout=255, never
        # acknowledged: the per-client cap holds them to 8; the server keeps its own timer
        for _ in range(200):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ATTACKER, 0))
            s.setblocking(False)
            s.sendto(rrq("undionly.kpxe", timeout=255, blksize=1408), (MACHINE, srv.port))
            socks.append(s)
        await asyncio.sleep(0.5)
        assert srv.counters.active == srv.max_per_client == 8
        loop = asyncio.get_running_loop()
        answer, _ = await asyncio.wait_for(loop.sock_recvfrom(socks[0], 2048), 10)
        assert struct.unpack("!H", answer[:2])[0] == 6  # OACK
        assert b"timeout" not in answer  # 255 s not acknowledged: the server's 1 s timer runs
        assert srv.counters.requests_refused == 192
        # a real machine, from another address, is served at once
        assert await fetch_as_machine(srv.port, tmp_path) == payload
        # the attacker's transfers die by the server's own clock (1 s x 5 retries), not 255 s
        for _ in range(200):
            if srv.counters.active == 0:
                break
            await asyncio.sleep(0.1)
        assert srv.counters.active == 0 and srv._per_client == {}
    finally:
        for s in socks:
            s.close()
        await srv.close()


async def test_refused_requests_are_logged_as_digests(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "undionly.kpxe").write_bytes(b"x" * 1000)
    srv = TftpServer(roots=[root], host="0.0.0.0", port=0)
    await srv.start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ATTACKER, 0))
    try:
        with structlog.testing.capture_logs() as logs:
            for i in range(2000):
                s.sendto(rrq(f"missing-{i}-" + "A" * 3000), (MACHINE, srv.port))
                if i % 200 == 0:
                    await asyncio.sleep(0.01)  # let the server drain its socket
            for _ in range(100):
                if srv.counters.requests_refused >= 1500:
                    break
                await asyncio.sleep(0.05)
            srv.refusals.flush()
        refused = srv.counters.requests_refused
        assert refused >= 1500  # the kernel may drop some of a burst; most arrive
        lines = [e for e in logs if e["event"].startswith("tftp.request.refused")]
        assert len(lines) <= 6, len(lines)  # 5 lines then one digest, per minute
        assert lines[-1]["event"] == "tftp.request.refused.digest"
        assert lines[-1]["count"] == refused
        assert all(len(e.get("file", "")) <= 128 for e in lines)
        # and a real machine is still served
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.bind((MACHINE, 0))
        c.setblocking(False)
        c.sendto(rrq("undionly.kpxe"), (MACHINE, srv.port))
        data, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(c, 2048), 10)
        assert data[:4] == b"\x00\x03\x00\x01"
        c.close()
    finally:
        s.close()
        await srv.close()
