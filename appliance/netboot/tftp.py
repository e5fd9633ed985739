"""Read-only TFTP server for the boot chain (PXE ROM -> undionly.kpxe / snponly.efi).

Usage::

    server = TftpServer(roots=["/usr/lib/ipxe", peer_dir], virtual=boot_table.tftp_file)
    await server.start()          # binds host:port (port 0 picks one: see server.port)
    ...
    server.counters               # TftpCounters for /metrics
    await server.close()

Everything runs on the event loop: the well-known port is read with recvmsg (to learn which
local address a request was sent to, IP_PKTINFO, so replies leave from that address even when
listening on 0.0.0.0), and each accepted read request gets its own connected ephemeral socket
driven by loop callbacks (tftp_transfer.Transfer, which says why it is not a datagram
transport). WRQ is refused: the appliance never accepts files over TFTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Sequence

import structlog

from appliance.metrics import counter_values
from appliance.netboot.refusals import RefusalDigest
from appliance.netboot.tftp_files import (
    FileMissing,
    FileResolver,
    PathRefused,
    Source,
    VirtualFiles,
)
from appliance.netboot.tftp_transfer import Outcome, TftpCounters, Transfer
from appliance.netboot.tftp_wire import (
    OP_WRQ,
    PATH_MTU_BLKSIZE,
    ErrorCode,
    MalformedPacket,
    Request,
    error_packet,
    negotiate,
    oack_packet,
    parse_request,
)

__all__ = ["TftpCounters", "TftpServer"]

log = structlog.get_logger("vaquero.netboot.tftp")

_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_SO_RCVBUFFORCE = 33
# A boot storm sends hundreds of RRQs at once; the default 208 KiB buffer drops them.
_LISTEN_RCVBUF = 4 << 20
_DRAIN_PER_WAKEUP = 256
# Requests are a name, a mode and a few options; a longer datagram is malformed (truncated).
_MAX_REQUEST = 4096


class TftpServer:
    """A read-only TFTP server (RFC 1350, 2347, 2348, 2349, 7440).

    roots: directories searched in order after `virtual`; names may not leave them.
    virtual: `(name) -> bytes | None`, consulted first with the root-relative name.
    interface: bind the listening and transfer sockets to this device (SO_BINDTODEVICE).
    max_blksize: the largest block we agree to; the default fits a 1500-byte MTU.
    timeout/retries: default retransmission timer (a client's RFC 2349 timeout overrides it,
    up to `max_timeout`) and how many times in a row we resend before abandoning a transfer.
    max_transfers/max_per_client: transfers at once, in all and from one client address: a
    firmware fetches one file at a time, so one address cannot take every slot.
    """

    def __init__(
        self,
        roots: Sequence[str | os.PathLike[str]] = (),
        virtual: VirtualFiles | None = None,
        host: str = "0.0.0.0",
        port: int = 69,
        interface: str | None = None,
        *,
        max_blksize: int = PATH_MTU_BLKSIZE,
        max_windowsize: int = 64,
        timeout: float = 1.0,
        retries: int = 5,
        max_transfers: int = 10000,
        max_per_client: int = 8,
        max_timeout: int = 5,
    ) -> None:
        self.resolver = FileResolver(roots, virtual)
        self.host = host
        self.port = port
        self.interface = interface
        self.max_blksize = max_blksize
        self.max_windowsize = max_windowsize
        self.timeout = timeout
        self.retries = retries
        self.max_transfers = max_transfers
        self.max_per_client = max_per_client
        self.max_timeout = max_timeout
        self.counters = TftpCounters()
        self._per_client: dict[str, int] = {}
        # Refusals are logged a few per minute, then as one digest: 50,000 junk requests
        # must not become 25,000 log lines.
        self.refusals = RefusalDigest(None, log, "tftp")
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transfers: dict[tuple[str, int], Transfer] = {}

    def metrics(self) -> dict[str, float]:
        return {**counter_values(self.counters), "active": float(self.counters.active)}

    async def start(self) -> None:
        """Bind the listening socket; raises OSError (e.g. port in use, unknown interface)."""
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            _grow_rcvbuf(sock, _LISTEN_RCVBUF)
            self._bind_device(sock)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._loop.add_reader(sock.fileno(), self._on_readable)
        log.info("tftp.listening", host=self.host, port=self.port, interface=self.interface,
                 roots=self.resolver.roots)

    async def close(self) -> None:
        """Stop listening and abort running transfers (their clients get an ERROR packet)."""
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for transfer in list(self._transfers.values()):
            transfer.abort("server shutting down")
        self._transfers.clear()

    def _bind_device(self, sock: socket.socket) -> None:
        if self.interface:
            sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, self.interface.encode() + b"\0")

    # -- well-known port ---------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        space = socket.CMSG_SPACE(12)
        for _ in range(_DRAIN_PER_WAKEUP):
            try:
                data, ancdata, flags, client = sock.recvmsg(_MAX_REQUEST, space)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors queued on the socket
                log.debug("tftp.listen.error", error=str(exc))
                continue
            if flags & socket.MSG_TRUNC:
                self.counters.packets_malformed += 1
                continue
            local = self.host
            for level, kind, cdata in ancdata:
                if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(cdata) >= 12:
                    # struct in_pktinfo: ifindex, spec_dst (our local address), addr
                    local = socket.inet_ntoa(cdata[4:8])
            self._on_request(data, client, local)

    def _on_request(self, data: bytes, client: tuple[str, int], local: str) -> None:
        peer = f"{client[0]}:{client[1]}"
        try:
            request = parse_request(data)
        except MalformedPacket as exc:
            self.counters.packets_malformed += 1
            log.debug("tftp.request.malformed", client=peer, reason=str(exc))
            return
        if client in self._transfers:
            # The client resent its request before our first packet reached it: the running
            # transfer already answers it; a second one would race it from another port.
            log.debug("tftp.request.duplicate", client=peer, file=request.filename)
            return
        if request.opcode == OP_WRQ:
            self._refuse(client, local, request, ErrorCode.ACCESS_VIOLATION, "access violation",
                         "write request")
            return
        if request.mode not in ("octet", "netascii"):
            self._refuse(client, local, request, ErrorCode.ILLEGAL_OPERATION,
                         "illegal TFTP operation", f"unsupported mode {request.mode!r}")
            return
        if self.counters.active >= self.max_transfers:
            self._refuse(client, local, request, ErrorCode.NOT_DEFINED, "server busy",
                         "too many transfers")
            return
        if self._per_client.get(client[0], 0) >= self.max_per_client:
            self._refuse(client, local, request, ErrorCode.NOT_DEFINED, "server busy",
                         "too many transfers from this client")
            return
        try:
            source = self.resolver.open(request.filename, netascii=request.mode == "netascii")
        except PathRefused as exc:
            self._refuse(client, local, request, ErrorCode.ACCESS_VIOLATION, "access violation",
                         str(exc), level="warning")
            return
        except FileMissing:
            self._refuse(client, local, request, ErrorCode.FILE_NOT_FOUND, "file not found",
                         "file not found")
            return
        except Exception as exc:  # a faulty virtual-file callable must not kill the listener
            log.exception("tftp.request.internal_error", client=peer, file=request.filename)
            self._refuse(client, local, request, ErrorCode.NOT_DEFINED, "internal error",
                         f"internal error: {type(exc).__name__}")
            return
        try:
            sock = self._transfer_socket(local, client)
        except OSError as exc:
            source.close()
            self._refuse(client, local, request, ErrorCode.NOT_DEFINED, "server error",
                         f"socket: {exc.strerror}", level="error")
            return
        self._start_transfer(sock, client, request, source)

    def _transfer_socket(self, local: str, client: tuple[str, int]) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            self._bind_device(sock)
            if ipaddress.ip_address(local).is_multicast or local == "255.255.255.255":
                local = self.host
            sock.bind((local, 0))
            sock.connect(client)
        except (OSError, ValueError):
            sock.close()
            raise
        return sock

    def _refuse(self, client: tuple[str, int], local: str, request: Request, code: ErrorCode,
                message: str, reason: str, level: str = "info") -> None:
        """Answer a request with an ERROR from a fresh port, as a transfer would, and log it
        (rate-limited: a few lines a minute, then a digest with the count)."""
        self.counters.requests_refused += 1
        fields = {"client": f"{client[0]}:{client[1]}", "file": request.filename[:128],
                  "code": int(code), "reason": reason}
        self.refusals.note("request.refused", client[0], level=level, **fields)
        with contextlib.suppress(OSError, ValueError), self._transfer_socket(local, client) as s:
            s.send(error_packet(code, message))

    # -- one transfer ------------------------------------------------------------------------

    def _start_transfer(self, sock: socket.socket, client: tuple[str, int], request: Request,
                        source: Source) -> None:
        nego = negotiate(request.options, file_size=source.size, max_blksize=self.max_blksize,
                         max_windowsize=self.max_windowsize, max_timeout=self.max_timeout)
        fields = {"client": f"{client[0]}:{client[1]}", "file": request.filename,
                  "size": source.size, "blksize": nego.blksize, "windowsize": nego.windowsize,
                  "mode": request.mode}
        started = time.monotonic()

        address = client[0]

        def on_done(transfer: Transfer, outcome: Outcome) -> None:
            self._transfers.pop(client, None)
            left = self._per_client.pop(address, 1) - 1
            if left > 0:
                self._per_client[address] = left
            duration = round(time.monotonic() - started, 6)
            if outcome.ok:
                self.counters.transfers_completed += 1
                log.info("tftp.transfer.end", status="completed", duration_s=duration,
                         retransmissions=outcome.retransmissions, **fields)
            else:
                self.counters.transfers_failed += 1
                log.warning("tftp.transfer.end", status="failed", reason=outcome.reason,
                            duration_s=duration, retransmissions=outcome.retransmissions,
                            bytes_sent=outcome.payload_sent, **fields)

        transfer = Transfer(
            sock,
            source,
            blksize=nego.blksize,
            windowsize=nego.windowsize,
            timeout=nego.timeout or self.timeout,
            retries=self.retries,
            oack=oack_packet(nego.oack) if nego.oack else None,
            counters=self.counters,
            on_done=on_done,
        )
        self.counters.transfers_started += 1
        self._transfers[client] = transfer
        self._per_client[address] = self._per_client.get(address, 0) + 1
        log.info("tftp.transfer.start", **fields)
        transfer.start()


def _grow_rcvbuf(sock: socket.socket, size: int) -> None:
    """Ask for a large receive buffer; as root bypass net.core.rmem_max, else take what we get."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

