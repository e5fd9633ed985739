"""Our DHCP wire codec checked against scapy's, an independent implementation of the format."""

from __future__ import annotations

import pytest
from dhcp_support import mac_of, make_spec, opts
from scapy.layers.dhcp import BOOTP, DHCP

from appliance.netboot import dhcp_codec as wire
from appliance.netboot import dhcp_table as t

MAC = bytes.fromhex("525400abcdef")


def request(msg: str = "discover", **kw) -> bytes:
    options = kw.pop("options", [])
    pkt = BOOTP(chaddr=MAC, **kw) / DHCP(options=[("message-type", msg), *options, "end"])
    return bytes(pkt)


def test_parse_reads_what_scapy_wrote() -> None:
    agent = b"\x01\x04port\x02\x03abc"
    data = request(
        "request",
        xid=0xDEADBEEF,
        secs=7,
        flags=0x8000,
        ciaddr="198.18.0.9",
        giaddr="198.18.0.60",
        options=[
            ("requested_addr", "198.18.0.12"),
            ("server_id", "198.18.0.1"),
            ("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"),
            ("client_id", b"\x01" + MAC),
            ("user_class", b"iPXE"),
            ("relay_agent_information", agent),
            ("pxe_client_architecture", b"\x00\x07\x00\x09"),
            ("pxe_client_machine_identifier", b"\x00" + bytes(range(16))),
        ],
    )
    req = wire.parse_request(data)
    assert (req.op, req.htype, req.hlen, req.xid, req.secs, req.flags) == (
        1,
        1,
        6,
        0xDEADBEEF,
        7,
        0x8000,
    )
    assert req.ciaddr == bytes([198, 18, 0, 9]) and req.giaddr == bytes([198, 18, 0, 60])
    assert req.chaddr == MAC and req.chaddr16 == MAC + bytes(10)
    assert req.msg_type == wire.REQUEST
    assert req.requested_ip == bytes([198, 18, 0, 12])
    assert req.server_id == bytes([198, 18, 0, 1])
    assert req.vendor_class == b"PXEClient:Arch:00007:UNDI:003016"
    assert req.client_id == b"\x01" + MAC
    assert req.user_class == b"iPXE"
    assert req.relay_agent == agent
    assert wire.client_arches(req) == (7, 9)
    assert req.client_uuid == b"\x00" + bytes(range(16))


def test_repeated_option_is_concatenated() -> None:
    """RFC 3396: long values arrive split into several instances of the same option."""
    data = request(options=[("vendor_class_id", b"PXE"), ("vendor_class_id", b"Client")])
    assert wire.parse_request(data).vendor_class == b"PXEClient"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short"),
        (request()[:239], "short"),
        (request()[:236] + b"\x00\x00\x00\x00" + request()[240:], "no-cookie"),
        (
            bytes(BOOTP(op=2, chaddr=MAC) / DHCP(options=[("message-type", 2), "end"])),
            "not-request",
        ),
        (
            bytes(BOOTP(hlen=17, chaddr=MAC) / DHCP(options=[("message-type", 1), "end"])),
            "bad-hlen",
        ),
        (request()[:240] + b"\x35\x01\x01\x3c\x10abc", "truncated-option"),
        (request()[:240] + b"\x35", "truncated-option"),
        (request()[:240] + b"\x3c\x03abc\xff", "no-message-type"),
        (request()[:240] + b"\x35\x02\x01\x01\xff", "no-message-type"),
    ],
)
def test_malformed_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(wire.MalformedPacket, match=reason):
        wire.parse_request(data)


def test_encoded_reply_decodes_with_scapy_and_patch_answers_the_request() -> None:
    table = t.compile_table(make_spec(), "br0")
    host = table.by_mac[bytes.fromhex(mac_of(10).replace(":", ""))]
    body = table.body(host, t.ACK, t.BIOS)
    agent = b"\x01\x02ab"
    req = wire.parse_request(
        request(
            "request",
            xid=0x11223344,
            flags=0x8000,
            giaddr="198.18.0.60",
            options=[("relay_agent_information", agent)],
        )
    )
    reply = BOOTP(wire.patch_reply(body, req))
    o = opts(reply)
    assert reply.op == 2 and reply.xid == 0x11223344 and reply.flags == 0x8000
    assert reply.secs == 0 and reply.giaddr == "198.18.0.60"
    assert reply.chaddr[:6] == MAC  # the requester's, not the reservation's
    assert reply.yiaddr == "198.18.0.10" and reply.siaddr == "198.18.0.1"
    assert reply.file.rstrip(b"\0") == b"undionly.kpxe"
    assert o["message-type"] == 5 and o["server_id"] == "198.18.0.1"
    assert o["subnet_mask"] == "255.255.255.0" and o["router"] == "198.18.0.1"
    assert o["name_server"] == ("198.18.0.53", "198.18.0.54")
    assert o["hostname"] == b"node10" and o["domain"] == b"lab.example"
    assert o["lease_time"] == 3600 and o["interface-mtu"] == 1500
    assert o["NTP_server"] == "198.18.0.123" and o["broadcast_address"] == "198.18.0.255"
    assert o["tftp_server_name"] == b"198.18.0.1" and o["boot-file-name"] == b"undionly.kpxe"
    assert o[224] == b"vaquero"
    assert o["relay_agent_information"] == agent
    assert reply[DHCP].options[0] == ("message-type", 5)  # some ROMs want 53 first
    assert len(bytes(reply)) >= wire.MIN_REPLY


def test_long_option_is_split_and_read_back_whole() -> None:
    value = bytes(range(256)) + b"tail"
    encoded = wire.encode_option(224, value)
    assert encoded[:2] == b"\xe0\xff" and encoded[257:259] == b"\xe0\x05"
    data = request()[:240] + b"\x35\x01\x01" + encoded + b"\xff"
    assert wire.parse_request(data).client_uuid is None  # and no exception
    body = wire.encode_header(htype=1, hlen=6, chaddr16=MAC) + encoded
    decoded = [o for o in BOOTP(wire.finish(body))[DHCP].options if o[0] == 224]
    assert b"".join(o[1] for o in decoded) == value


def test_header_fields_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError):
        wire.encode_header(htype=1, hlen=6, chaddr16=MAC, file=b"x" * 128)
    with pytest.raises(ValueError):
        wire.encode_option(255, b"x")
