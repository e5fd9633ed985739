"""Another DHCP server on the boot network: send one real DHCPDISCOVER and list who answers.

Why: a second DHCP server on the boot network (a forgotten dnsmasq, a router's built-in one)
hands machines addresses and boot files that are not ours, and the symptom (a machine that
boots something else, now and then) is slow to trace. The original Vaquero warned about it;
`vaq-peer doctor --boot-network IFACE` asks, and `watch` asks now and then on a running peer.

Why scapy here and not on the hot path: this is one packet out and a handful in, where an
independent, complete DHCP implementation is worth more than speed; the service's own codec
(`dhcp_codec`) stays ours. Frames go through a plain AF_PACKET socket (root), filtered on
their bytes before scapy dissects them, so a busy network costs little.

The DISCOVER carries a locally administered client address derived from the interface's
own (never a real machine's, so no reservation matches it and a server keeps at most one
offer for it) and the broadcast flag, so answers reach us without an address. Our own
server's answers leave through this interface and are never seen (outgoing frames are
skipped); our DHCP servers tell the probe by its vendor class and stay quiet
(`PROBE_VENDOR_CLASS`). Nothing is requested: an offer that is never taken costs the other
server nothing.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import structlog

log = structlog.get_logger("vaquero.netboot.rogue_dhcp")

PROBE_VENDOR_CLASS = b"vaquero-probe"
MAX_WAIT_S = 30.0  # one probe never listens longer than this, whatever the caller asks
MAX_ANSWERS = 64  # nor keeps more answers than this
WATCH_EVERY_S = 900.0
RESEND_S = 1.0
# dnsmasq answers a new client's DISCOVER only after pinging the address it means to offer
# (3 s without a reply): listen longer than that.
DEFAULT_WAIT_S = 5.0
_ETH_P_IP = 0x0800
_FRAME_MAX = 2048  # a DHCP answer fits in one Ethernet frame; anything longer is cut


class ProbeError(Exception):
    """The probe could not run (no such interface, not root): nothing was learned."""


@dataclass(frozen=True)
class DhcpAnswer:
    """One server that answered the DISCOVER."""

    server_mac: str  # the Ethernet source of the answer
    source_ip: str  # the IP source (a relay's, when relayed)
    server_id: str | None  # option 54, the server's own idea of its address
    message: str  # offer, ack, nak
    offered: str | None  # yiaddr, when one was offered
    boot_file: str | None  # option 67 or the BOOTP file field: it would boot this

    def describe(self) -> str:
        who = self.server_id or self.source_ip
        what = f"offered {self.offered}" if self.offered else f"answered {self.message}"
        boot = f", boot file {self.boot_file}" if self.boot_file else ""
        return f"DHCP server {who} (MAC {self.server_mac}) {what}{boot}"


def probe_mac(interface_mac: bytes) -> bytes:
    """The client address the probe uses: the interface's, locally administered, unicast."""
    return bytes([(interface_mac[0] | 0x02) & 0xFE, *interface_mac[1:6]])


def _discover(src_mac: bytes, chaddr: bytes, xid: int) -> bytes:
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    frame = (Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff", type=_ETH_P_IP)
             / IP(src="0.0.0.0", dst="255.255.255.255")
             / UDP(sport=68, dport=67)
             / BOOTP(op=1, chaddr=chaddr + b"\x00" * 10, xid=xid, flags=0x8000)
             / DHCP(options=[("message-type", "discover"),
                             ("vendor_class_id", PROBE_VENDOR_CLASS),
                             ("param_req_list", [1, 3, 6, 54, 66, 67]), "end"]))
    return bytes(frame)


def _is_bootp_reply(frame: bytes) -> bool:
    """A cheap look at the bytes before scapy is asked: IPv4, UDP, to port 68, BOOTREPLY."""
    if len(frame) < 14 + 20 + 8 + 240 or frame[12:14] != b"\x08\x00":
        return False
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] != 17 or len(frame) < 14 + ihl + 8 + 240:
        return False
    udp = 14 + ihl
    return frame[udp + 2:udp + 4] == b"\x00\x44" and frame[udp + 8] == 2


def _answer(frame: bytes, xid: int, chaddr: bytes) -> DhcpAnswer | None:
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    pkt = Ether(frame)
    if BOOTP not in pkt or pkt[BOOTP].xid != xid or bytes(pkt[BOOTP].chaddr)[:6] != chaddr:
        return None
    options = {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple) and len(o) >= 2
               } if DHCP in pkt else {}
    kind = {2: "offer", 5: "ack", 6: "nak"}.get(options.get("message-type", 0), "bootp")
    yiaddr = str(pkt[BOOTP].yiaddr)
    boot = bytes(options.get("boot-file-name") or pkt[BOOTP].file).rstrip(b"\x00")
    server_id = options.get("server_id")
    return DhcpAnswer(
        server_mac=str(pkt[Ether].src), source_ip=str(pkt[IP].src),
        server_id=str(server_id) if server_id else None, message=kind,
        offered=yiaddr if yiaddr != "0.0.0.0" else None,
        boot_file=boot.decode("ascii", "replace") if boot else None)


def probe(interface: str, wait: float = DEFAULT_WAIT_S, max_answers: int = 16
          ) -> list[DhcpAnswer]:
    """Send one DHCPDISCOVER on `interface` and return every distinct server that answered
    within `wait` seconds (at most `max_answers`). Blocking; needs root. Raises ProbeError."""
    wait = min(max(wait, 0.1), MAX_WAIT_S)
    max_answers = min(max(max_answers, 1), MAX_ANSWERS)
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_IP))
    except PermissionError:
        raise ProbeError("sending a DHCPDISCOVER needs root (a raw socket)") from None
    with sock:
        try:
            sock.bind((interface, _ETH_P_IP))
        except OSError as exc:
            raise ProbeError(f"interface {interface!r}: {exc.strerror or exc}") from None
        own_mac = sock.getsockname()[4]
        if len(own_mac) != 6:
            raise ProbeError(f"interface {interface!r} is not Ethernet")
        chaddr, xid = probe_mac(own_mac), int.from_bytes(os.urandom(4), "big")
        return _collect(sock, _discover(own_mac, chaddr, xid), xid, chaddr, wait, max_answers)


def _collect(sock: socket.socket, discover: bytes, xid: int, chaddr: bytes, wait: float,
             max_answers: int) -> list[DhcpAnswer]:
    """Send the DISCOVER, again every `RESEND_S` as a client would (a server may drop the
    first, as dnsmasq does while it pings the address it means to offer), and collect
    answers until `wait` has passed or `max_answers` servers answered."""
    answers: dict[tuple[str, str | None], DhcpAnswer] = {}
    start = time.monotonic()
    deadline, next_send = start + wait, start
    while len(answers) < max_answers and (now := time.monotonic()) < deadline:
        if now >= next_send:
            try:
                sock.send(discover)
            except OSError as exc:
                raise ProbeError(f"cannot send on {sock.getsockname()[0]!r}: "
                                 f"{exc.strerror}") from None
            next_send = now + RESEND_S
        readable, _, _ = select.select([sock], [], [], min(deadline, next_send) - now)
        if not readable:
            continue
        frame, address = sock.recvfrom(_FRAME_MAX)
        if address[2] == socket.PACKET_OUTGOING or not _is_bootp_reply(frame):
            continue
        try:
            answer = _answer(frame, xid, chaddr)
        except Exception:  # noqa: BLE001 - a frame scapy cannot dissect is not an answer
            continue
        if answer is not None:
            answers.setdefault((answer.server_mac, answer.server_id), answer)
    return list(answers.values())


async def watch(interface: str, expected: Callable[[], bool],
                on_event: Callable[..., None], every: float = WATCH_EVERY_S,
                first: float = 60.0, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
                ) -> None:
    """Probe now and then; report each answering server as a `rogue-dhcp` event unless
    `expected()` says another server belongs there (the site's peers run proxyDHCP).
    Stops, with one warning, when the probe cannot run at all (not root, no interface)."""
    await sleep(first)
    while True:
        if not expected():
            try:
                answers = await asyncio.to_thread(probe, interface)
            except ProbeError as exc:
                log.warning("rogue_dhcp.cannot_probe", interface=interface, error=str(exc))
                return
            except OSError as exc:  # the link went away for a while: try again next round
                log.warning("rogue_dhcp.probe_failed", interface=interface, error=str(exc))
                answers = []
            for answer in answers:
                log.warning("rogue_dhcp.answer", interface=interface, **asdict(answer))
                on_event("rogue-dhcp", interface=interface, detail=answer.describe(),
                         **{k: v for k, v in asdict(answer).items() if v is not None})
        await sleep(every)

