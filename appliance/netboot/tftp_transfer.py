"""One TFTP read transfer: the sender side of RFC 1350 with RFC 7440 windows.

A transfer owns its connected ephemeral UDP socket (the RFC's transfer ID) and is driven only by
event-loop callbacks (loop.add_reader and one timer): no task or thread per transfer. It does
not use an asyncio datagram transport on purpose: the selector transport of Python 3.11 calls
recvfrom(256 KiB) for every datagram, and allocating that for each 4-byte ACK cost more than
the rest of the transfer (see tools/bench/tftp.py); here ACKs are read with recv_into into one
shared buffer.

Block numbers are tracked as absolute integers and put on the wire modulo 2**16, so files of more
than 65535 blocks roll over to 0 like tftp-hpa and curl expect. Duplicate ACKs are ignored (only
the retransmission timer resends), which is what prevents the Sorcerer's Apprentice bug of
RFC 1123 4.2.3.1.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
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

# Single-threaded event loop: one receive buffer serves every transfer.
_RECV_BUF = bytearray(2048)
_RECV_VIEW = memoryview(_RECV_BUF)


@dataclass(slots=True)
class TftpCounters:
    """Monotonic counters for the peer's /metrics (`active` is a gauge).

    transfers_*: read transfers that got past path checks; requests_refused: requests answered
    with an ERROR instead (missing file, access violation, WRQ, bad mode, busy);
    packets_malformed: datagrams ignored because they could not be parsed; bytes_sent: DATA
    payload put on the wire, retransmissions included.
    """

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


class Transfer:
    """Send one Source to one client on `sock`; call `on_done(transfer, outcome)` at the end."""

    def __init__(
        self,
        sock: socket.socket,
        source: Source,
        *,
        blksize: int,
        windowsize: int,
        timeout: float,
        retries: int,
        oack: bytes | None,
        counters: TftpCounters,
        on_done: Callable[[Transfer, Outcome], None],
    ) -> None:
        self._sock = sock
        self._source = source
        self._blksize = blksize
        self._window = windowsize
        self._timeout = timeout
        self._retries_max = retries
        self._oack = oack
        self._counters = counters
        self._on_done: Callable[[Transfer, Outcome], None] | None = on_done
        # Absolute block numbers: 1.._last; the last block is short (possibly empty).
        self._last = source.size // blksize + 1
        self._acked = 0
        self._sent = 0
        self._retries = 0
        self._retransmissions = 0
        self._payload = 0
        self._loop = asyncio.get_running_loop()
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Send the OACK (or the first window) and start listening for ACKs."""
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        if self._oack is not None:
            self._send(self._oack)
        else:
            self._send_window()
        self._deadline = time.monotonic() + self._timeout
        if self._on_done is not None:
            self._timer = self._loop.call_later(self._timeout, self._on_timer)

    def abort(self, reason: str) -> None:
        """Stop now (server shutdown); tell the client so it does not wait for its timeout."""
        if self._on_done is not None:
            self._send(error_packet(ErrorCode.NOT_DEFINED, reason))
            self._finish(False, reason)

    # -- I/O ---------------------------------------------------------------------------------

    def _send(self, packet: bytes) -> None:
        try:
            self._sock.send(packet)
        except (BlockingIOError, InterruptedError):
            pass  # socket buffer full: the packet counts as lost, the timer resends it
        except OSError as exc:
            self._finish(False, f"socket error: {exc.strerror}")

    def _on_readable(self) -> None:
        try:
            n = self._sock.recv_into(_RECV_BUF)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # ICMP port unreachable on the connected socket: the client has gone away.
            self._finish(False, f"socket error: {exc.strerror}")
            return
        buf = _RECV_BUF
        if n < 4 or buf[0] != 0:
            self._counters.packets_malformed += 1
        elif buf[1] == OP_ACK:
            self._on_ack((buf[2] << 8) | buf[3])
        elif buf[1] == OP_ERROR:
            code, message = parse_error(bytes(_RECV_VIEW[:n]))
            self._finish(False, f"client error {code}: {message}")
        else:
            self._counters.packets_malformed += 1

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
        self._deadline = time.monotonic() + self._timeout
        self._send_window()

    def _send_window(self) -> None:
        """Send blocks _acked+1 .. _acked+window (RFC 7440 restarts after a partial ACK)."""
        blksize = self._blksize
        first = self._acked + 1
        end = min(self._acked + self._window, self._last)
        read = self._source.read
        send = self._sock.send
        sent = 0
        try:
            for block in range(first, end + 1):
                payload = read((block - 1) * blksize, blksize)
                send(data_packet(block, payload))
                sent += len(payload)
        except (BlockingIOError, InterruptedError):
            pass  # the rest of the window counts as lost; the timer resends from _acked+1
        except OSError as exc:
            self._finish(False, f"socket error: {exc.strerror}")
        self._sent = end
        self._payload += sent
        self._counters.bytes_sent += sent

    def _on_timer(self) -> None:
        self._timer = None
        if self._on_done is None:
            return
        now = time.monotonic()
        if now < self._deadline:
            self._timer = self._loop.call_later(self._deadline - now, self._on_timer)
            return
        self._retries += 1
        if self._retries > self._retries_max:
            self._finish(False, "timeout")
            return
        self._retransmissions += 1
        self._counters.retransmissions += 1
        if self._oack is not None:
            self._send(self._oack)
        else:
            self._send_window()
        self._deadline = now + self._timeout
        if self._on_done is not None:
            self._timer = self._loop.call_later(self._timeout, self._on_timer)

    def _finish(self, ok: bool, reason: str) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is None:
            return
        if not ok and self._oack is None and self._sent == self._last:
            # Every block went out; the client may well have the file and just exited.
            reason = f"final ACK not received ({reason})"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._source.close()
        on_done(self, Outcome(ok, reason, self._retransmissions, self._payload))
