"""Frames crossing a boot bridge, watched from inside its namespace, for tests that must act
the instant one appears.

Why: some tests act at a point of a machine's boot that no peer logs, and must act before
the machine moves on: kill the peer that answered its DHCP right after its ACK (iPXE asks
that peer for its script a few milliseconds later), or the peer sending it an initrd while
the bytes flow. A log line read by polling comes hundreds of milliseconds late; a packet
socket on the bridge (promiscuous, so it sees what the bridge forwards between its ports)
hands the frame to a thread here as it crosses, and that thread acts at once. Read-only:
it never sends. Parses only what those tests need: Ethernet/IPv4, UDP, TCP, DHCP replies.

Usage::

    def on_packet(pkt: Packet) -> bool:      # True: done, stop watching
        reply = dhcp_reply(pkt)
        return reply is not None and reply.kind == DHCP_ACK

    with WireWatch(lan, "br0", on_packet) as watch:
        ...
        watch.wait(timeout=60)
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tools.rigs.netns import Netns

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
DHCP_OFFER, DHCP_ACK = 2, 5
_MAGIC = b"\x63\x82\x53\x63"


@dataclass(frozen=True)
class Packet:
    """One IPv4 UDP or TCP packet as it crossed the bridge."""

    src_mac: str
    src: str
    dst: str
    proto: str  # "udp" or "tcp"
    sport: int
    dport: int
    payload: bytes
    at: float  # time.monotonic() when the watch read it


@dataclass(frozen=True)
class DhcpReply:
    kind: int  # option 53: DHCP_OFFER, DHCP_ACK, ...
    client_mac: str  # chaddr
    yiaddr: str
    server_id: str | None  # option 54: the server that answered


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse(frame: bytes, at: float) -> Packet | None:
    """The IPv4 UDP/TCP packet in an Ethernet frame (one 802.1Q tag allowed), or None."""
    if len(frame) < 14:
        return None
    ethertype, offset = struct.unpack_from("!H", frame, 12)[0], 14
    if ethertype == ETH_P_8021Q and len(frame) >= 18:
        ethertype, offset = struct.unpack_from("!H", frame, 16)[0], 18
    if ethertype != ETH_P_IP or len(frame) < offset + 20:
        return None
    ihl = (frame[offset] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, offset + 2)[0]
    proto = frame[offset + 9]
    src = str(ipaddress.IPv4Address(frame[offset + 12:offset + 16]))
    dst = str(ipaddress.IPv4Address(frame[offset + 16:offset + 20]))
    end = min(len(frame), offset + total) if total else len(frame)
    l4 = offset + ihl
    if proto == 17 and end >= l4 + 8:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        return Packet(_mac(frame[6:12]), src, dst, "udp", sport, dport, frame[l4 + 8:end], at)
    if proto == 6 and end >= l4 + 20:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        data = l4 + (frame[l4 + 12] >> 4) * 4
        return Packet(_mac(frame[6:12]), src, dst, "tcp", sport, dport, frame[data:end], at)
    return None


def dhcp_reply(pkt: Packet) -> DhcpReply | None:
    """A DHCP server's reply (BOOTREPLY from port 67) in the packet, or None."""
    body = pkt.payload
    if pkt.proto != "udp" or pkt.sport != 67 or len(body) < 240 or body[0] != 2:
        return None
    if body[236:240] != _MAGIC:
        return None
    kind, server, i = 0, None, 240
    while i < len(body) and body[i] != 255:
        if body[i] == 0:
            i += 1
            continue
        if i + 1 >= len(body):
            break
        code, size = body[i], body[i + 1]
        value = body[i + 2:i + 2 + size]
        if code == 53 and size == 1:
            kind = value[0]
        elif code == 54 and size == 4:
            server = str(ipaddress.IPv4Address(value))
        i += 2 + size
    return DhcpReply(kind, _mac(body[28:34]), str(ipaddress.IPv4Address(body[16:20])), server)


class WireWatch:
    """Calls `on_packet` (on its own thread) for every IPv4 UDP/TCP packet crossing `iface` in
    `ns`, until it returns True or the watch is closed. An exception in `on_packet` stops the
    watch and is raised again by `wait()`."""

    def __init__(self, ns: Netns, iface: str, on_packet: Callable[[Packet], bool]) -> None:
        self.ns, self.iface, self.on_packet = ns, iface, on_packet
        self.frames = 0
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> WireWatch:
        ifindex = int(self.ns.run("cat", f"/sys/class/net/{self.iface}/ifindex").stdout)
        sock = self.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.bind((self.iface, 0))
            # struct packet_mreq {int ifindex; ushort type; ushort alen; uchar address[8]}
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                            struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b""))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"wire-watch:{self.ns.name}:{self.iface}")
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._sock is not None
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self._sock], [], [], 0.2)
                if not ready:
                    continue
                frame = self._sock.recv(1 << 16)
                self.frames += 1
                pkt = parse(frame, time.monotonic())
                if pkt is not None and self.on_packet(pkt):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to wait()
            self.error = exc
        finally:
            self.done.set()

    def wait(self, timeout: float) -> bool:
        """True once `on_packet` returned True (or failed: raised here) within `timeout`."""
        finished = self.done.wait(timeout)
        if self.error is not None:
            raise self.error
        return finished

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> WireWatch:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
