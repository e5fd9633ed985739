"""The DHCP service's I/O: UDP sockets on the boot interface, driven by the asyncio loop.

Sockets are read with `recvmsg` from a loop reader rather than through asyncio's datagram
protocol, because the protocol API hides ancillary data and we want IP_PKTINFO (the ingress
interface) and to drain a burst of datagrams per wake-up. Each socket is bound to 0.0.0.0
(broadcasts from address-less clients must reach us) and pinned to the boot interface with
SO_BINDTODEVICE, so several servers, one per interface, can share port 67.

Replies never wait on anything: the responder works from the in-memory table only. A send
that would block is dropped and counted (a client retries within seconds; queueing would
only make the answers arrive after the client gave up).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

import structlog

from appliance.metrics import counter_values
from appliance.netboot.dhcp_responder import PXE_PORT, Counters, EventSink, Responder
from appliance.netboot.dhcp_table import DhcpTable

log = structlog.get_logger("vaquero.netboot.dhcp")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 lacks the constant
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)  # Linux: datagrams the kernel dropped
_PKTINFO = struct.Struct("=i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_ANC_SIZE = socket.CMSG_SPACE(_PKTINFO.size) + socket.CMSG_SPACE(4)
MAX_DATAGRAM = 1500
BURST = 64  # datagrams handled per readiness callback before yielding to the loop
RCVBUF = 1 << 20  # absorbs a boot storm's burst while the loop is busy


def open_dhcp_socket(interface: str, port: int) -> socket.socket:
    """A non-blocking UDP socket on 0.0.0.0:port, pinned to `interface`, broadcast-capable."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        try:  # past net.core.rmem_max when we may (CAP_NET_ADMIN, as the appliance runs)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class DhcpServer:
    """Static-reservation DHCP (mode "server") or proxyDHCP for PXE (mode "proxy").

    `table_provider()` gives the table to start with; `swap_table` installs a newer one
    compiled elsewhere. Events go to `on_event(kind, **fields)` so the peer can journal them,
    at most one per kind and MAC a minute (malformed: one per 10 s):
    unknown-mac (mac, message, src, giaddr[, uuid]), decline (mac, ip, src),
    release (mac, ip, known), malformed (reason, src, size).

    `counters` (plain ints, for /metrics): one per message type received (discover, request,
    inform, decline, release, ...), replies, nak, unknown, malformed, ignored (not ours to
    answer), other_server, wrong_subnet, unbootable, pxe_port, events_suppressed, dropped
    (send failed), rx_overflow_<port> (the kernel's count of requests lost before we read
    them), errors (a bug cost one packet).
    """

    def __init__(
        self,
        table_provider: Callable[[], DhcpTable],
        interface: str,
        mode: str = "server",
        server_ip: str | None = None,
        on_event: EventSink | None = None,
        port: int = 67,
        pxe_port: int = PXE_PORT,
    ) -> None:
        if mode not in ("server", "proxy"):
            raise ValueError(f"mode must be 'server' or 'proxy', not {mode!r}")
        self.interface = interface
        self.mode = mode
        self._server_ip = socket.inet_aton(server_ip) if server_ip else None
        self._table_provider = table_provider
        self._on_event = on_event
        self._ports = [port, pxe_port] if mode == "proxy" else [port]
        self._socks: list[socket.socket] = []
        self._responder: Responder | None = None
        self._ifindex = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def metrics(self) -> dict[str, float]:
        return counter_values(self.counters)

    @property
    def counters(self) -> Counters:
        if self._responder is None:
            return Counters()
        return self._responder.counters

    def _check(self, table: DhcpTable) -> DhcpTable:
        if self._server_ip is not None and table.server_ip != self._server_ip:
            raise ValueError("table compiled for another server address")
        return table

    def swap_table(self, table: DhcpTable) -> None:
        """Install a compiled table: one reference assignment, the next datagram sees it."""
        self._check(table)
        if self._responder is None:
            self._table_provider = lambda: table
            return
        self._responder.table = table
        log.info("dhcp.table_swapped", revision=table.revision, hosts=len(table.by_mac))

    async def start(self) -> None:
        table = self._check(self._table_provider())
        self._loop = asyncio.get_running_loop()
        self._ifindex = socket.if_nametoindex(self.interface)
        self._responder = Responder(table, self.mode, self._on_event)
        try:
            for port in self._ports:
                sock = open_dhcp_socket(self.interface, port)
                self._socks.append(sock)
                self._loop.add_reader(sock.fileno(), self._on_readable, sock, port)
        except BaseException:
            await self.close()
            raise
        log.info(
            "dhcp.started",
            interface=self.interface,
            mode=self.mode,
            ports=self._ports,
            hosts=len(table.by_mac),
        )

    async def close(self) -> None:
        for sock in self._socks:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()

    async def __aenter__(self) -> DhcpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _on_readable(self, sock: socket.socket, port: int) -> None:
        responder = self._responder
        assert responder is not None
        counters = responder.counters
        handle = responder.handle
        for _ in range(BURST):
            try:
                data, anc, _flags, src = sock.recvmsg(MAX_DATAGRAM, _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                counters.inc("recv_errors")
                log.debug("dhcp.recv_error", error=str(exc))
                return
            for level, kind, value in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    if _PKTINFO.unpack_from(value)[0] != self._ifindex:
                        counters.inc("wrong_interface")
                        data = b""
                elif level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
                    # Cumulative per socket: requests lost before we could read them.
                    counters[f"rx_overflow_{port}"] = int.from_bytes(value[:4], "little")
            if not data:
                continue
            try:
                reply = handle(data, src, port)
            except Exception:  # a bug must cost one packet, never the service
                counters.inc("errors")
                log.exception("dhcp.handler_failed", src=src[0])
                continue
            if reply is None:
                continue
            try:
                sock.sendto(reply[0], reply[1])
            except OSError as exc:  # full send buffer, unreachable relay...
                counters.inc("dropped")
                log.debug("dhcp.send_failed", dest=reply[1][0], error=str(exc))
