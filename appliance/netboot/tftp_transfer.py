"""One TFTP read transfer: the sender side of RFC 1350 with RFC 7440 windows.

A transfer is an asyncio datagram protocol on its own connected ephemeral socket (the RFC's
transfer ID), driven only by callbacks: no task or thread per transfer beyond the one that
awaits its end. Block numbers are tracked as absolute integers and put on the wire modulo 2**16,
so files of more than 65535 blocks roll over to 0 like tftp-hpa and curl expect.

Duplicate ACKs are ignored (only the retransmission timer resends), which is what prevents the
Sorcerer's Apprentice bug of RFC 1123 4.2.3.1.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from appliance.netboot.tftp_files import Source
from appliance.netboot.tftp_wire import (
    OP_ACK,
    OP_ERROR,
    ErrorCode,
    data_packet,
    error_packet,
    parse_error,
)


@dataclass(slots=True)
class TftpCounters:
    """Monotonic counters for the peer's /metrics (active is a gauge)."""

    transfers_started: int = 0
    transfers_completed: int = 0
    transfers_failed: int = 0
    requests_refused: int = 0
    packets_malformed: int = 0
    retransmissions: int = 0
    bytes_sent: int = 0

    @property
    def active(self) -> int:
        return self.transfers_started - self.transfers_completed - self.transfers_failed


@dataclass(slots=True)
class Outcome:
    """How a transfer ended; `reason` is empty on success."""

    ok: bool
    reason: str = ""
    retransmissions: int = 0
    payload_sent: int = 0


class Transfer(asyncio.DatagramProtocol):
    """Send one Source to one client; resolve `done` with an Outcome when it ends."""

    def __init__(
        self,
        source: Source,
        *,
        blksize: int,
        windowsize: int,
        timeout: float,
        retries: int,
        oack: bytes | None,
        counters: TftpCounters,
        done: asyncio.Future[Outcome],
    ) -> None:
        self._source = source
        self._blksize = blksize
        self._window = windowsize
        self._timeout = timeout
        self._retries_max = retries
        self._oack = oack
        self._counters = counters
        self._done = done
        # Absolute block numbers: 1.._last; the last block is short (possibly empty).
        self._last = source.size // blksize + 1
        self._acked = 0
        self._sent = 0
        self._retries = 0
        self._retransmissions = 0
        self._payload = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector datagram transport does not subclass DatagramTransport.
        self._transport = transport  # type: ignore[assignment]
        if self._done.done():  # aborted while the endpoint was being set up
            transport.close()
            return
        if self._oack is not None:
            transport.sendto(self._oack)
        else:
            self._send_window()
        self._deadline = self._loop.time() + self._timeout
        self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < 4 or data[0] != 0:
            self._counters.packets_malformed += 1
            return
        op = data[1]
        if op == OP_ACK:
            self._on_ack((data[2] << 8) | data[3])
        elif op == OP_ERROR:
            code, message = parse_error(data)
            self._finish(False, f"client error {code}: {message}")
        else:
            self._counters.packets_malformed += 1

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on the connected socket: the client has gone away.
        self._finish(False, f"socket error: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._finish(False, "socket closed")

    # -- protocol ----------------------------------------------------------------------------

    def _on_ack(self, block: int) -> None:
        if self._oack is not None:
            if block != 0:
                return  # stale or bogus: wait for ACK 0 or the timer
            self._oack = None
        else:
            advance = (block - self._acked) & 0xFFFF
            if advance == 0 or advance > self._sent - self._acked:
                return  # duplicate or out of window: never answer it (Sorcerer's Apprentice)
            self._acked += advance
            if self._acked == self._last:
                self._finish(True, "")
                return
        self._retries = 0
        self._deadline = self._loop.time() + self._timeout
        self._send_window()

    def _send_window(self) -> None:
        """Send blocks _acked+1 .. _acked+window (RFC 7440 restarts after a partial ACK)."""
        transport = self._transport
        if transport is None:
            return
        blksize = self._blksize
        first = self._acked + 1
        end = min(self._acked + self._window, self._last)
        read = self._source.read
        sent = 0
        for block in range(first, end + 1):
            payload = read((block - 1) * blksize, blksize)
            transport.sendto(data_packet(block, payload))
            sent += len(payload)
        self._sent = end
        self._payload += sent
        self._counters.bytes_sent += sent

    def _on_timer(self) -> None:
        self._timer = None
        if self._done.done():
            return
        now = self._loop.time()
        if now < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._retries += 1
        if self._retries > self._retries_max:
            self._finish(False, "timeout")
            return
        self._retransmissions += 1
        self._counters.retransmissions += 1
        if self._oack is not None:
            if self._transport is not None:
                self._transport.sendto(self._oack)
        else:
            self._send_window()
        self._deadline = now + self._timeout
        self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _finish(self, ok: bool, reason: str) -> None:
        if self._done.done():
            return
        self._done.set_result(Outcome(ok, reason, self._retransmissions, self._payload))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()

    def abort(self, reason: str) -> None:
        """Stop now (server shutdown); tell the client so it does not wait for its timeout."""
        if self._done.done():
            return
        if self._transport is not None:
            self._transport.sendto(error_packet(ErrorCode.NOT_DEFINED, reason))
        self._finish(False, reason)
