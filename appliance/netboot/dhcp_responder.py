"""DHCP decisions, free of sockets: one datagram in, at most one reply and its destination out.

Kept apart from the I/O so the rules (which message gets which answer, where it goes, what
is counted and reported) can be read in one place and tested without a network.

Where replies go (RFC 2131 4.1, and what we chose):
- relayed (giaddr set): unicast to giaddr:67, option 82 echoed (RFC 3046);
- the PXE boot server port 4011: back to the request's source address and port;
- the client has an address (ciaddr: RENEW, REBIND, INFORM): unicast to ciaddr:68;
- otherwise broadcast to 255.255.255.255:68 on the bound interface, whatever the client's
  broadcast flag says. Unicasting to an address the client does not have yet would need an
  ARP entry injected or an AF_PACKET socket; broadcasting is what most PXE servers do, every
  client accepts it, and the boot network is ours.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from appliance.netboot import dhcp_codec as wire
from appliance.netboot import dhcp_table as tbl
from appliance.netboot.rogue_dhcp import PROBE_VENDOR_CLASS

log = structlog.get_logger("vaquero.netboot.dhcp")

BROADCAST_DEST = ("255.255.255.255", 68)
PXE_PORT = 4011
EVENT_PERIOD_S = 60.0  # at most one unknown-mac event per MAC per period
MALFORMED_EVENT_PERIOD_S = 10.0
MAX_TRACKED_MACS = 4096

EventSink = Callable[..., None]
Reply = tuple[bytes, tuple[str, int]]


def _ip_text(raw: bytes) -> str:
    return "%d.%d.%d.%d" % tuple(raw)  # noqa: UP031 -- the fastest way, on a hot path


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class Counters(dict[str, int]):
    """Plain named integers for /metrics: requests by type, replies, unknown, malformed..."""

    def inc(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n


class Responder:
    """Answers datagrams from the current table; `table` is replaced, never mutated."""

    def __init__(
        self,
        table: tbl.DhcpTable,
        mode: str = "server",
        on_event: EventSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in ("server", "proxy"):
            raise ValueError(f"mode must be 'server' or 'proxy', not {mode!r}")
        self.table = table
        self.mode = mode
        self.counters = Counters()
        self._on_event = on_event
        self._clock = clock
        self._last_event: dict[tuple[str, bytes], float] = {}
        self._next_prune = 0.0
        self._malformed_last = -MALFORMED_EVENT_PERIOD_S

    # -- events ---------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, **fields)
        except Exception:  # a journal failure must never stop the DHCP service
            log.exception("dhcp.event_callback_failed", kind=kind)

    def _may_report(self, kind: str, mac: bytes) -> bool:
        """One event per kind and MAC per period: a looping client must not flood the
        journal. The memory is bounded; a flood of fresh MACs is suppressed, not stored."""
        now = self._clock()
        key = (kind, mac)
        last = self._last_event.get(key)
        if last is not None and now - last < EVENT_PERIOD_S:
            self.counters.inc("events_suppressed")
            return False
        if len(self._last_event) >= MAX_TRACKED_MACS:
            if now >= self._next_prune:  # at most once a second: a MAC flood stays cheap
                self._next_prune = now + 1.0
                cutoff = now - EVENT_PERIOD_S
                self._last_event = {k: t for k, t in self._last_event.items() if t >= cutoff}
            if len(self._last_event) >= MAX_TRACKED_MACS:
                self.counters.inc("events_suppressed")
                return False
        self._last_event[key] = now
        return True

    def _unknown(self, req: wire.Request, src: tuple[str, int]) -> None:
        self.counters.inc("unknown")
        if req.vendor_class == PROBE_VENDOR_CLASS:  # a peer looking for rogue servers
            return
        if not self._may_report("unknown-mac", req.chaddr):
            return
        fields = {
            "mac": mac_text(req.chaddr),
            "message": wire.MESSAGE_NAMES.get(req.msg_type, str(req.msg_type)),
            "src": src[0],
            "giaddr": _ip_text(req.giaddr),
        }
        if req.client_uuid:
            fields["uuid"] = req.client_uuid.hex()
        log.info("dhcp.unknown_mac", **fields)
        self._event("unknown-mac", **fields)

    def _malformed(self, reason: str, src: tuple[str, int], size: int) -> None:
        self.counters.inc("malformed")
        now = self._clock()
        if now - self._malformed_last < MALFORMED_EVENT_PERIOD_S:
            return
        self._malformed_last = now
        log.info("dhcp.malformed", reason=reason, src=src[0], size=size)
        self._event("malformed", reason=reason, src=src[0], size=size)

    # -- dispatch -------------------------------------------------------------------------

    def handle(self, data: bytes, src: tuple[str, int], port: int = 67) -> Reply | None:
        """Decide the answer to one datagram received on `port` (67, or 4011 in proxy mode)."""
        try:
            req = wire.parse_request(data)
        except wire.MalformedPacket as exc:
            self._malformed(str(exc), src, len(data))
            return None
        counters = self.counters
        counters.inc(wire.MESSAGE_NAMES.get(req.msg_type, "other"))
        if port == PXE_PORT:
            counters.inc("pxe_port")  # boot server requests (proxy mode), a subset of the above
        if req.htype != 1 or req.hlen != 6:
            counters.inc("ignored")  # only Ethernet hardware is declared
            return None
        reply = self._proxy(req, src, port) if self.mode == "proxy" else self._server(req, src)
        if reply is not None:
            counters.inc("replies")
        return reply

    def _dest(self, req: wire.Request) -> tuple[str, int]:
        if req.giaddr != wire.ZERO_IP:
            return (_ip_text(req.giaddr), 67)
        if req.ciaddr != wire.ZERO_IP:
            return (_ip_text(req.ciaddr), 68)
        return BROADCAST_DEST

    def _host(self, req: wire.Request, src: tuple[str, int]) -> tbl.Host | None:
        host = self.table.lookup(req)
        if host is None:
            self._unknown(req, src)
            return None
        if req.giaddr != wire.ZERO_IP and not host.on_subnet(req.giaddr):
            # A relay on another subnet: our answer would hand out an unroutable address.
            self.counters.inc("wrong_subnet")
            return None
        return host

    def _server(self, req: wire.Request, src: tuple[str, int]) -> Reply | None:
        table = self.table
        mt = req.msg_type
        if mt == wire.DISCOVER:
            host = self._host(req, src)
            if host is None:
                return None
            return self._reply(table, host, tbl.OFFER, req, self._dest(req))
        if mt == wire.REQUEST:
            if req.server_id is not None and req.server_id != table.server_ip:
                self.counters.inc("other_server")  # the client chose another peer's offer
                return None
            host = self._host(req, src)
            if host is None:
                return None
            wanted = req.requested_ip or req.ciaddr
            if wanted == host.ip:
                return self._reply(table, host, tbl.ACK, req, self._dest(req))
            return self._nak(table, req, "address-not-reserved")
        if mt == wire.INFORM:
            host = self._host(req, src)
            if host is None:
                return None
            return self._reply(table, host, tbl.INFORM_ACK, req, self._dest(req), ciaddr=req.ciaddr)
        if mt == wire.DECLINE:
            self._declined(req, src)
            return None
        if mt == wire.RELEASE:
            host = table.lookup(req)
            if not self._may_report("release", req.chaddr):
                return None
            log.info("dhcp.release", mac=mac_text(req.chaddr), ip=_ip_text(req.ciaddr))
            self._event(
                "release",
                mac=mac_text(req.chaddr),
                ip=_ip_text(req.ciaddr),
                known=host is not None,
            )
            return None
        self.counters.inc("ignored")
        return None

    def _declined(self, req: wire.Request, src: tuple[str, int]) -> None:
        """Another machine uses a reserved address: an SoT or cabling problem worth a page."""
        ip = _ip_text(req.requested_ip) if req.requested_ip else ""
        if not self._may_report("decline", req.chaddr):
            return
        log.warning("dhcp.decline", mac=mac_text(req.chaddr), ip=ip, src=src[0])
        self._event("decline", mac=mac_text(req.chaddr), ip=ip, src=src[0])

    def _proxy(self, req: wire.Request, src: tuple[str, int], port: int) -> Reply | None:
        """proxyDHCP: boot information for PXE/HTTP-boot clients only, never an address."""
        variant = tbl.boot_variant(req)
        if variant == tbl.PLAIN:
            self.counters.inc("ignored")  # not a network-boot client: the real server's job
            return None
        mt = req.msg_type
        if port == PXE_PORT:
            if mt not in (wire.DISCOVER, wire.REQUEST, wire.INFORM):
                self.counters.inc("ignored")
                return None
            kind = tbl.PROXY_OFFER if mt == wire.DISCOVER else tbl.PROXY_ACK
            if req.giaddr != wire.ZERO_IP:
                dest = self._dest(req)
            elif src[0] != "0.0.0.0":
                dest = src
            else:
                dest = ("255.255.255.255", src[1])
        elif mt == wire.DISCOVER:
            kind, dest = tbl.PROXY_OFFER, self._dest(req)
        elif mt == wire.REQUEST and req.server_id == self.table.server_ip:
            kind, dest = tbl.PROXY_ACK, self._dest(req)
        else:
            self.counters.inc("ignored")  # the REQUEST/RELEASE/... belongs to the real server
            return None
        host = self._host(req, src)
        if host is None:
            return None
        extra = b""
        if req.client_uuid is not None:  # the PXE spec has the proxy echo the client's GUID
            extra = wire.encode_option(wire.OPT_CLIENT_UUID, req.client_uuid)
        return self._reply(
            self.table, host, kind, req, dest, variant=variant, ciaddr=req.ciaddr, tail=extra
        )

    def _reply(
        self,
        table: tbl.DhcpTable,
        host: tbl.Host,
        kind: str,
        req: wire.Request,
        dest: tuple[str, int],
        *,
        variant: str | None = None,
        ciaddr: bytes | None = None,
        tail: bytes = b"",
    ) -> Reply | None:
        body = table.body(host, kind, variant or tbl.boot_variant(req))
        if body is None:
            self.counters.inc("unbootable")  # e.g. HTTP boot asked, no HTTP boot URL declared
            return None
        return wire.patch_reply(body, req, ciaddr=ciaddr, tail=tail), dest

    def _nak(self, table: tbl.DhcpTable, req: wire.Request, why: str) -> Reply:
        self.counters.inc("nak")
        if self._may_report("nak", req.chaddr):  # logged, not journaled: the client recovers
            log.info("dhcp.nak", mac=mac_text(req.chaddr), reason=why)
        body = wire.encode_header(htype=req.htype, hlen=req.hlen, chaddr16=req.chaddr16)
        body += wire.encode_options(
            [(wire.OPT_MESSAGE_TYPE, bytes((wire.NAK,))), (wire.OPT_SERVER_ID, table.server_ip)]
        )
        data = bytearray(wire.patch_reply(body, req))
        if req.giaddr != wire.ZERO_IP:
            data[10] |= 0x80  # RFC 2131 4.3.2: the relay must broadcast a NAK
            return bytes(data), (_ip_text(req.giaddr), 67)
        return bytes(data), BROADCAST_DEST
