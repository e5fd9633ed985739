"""DHCPv4 wire format: the small codec every other DHCP module goes through.

Why our own code instead of scapy on the hot path: scapy dissects about 9k and builds about
3k packets/s here, and a boot storm must not queue behind it. The hot path only needs a
dozen fields, which `parse_request` reads straight from the bytes; replies are encoded once
per boot table (`encode_reply`) and per request only their header fields are patched
(`patch_reply`). scapy (GPL-2.0) is kept out of the runtime entirely: the tests use it as the
independent reference decoder, so this module can be checked against it and swapped freely.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_FIXED = 236  # op .. file, before the magic cookie
MIN_REPLY = 300  # RFC 951/1542: BOOTP relays and old clients expect at least 300 bytes

# Message types (option 53).
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
MESSAGE_NAMES = {
    DISCOVER: "discover",
    OFFER: "offer",
    REQUEST: "request",
    DECLINE: "decline",
    ACK: "ack",
    NAK: "nak",
    RELEASE: "release",
    INFORM: "inform",
}

# Option codes the server reads or writes.
OPT_PAD, OPT_END = 0, 255
OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN = 1, 3, 6, 12, 15
OPT_MTU, OPT_BROADCAST, OPT_NTP, OPT_VENDOR_SPECIFIC = 26, 28, 42, 43
OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_OVERLOAD, OPT_MESSAGE_TYPE, OPT_SERVER_ID = 50, 51, 52, 53, 54
OPT_MESSAGE, OPT_VENDOR_CLASS, OPT_CLIENT_ID, OPT_TFTP_SERVER, OPT_BOOTFILE = 56, 60, 61, 66, 67
OPT_USER_CLASS, OPT_RELAY_AGENT, OPT_CLIENT_ARCH, OPT_CLIENT_UUID = 77, 82, 93, 97

_HEAD = struct.Struct("!BBBBIHH4s4s4s4s")  # op htype hlen hops xid secs flags ci yi si gi
_XID_SECS_FLAGS = struct.Struct("!IHH")
BROADCAST_FLAG = 0x8000
ZERO_IP = b"\x00\x00\x00\x00"


class MalformedPacket(ValueError):
    """The datagram is not a DHCP request we can read; the caller drops and counts it."""


@dataclass(slots=True)
class Request:
    """The fields of a client message that the server decides on. Raw bytes, no copies."""

    op: int
    htype: int
    hlen: int
    xid: int
    secs: int
    flags: int
    ciaddr: bytes
    giaddr: bytes
    chaddr: bytes  # the hardware address, hlen bytes
    chaddr16: bytes  # the full 16-byte field, echoed verbatim in replies
    msg_type: int
    requested_ip: bytes | None = None  # 50
    server_id: bytes | None = None  # 54
    vendor_class: bytes | None = None  # 60
    client_id: bytes | None = None  # 61
    user_class: bytes | None = None  # 77
    relay_agent: bytes | None = None  # 82, echoed verbatim
    client_arch: bytes | None = None  # 93, one or more 16-bit types
    client_uuid: bytes | None = None  # 97, type byte + 16-byte UUID


# long: one pass over the bytes on the hot path; helpers would cost a call per option.
def parse_request(data: bytes) -> Request:
    """Read a BOOTREQUEST with its DHCP options; raise MalformedPacket on anything odd.

    Only the options the server uses are kept. Option overload (52) is not honoured: clients
    do not overload requests in practice, and ignoring it cannot make us answer wrongly,
    only miss a field.
    """
    n = len(data)
    if n < BOOTP_FIXED + 4:
        raise MalformedPacket("short")
    if data[BOOTP_FIXED : BOOTP_FIXED + 4] != MAGIC_COOKIE:
        raise MalformedPacket("no-cookie")
    op, htype, hlen, _hops, xid, secs, flags, ciaddr, _yi, _si, giaddr = _HEAD.unpack_from(data)
    if op != 1:
        raise MalformedPacket("not-request")
    if hlen > 16 or hlen == 0:
        raise MalformedPacket("bad-hlen")
    chaddr16 = data[28:44]
    opts: dict[int, bytes] = {}
    i = BOOTP_FIXED + 4
    while i < n:
        code = data[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            break
        if i + 1 >= n:
            raise MalformedPacket("truncated-option")
        end = i + 2 + data[i + 1]
        if end > n:
            raise MalformedPacket("truncated-option")
        value = data[i + 2 : end]
        # RFC 3396: a repeated option is concatenated.
        opts[code] = opts[code] + value if code in opts else value
        i = end
    mt = opts.get(OPT_MESSAGE_TYPE)
    if mt is None or len(mt) != 1:
        raise MalformedPacket("no-message-type")
    get = opts.get
    return Request(
        op,
        htype,
        hlen,
        xid,
        secs,
        flags,
        ciaddr,
        giaddr,
        chaddr16[:hlen],
        chaddr16,
        mt[0],
        get(OPT_REQUESTED_IP),
        get(OPT_SERVER_ID),
        get(OPT_VENDOR_CLASS),
        get(OPT_CLIENT_ID),
        get(OPT_USER_CLASS),
        get(OPT_RELAY_AGENT),
        get(OPT_CLIENT_ARCH),
        get(OPT_CLIENT_UUID),
    )


def encode_option(code: int, value: bytes) -> bytes:
    """One TLV; values over 255 bytes are split into consecutive instances (RFC 3396)."""
    if not 0 < code < 255:
        raise ValueError(f"option code {code} cannot carry a value")
    if not value:
        return bytes((code, 0))
    return b"".join(
        bytes((code, len(value[i : i + 255]))) + value[i : i + 255]
        for i in range(0, len(value), 255)
    )


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(encode_option(code, value) for code, value in options)


def encode_header(
    *,
    htype: int,
    hlen: int,
    chaddr16: bytes,
    yiaddr: bytes = ZERO_IP,
    siaddr: bytes = ZERO_IP,
    sname: bytes = b"",
    file: bytes = b"",
) -> bytes:
    """The fixed BOOTREPLY part plus the magic cookie; xid/secs/flags/ciaddr/giaddr zero."""
    if len(sname) > 63 or len(file) > 127:
        raise ValueError("sname/file too long for the BOOTP header")
    head = _HEAD.pack(2, htype, hlen, 0, 0, 0, 0, ZERO_IP, yiaddr, siaddr, ZERO_IP)
    return (
        head
        + chaddr16.ljust(16, b"\x00")
        + sname.ljust(64, b"\x00")
        + file.ljust(128, b"\x00")
        + MAGIC_COOKIE
    )


def finish(body: bytes) -> bytes:
    """Close a reply body (header + options) with END and pad it to the BOOTP minimum."""
    out = body + b"\xff"
    if len(out) < MIN_REPLY:
        out += bytes(MIN_REPLY - len(out))
    return out


def patch_reply(
    body: bytes,
    req: Request,
    *,
    ciaddr: bytes | None = None,
    tail: bytes = b"",
) -> bytes:
    """Copy a precompiled reply body and make it answer `req`.

    Patches xid, flags (secs stay 0 as RFC 2131 wants from servers), giaddr, chaddr (the
    host may have matched by UUID from another NIC), optionally ciaddr, and appends
    per-request options (the relay agent's option 82 echo, a UUID echo) before END.
    Everything else was encoded once when the table was compiled.
    """
    buf = bytearray(body)
    _XID_SECS_FLAGS.pack_into(buf, 4, req.xid, 0, req.flags)
    if ciaddr is not None:
        buf[12:16] = ciaddr
    buf[24:28] = req.giaddr
    buf[28:44] = req.chaddr16
    if req.relay_agent is not None:
        tail += encode_option(OPT_RELAY_AGENT, req.relay_agent)
    if tail:
        buf += tail
    buf.append(OPT_END)
    if len(buf) < MIN_REPLY:
        buf += bytes(MIN_REPLY - len(buf))
    return bytes(buf)


def client_arches(req: Request) -> tuple[int, ...]:
    """Option 93 as a tuple of architecture types (RFC 4578); empty when absent or odd."""
    raw = req.client_arch
    if not raw or len(raw) % 2:
        return ()
    return tuple(struct.unpack(f"!{len(raw) // 2}H", raw))
