"""A TFTP read client for the benchmarks: RFC 1350 with blksize, tsize and RFC 7440 windowsize.

Why our own: neither curl nor tftp-hpa's client asks for a window (RFC 7440), and the boot
storm needs hundreds of concurrent fetches in one process. It is driven by event-loop
callbacks on a plain non-blocking socket (recv_into one buffer, no task per packet), so that
the client costs little next to the server it measures. A server that ignores the windowsize
option (tftpd-hpa) is answered in lockstep, as the RFC says.

    await tftp_get(("198.18.0.1", 69), "undionly.kpxe", windowsize=8)  # -> TftpResult
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass

OP_RRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 3, 4, 5, 6
_ACK = struct.Struct("!HH")


class TftpError(Exception):
    """The transfer failed: an ERROR packet from the server, or too many timeouts."""


@dataclass
class TftpResult:
    size: int
    seconds: float
    windowsize: int  # what the server agreed to (1: lockstep)
    blksize: int
    timeouts: int
    data: bytes | None  # the file, when kept


def rrq(name: str, options: dict[str, int]) -> bytes:
    parts = [name.encode(), b"octet"]
    for key, value in options.items():
        parts += [key.encode(), str(value).encode()]
    return struct.pack("!H", OP_RRQ) + b"\0".join(parts) + b"\0"


def parse_oack(packet: bytes) -> dict[str, int]:
    fields = packet[2:].split(b"\0")
    out = {}
    for key, value in zip(fields[0::2], fields[1::2], strict=False):
        if key and value.isdigit():
            out[key.decode().lower()] = int(value)
    return out


class _Get:
    """One read transfer: its own socket, a reader callback and one deadline timer."""

    def __init__(self, server: tuple[str, int], name: str, blksize: int, windowsize: int,
                 timeout: float, retries: int, keep: bool, source: str | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if source:
            self.sock.bind((source, 0))
        self.server = server
        options = {"tsize": 0}
        if blksize != 512:
            options["blksize"] = blksize
        if windowsize > 1:
            options["windowsize"] = windowsize
        self.request = rrq(name, options)
        self.blksize, self.window, self.asked_window = 512, 1, windowsize
        self.timeout, self.retries = timeout, retries
        self.buf = bytearray(65536 + 4)
        self.view = memoryview(self.buf)
        self.data = bytearray() if keep else None
        self.size = 0
        self.expect = 1  # absolute number of the next block wanted
        self.in_window = 0
        self.gap_acked = False
        self.last_sent = self.request
        self.peer: tuple[str, int] | None = None
        self.timeouts = 0
        self.misses = 0
        self.future: asyncio.Future[None] = self.loop.create_future()
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self.on_readable)
        self.send(self.request, self.server)
        self.timer = self.loop.call_later(self.timeout, self.on_timer)

    def send(self, packet: bytes, to: tuple[str, int] | None = None) -> None:
        self.last_sent = packet
        with contextlib.suppress(BlockingIOError, InterruptedError):  # lost: the timer resends
            self.sock.sendto(packet, to or self.peer or self.server)

    def ack(self, block: int) -> None:
        self.send(_ACK.pack(OP_ACK, block & 0xFFFF))
        self.in_window = 0

    def on_readable(self) -> None:
        while not self.future.done():
            try:
                n, addr = self.sock.recvfrom_into(self.buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.finish(TftpError(f"socket error: {exc.strerror}"))
                return
            if self.peer is None:
                self.peer = addr  # the server's transfer ID
            elif addr != self.peer:
                continue  # another TID: not ours
            if n < 4:
                continue
            self.on_packet(n)

    def on_packet(self, n: int) -> None:
        op = self.buf[1]
        self.deadline = time.monotonic() + self.timeout
        self.misses = 0
        if op == OP_DATA:
            block = (self.buf[2] << 8) | self.buf[3]
            if block != self.expect & 0xFFFF:
                # lockstep: a duplicate means our ACK was lost, answer it again; a window: a
                # gap, ACK the last good block once so the server restarts the window there
                if self.window == 1 or not self.gap_acked:
                    self.ack(self.expect - 1)
                    self.gap_acked = True
                return
            self.gap_acked = False
            payload = n - 4
            if self.data is not None:
                self.data += self.view[4:n]
            self.size += payload
            self.expect += 1
            self.in_window += 1
            if payload < self.blksize:
                self.ack(self.expect - 1)
                self.finish(None)
            elif self.in_window >= self.window:
                self.ack(self.expect - 1)
        elif op == OP_OACK and self.expect == 1:
            agreed = parse_oack(bytes(self.view[:n]))
            self.blksize = agreed.get("blksize", 512)
            self.window = agreed.get("windowsize", 1)
            self.ack(0)
        elif op == OP_ERROR:
            message = bytes(self.view[4:n]).split(b"\0")[0].decode(errors="replace")
            self.finish(TftpError(f"server error {self.buf[3]}: {message}"))

    def on_timer(self) -> None:
        self.timer = None
        if self.future.done():
            return
        now = time.monotonic()
        if now < self.deadline:
            self.timer = self.loop.call_later(self.deadline - now, self.on_timer)
            return
        self.misses += 1
        self.timeouts += 1
        if self.misses > self.retries:
            self.finish(TftpError(f"timeout after {self.retries} retries"))
            return
        if self.peer is None:
            self.send(self.request, self.server)
        else:  # our last ACK (or the ACK of the last good block) was lost, or its answer
            self.ack(self.expect - 1) if self.expect > 1 else self.send(self.last_sent)
        self.deadline = now + self.timeout
        self.timer = self.loop.call_later(self.timeout, self.on_timer)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def finish(self, error: Exception | None) -> None:
        if self.future.done():
            return
        self.close()
        if error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(error)


async def tftp_get(server: tuple[str, int], name: str, *, blksize: int = 1468,
                   windowsize: int = 1, timeout: float = 1.0, retries: int = 5,
                   keep: bool = False, source: str | None = None) -> TftpResult:
    """Fetch `name`; raise TftpError on an ERROR packet or after `retries` silent timeouts.
    `keep`: return the bytes (else only count them); `source`: local address to bind."""
    get = _Get(server, name, blksize, windowsize, timeout, retries, keep, source)
    started = time.perf_counter()
    get.deadline = time.monotonic() + timeout
    get.start()
    try:
        await get.future
    finally:
        get.close()  # also when cancelled
    return TftpResult(get.size, time.perf_counter() - started, get.window, get.blksize,
                      get.timeouts, bytes(get.data) if get.data is not None else None)
