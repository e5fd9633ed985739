"""The TFTP server on loopback, driven by a raw-socket client that checks every packet.

The server runs on the test's event loop (port 0), so counters are read directly. Waits are
bounded by RECV_TIMEOUT; no test asserts a duration.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from appliance.netboot.tftp import TftpServer

RECV_TIMEOUT = 10.0
HOST = "127.0.0.1"


class RawClient:
    """One client UDP port; remembers the server's transfer port from the first reply."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.tid: tuple[str, int] | None = None

    def close(self) -> None:
        self.sock.close()

    def rrq(self, port: int, name: str, mode: str = "octet", host: str = HOST,
            **options: object) -> None:
        body = name.encode() + b"\0" + mode.encode() + b"\0"
        body += b"".join(f"{k}\0{v}\0".encode() for k, v in options.items())
        self.sock.sendto(b"\x00\x01" + body, (host, port))

    async def recv(self) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 70000), RECV_TIMEOUT)
        if self.tid is None:
            self.tid = addr
        assert addr == self.tid, "every packet of a transfer comes from one port"
        return struct.unpack("!H", data[:2])[0], data[2:]

    async def recv_block(self, expected: int) -> bytes:
        """Payload of DATA block `expected`, skipping retransmissions of earlier blocks.

        A loaded test machine can stall longer than a short server timeout; the resent blocks
        that follow are legitimate and must not fail a test about something else.
        """
        for _ in range(100):
            op, body = await self.recv()
            assert op == 3, (op, body)
            block = struct.unpack("!H", body[:2])[0]
            if block == expected & 0xFFFF:
                return body[2:]
            assert 0 < (expected - block) & 0xFFFF <= 64, f"got block {block}, want {expected}"
        raise AssertionError(f"block {expected} never came")

    def ack(self, block: int) -> None:
        assert self.tid is not None
        self.sock.sendto(struct.pack("!HH", 4, block & 0xFFFF), self.tid)


def options_of(body: bytes) -> dict[str, str]:
    fields = body.split(b"\0")[:-1]
    return {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields), 2)}


async def wait_for(predicate, what: str) -> None:
    for _ in range(int(RECV_TIMEOUT / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    (r / "small.bin").write_bytes(os.urandom(2000))
    (r / "exact.bin").write_bytes(os.urandom(1024))  # a multiple of 512: ends with empty DATA
    (r / "text.txt").write_bytes(b"line1\nline2\r\n")
    (tmp_path / "secret").write_bytes(b"secret")
    (r / "link-out").symlink_to(tmp_path / "secret")
    return r


@pytest.fixture
async def server(root: Path) -> AsyncIterator[TftpServer]:
    """Retransmission timer long enough that a stalled test never sees a resent block."""
    srv = TftpServer(roots=[root], host=HOST, port=0, timeout=5.0, retries=3)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.fixture
async def quick_server(root: Path) -> AsyncIterator[TftpServer]:
    """Short retransmission timer, for the tests about retransmission."""
    srv = TftpServer(roots=[root], host=HOST, port=0, timeout=0.2, retries=3)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.fixture
def client() -> Iterator[RawClient]:
    c = RawClient()
    yield c
    c.close()


async def fetch(client: RawClient, port: int, name: str, mode: str = "octet",
                **options: object) -> bytes:
    """Lockstep (or windowed) download; returns the content."""
    client.rrq(port, name, mode, **options)
    blksize = int(options.get("blksize", 512))
    window = int(options.get("windowsize", 1))
    op, body = await client.recv()
    if options:
        assert op == 6, body
        oack = options_of(body)
        blksize = int(oack.get("blksize", 512))
        window = int(oack.get("windowsize", 1))
        client.ack(0)
        op, body = await client.recv()
    data, expected = bytearray(), 1
    for _ in range(200_000):
        assert op == 3, body
        block = struct.unpack("!H", body[:2])[0]
        assert block == expected & 0xFFFF
        data += body[2:]
        if len(body) - 2 < blksize:
            client.ack(block)
            return bytes(data)
        if expected % window == 0:
            client.ack(block)
        expected += 1
        op, body = await client.recv()
    raise AssertionError("transfer did not end")


async def test_plain_rrq_without_options(server, client, root) -> None:
    assert await fetch(client, server.port, "small.bin") == (root / "small.bin").read_bytes()
    other = RawClient()
    try:
        assert await fetch(other, server.port, "/exact.bin") == (root / "exact.bin").read_bytes()
    finally:
        other.close()
    await wait_for(lambda: server.counters.transfers_completed == 2, "completions")
    assert server.counters.transfers_failed == 0
    assert server.counters.bytes_sent == 2000 + 1024


async def test_oack_negotiates_blksize_tsize_timeout_windowsize(server, client, root) -> None:
    client.rrq(server.port, "small.bin", blksize=65464, tsize=0, timeout=2, windowsize=4, unknown=1)
    op, body = await client.recv()
    assert op == 6
    assert options_of(body) == {
        "blksize": "1468",
        "tsize": "2000",
        "timeout": "2",
        "windowsize": "4",
    }
    client.ack(0)
    got = []
    for _ in range(2):  # 2000 bytes = 1468 + 532: both blocks arrive as one window
        op, body = await client.recv()
        assert op == 3
        got.append(body)
    assert [b[:2] for b in got] == [b"\x00\x01", b"\x00\x02"]
    assert b"".join(b[2:] for b in got) == (root / "small.bin").read_bytes()
    client.ack(2)
    await wait_for(lambda: server.counters.transfers_completed == 1, "completion")


async def test_windowed_transfer_and_partial_ack_restarts_the_window(server, client, root):
    content = os.urandom(512 * 10 + 3)
    (root / "w.bin").write_bytes(content)
    client.rrq(server.port, "w.bin", windowsize=4)
    _, body = await client.recv()
    assert options_of(body) == {"windowsize": "4"}
    client.ack(0)
    blocks = [(await client.recv())[1][:2] for _ in range(4)]
    assert blocks == [struct.pack("!H", n) for n in (1, 2, 3, 4)]
    client.ack(2)  # "block 3 got lost": the sender restarts at 3
    blocks = [(await client.recv())[1][:2] for _ in range(4)]
    assert blocks == [struct.pack("!H", n) for n in (3, 4, 5, 6)]
    client.ack(6)
    assert await fetch_rest(client, 7, 11) == content[6 * 512 :]


async def fetch_rest(client: RawClient, first: int, last: int) -> bytes:
    data = bytearray()
    for n in range(first, last + 1):
        op, body = await client.recv()
        assert (op, body[:2]) == (3, struct.pack("!H", n))
        data += body[2:]
        if n % 4 == 2 or n == last:  # window boundaries after the restart at 7: 10, then 11
            client.ack(n)
    return bytes(data)


async def test_missing_ack_causes_retransmission(quick_server, client, root) -> None:
    server = quick_server
    client.rrq(server.port, "small.bin")
    first = await client.recv()
    again = await client.recv()  # no ACK sent: the same block comes again after the timeout
    assert first == again and first[0] == 3 and first[1][:2] == b"\x00\x01"
    assert server.counters.retransmissions >= 1
    client.ack(1)
    rest = await fetch_after_rrq(client, first=2)
    assert first[1][2:] + rest == (root / "small.bin").read_bytes()
    await wait_for(lambda: server.counters.transfers_completed == 1, "completion")


async def test_duplicate_ack_is_not_answered(server, client, root) -> None:
    """Sorcerer's Apprentice: a duplicated ACK must not make the server send a block twice."""
    (root / "four.bin").write_bytes(os.urandom(512 * 3 + 1))
    client.rrq(server.port, "four.bin")
    seen: list[bytes] = []
    _, body = await client.recv()
    for _ in range(8):
        seen.append(body[:2])
        block = struct.unpack("!H", body[:2])[0]
        client.ack(block)
        client.ack(block)  # duplicate
        if len(body) - 2 < 512:
            break
        _, body = await client.recv()
    await wait_for(lambda: server.counters.transfers_completed == 1, "completion")
    assert seen == [struct.pack("!H", n) for n in (1, 2, 3, 4)]
    assert server.counters.retransmissions == 0


async def test_retries_exhausted_fails_the_transfer(quick_server, client) -> None:
    server = quick_server
    client.rrq(server.port, "small.bin")
    await client.recv()
    await wait_for(lambda: server.counters.transfers_failed == 1, "failure after retries")
    assert server.counters.retransmissions == 3


async def test_client_error_ends_the_transfer(server, client) -> None:
    client.rrq(server.port, "small.bin")
    await client.recv()
    assert client.tid is not None
    client.sock.sendto(b"\x00\x05\x00\x00disk full\x00", client.tid)
    await wait_for(lambda: server.counters.transfers_failed == 1, "failure")


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../secret", 2),
        ("/../secret", 2),
        ("a/../../secret", 2),
        ("link-out", 2),
        ("nope.bin", 1),
        ("/", 1),
    ],
)
async def test_refused_and_missing_paths_get_an_error_packet(server, client, name, code):
    with structlog.testing.capture_logs() as logs:
        client.rrq(server.port, name)
        op, body = await client.recv()
    assert (op, struct.unpack("!H", body[:2])[0]) == (5, code)
    assert body.endswith(b"\0")
    assert server.counters.requests_refused == 1
    refusals = [e for e in logs if e["event"] == "tftp.request.refused"]
    assert refusals and refusals[0]["file"] == name and refusals[0]["code"] == code


async def test_wrq_and_unknown_mode_are_refused(server, client) -> None:
    client.sock.sendto(b"\x00\x02upload.bin\x00octet\x00", (HOST, server.port))
    op, body = await client.recv()
    assert (op, body) == (5, b"\x00\x02access violation\x00")
    other = RawClient()
    try:
        other.rrq(server.port, "small.bin", mode="mail")
        op, body = await other.recv()
        assert (op, body[:2]) == (5, b"\x00\x04")
    finally:
        other.close()


async def test_malformed_packets_are_ignored_and_counted(server, client) -> None:
    for junk in (b"\x00", b"\x00\x01no-terminator", b"\x00\x04\x00\x01", b"\xff" * 600):
        client.sock.sendto(junk, (HOST, server.port))
    client.rrq(server.port, "nope.bin")
    op, body = await client.recv()  # the first reply is the one for the valid request
    assert (op, body[:2]) == (5, b"\x00\x01")
    assert server.counters.packets_malformed == 4


async def test_netascii_mode_converts_line_ends(server, client) -> None:
    assert await fetch(client, server.port, "text.txt", mode="netascii") == (
        b"line1\r\nline2\r\0\r\n"
    )


async def test_virtual_files_are_served_first(root) -> None:
    srv = TftpServer(
        roots=[root],
        virtual=lambda n: b"dyn:" + n.encode() if n.startswith("gen/") else None,
        host=HOST,
        port=0,
        timeout=5.0,
    )
    await srv.start()
    c = RawClient()
    try:
        assert await fetch(c, srv.port, "/gen/boot.ipxe") == b"dyn:gen/boot.ipxe"
    finally:
        c.close()
        await srv.close()


async def test_block_numbers_roll_over(root) -> None:
    """More than 65535 blocks of 512 bytes: block 65535 is followed by 0, then 1."""
    content = os.urandom(512 * 65_540 + 77)
    srv = TftpServer(
        virtual=lambda n: content if n == "big" else None, host=HOST, port=0, timeout=5.0
    )
    await srv.start()
    try:
        # A blocking client in a thread: 65541 datagrams through asyncio would be slow.
        data, wrapped = await asyncio.to_thread(windowed_fetch_blocking, srv.port, "big", 64)
        assert hashlib.sha256(data).digest() == hashlib.sha256(content).digest()
        assert wrapped == [65534, 65535, 0, 1, 2]
        await wait_for(lambda: srv.counters.transfers_completed == 1, "completion")
    finally:
        await srv.close()


def windowed_fetch_blocking(port: int, name: str, window: int) -> tuple[bytes, list[int]]:
    """Download with windowsize; return the data and the wire block numbers around 65535."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.settimeout(RECV_TIMEOUT)
        s.sendto(b"\x00\x01" + name.encode() + f"\0octet\0windowsize\0{window}\0".encode(),
                 (HOST, port))
        oack, tid = s.recvfrom(2048)
        assert oack[:2] == b"\x00\x06" and options_of(oack[2:]) == {"windowsize": str(window)}
        s.sendto(b"\x00\x04\x00\x00", tid)
        chunks, wrapped = [], []
        for expected in range(1, 200_000):
            pkt = s.recv(2048)
            block = (pkt[2] << 8) | pkt[3]
            assert pkt[:2] == b"\x00\x03" and block == expected & 0xFFFF, (expected, pkt[:4])
            if 65534 <= expected <= 65538:
                wrapped.append(block)
            chunks.append(pkt[4:])
            last = len(pkt) - 4 < 512
            if last or expected % window == 0:
                s.sendto(b"\x00\x04" + pkt[2:4], tid)
            if last:
                return b"".join(chunks), wrapped
    raise AssertionError("transfer did not end")


async def test_duplicate_request_does_not_start_a_second_transfer(server, client, root) -> None:
    client.rrq(server.port, "small.bin")
    client.rrq(server.port, "small.bin")
    assert await fetch_after_rrq(client) == (root / "small.bin").read_bytes()
    await wait_for(lambda: server.counters.transfers_completed == 1, "completion")
    assert server.counters.transfers_started == 1


async def fetch_after_rrq(client: RawClient, first: int = 1) -> bytes:
    data = bytearray()
    for expected in range(first, 100):
        payload = await client.recv_block(expected)
        data += payload
        client.ack(expected)
        if len(payload) < 512:
            return bytes(data)
    raise AssertionError("transfer did not end")


async def test_final_ack_missing_is_reported_as_such(quick_server, client) -> None:
    server = quick_server
    with structlog.testing.capture_logs() as logs:
        client.rrq(server.port, "small.bin")
        for block in range(1, 5):
            await client.recv_block(block)
            if block < 4:
                client.ack(block)
        await wait_for(lambda: server.counters.transfers_failed == 1, "failure")
    ends = [e for e in logs if e["event"] == "tftp.transfer.end"]
    assert ends[0]["reason"] == "final ACK not received (timeout)"


async def test_transfer_limit_refuses_with_an_error(root, client) -> None:
    srv = TftpServer(roots=[root], host=HOST, port=0, max_transfers=1)
    await srv.start()
    other = RawClient()
    try:
        client.rrq(srv.port, "small.bin")
        assert (await client.recv())[0] == 3
        other.rrq(srv.port, "small.bin")
        assert await other.recv() == (5, b"\x00\x00server busy\x00")
        assert srv.counters.requests_refused == 1
    finally:
        other.close()
        await srv.close()


async def test_close_aborts_running_transfers_with_an_error(root, client) -> None:
    srv = TftpServer(roots=[root], host=HOST, port=0, timeout=5.0)
    await srv.start()
    client.rrq(srv.port, "small.bin")
    assert (await client.recv())[0] == 3
    await srv.close()
    op, body = await client.recv()
    assert (op, body[:2]) == (5, b"\x00\x00")
    assert srv.counters.transfers_failed == 1


async def test_bind_to_device(root, client) -> None:
    srv = TftpServer(roots=[root], host="0.0.0.0", port=0, interface="lo", timeout=5.0)
    await srv.start()
    try:
        assert await fetch(client, srv.port, "small.bin") == (root / "small.bin").read_bytes()
    finally:
        await srv.close()
    with pytest.raises(OSError):
        await TftpServer(roots=[root], port=0, interface="no-such-if0").start()


async def test_replies_leave_from_the_address_the_request_was_sent_to(root, client) -> None:
    """Listening on 0.0.0.0, a request to 127.0.0.2 is answered from 127.0.0.2 (IP_PKTINFO)."""
    srv = TftpServer(roots=[root], host="0.0.0.0", port=0, timeout=5.0)
    await srv.start()
    try:
        client.rrq(srv.port, "small.bin", host="127.0.0.2")
        await client.recv_block(1)
        assert client.tid is not None and client.tid[0] == "127.0.0.2"
    finally:
        await srv.close()
