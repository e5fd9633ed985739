"""Crafted DHCP packets over a real boot network: PXE selection, relay, proxyDHCP, odd messages.

Packets are built and replies decoded with scapy, an implementation independent of ours. To
prove that a message got no answer without waiting on a clock, each such message is followed
by a "barrier" DISCOVER on the same socket: the server handles datagrams in order, so the
first reply that arrives must be the barrier's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest
from dhcp_support import (
    HTTP_BOOT_URL,
    SCRIPT_URL,
    SERVER_IP,
    BootNet,
    Client,
    dhcp_packet,
    mac_of,
    make_spec,
    opts,
)
from scapy.layers.dhcp import BOOTP

from appliance.netboot import dhcp_table as t

pytestmark = pytest.mark.root

CLIENT_IP = "198.18.0.200"


@pytest.fixture
def client(boot_net: BootNet):
    ns = boot_net.client("cli", "52:54:00:aa:00:01", cidr=f"{CLIENT_IP}/24")
    c = Client(ns, ("0.0.0.0", 68))
    yield c
    c.close()


PXE_CASES = [
    # (vendor class, option 93, user class, expected file, expected option 60 in reply)
    (b"PXEClient:Arch:00000:UNDI:002001", b"\x00\x00", None, "undionly.kpxe", None),
    (b"PXEClient:Arch:00007:UNDI:003016", b"\x00\x07", None, "snponly.efi", None),
    (b"PXEClient:Arch:00011:UNDI:003000", b"\x00\x0b", None, "ipxe-arm64.efi", None),
    (b"HTTPClient:Arch:00016:UNDI:003000", b"\x00\x10", None, HTTP_BOOT_URL, b"HTTPClient"),
    (b"PXEClient:Arch:00007:UNDI:003010", b"\x00\x07", b"iPXE", SCRIPT_URL, None),
    (None, None, None, None, None),  # a plain DHCP client: an address, no boot file
]


@pytest.mark.parametrize(("vendor", "arch", "user_class", "expected", "vendor_reply"), PXE_CASES)
def test_architecture_selects_boot_file(
    boot_net: BootNet, client: Client, vendor, arch, user_class, expected, vendor_reply
) -> None:
    boot_net.start()
    extra = []
    if vendor:
        extra.append(("vendor_class_id", vendor))
    if arch:
        extra.append(("pxe_client_architecture", arch))
    if user_class:
        extra.append(("user_class", user_class))
    client.send(dhcp_packet(mac_of(12), "discover", 0x1001, options=extra))
    reply, src = client.recv()
    o = opts(reply)
    assert src == (SERVER_IP, 67)
    assert reply.xid == 0x1001 and reply.op == 2
    assert o["message-type"] == 2
    assert reply.yiaddr == "198.18.0.12"
    assert o["server_id"] == SERVER_IP
    assert o.get("vendor_class_id") == vendor_reply
    # iPXE is told not to wait for a ProxyDHCP offer (option 175, sub-option 176 = 1)
    assert (o.get(175) == b"\xb0\x01\x01") == (user_class == b"iPXE"), o.get(175)
    if expected is None:
        assert "boot-file-name" not in o
        assert reply.file.rstrip(b"\0") == b""
    else:
        assert o["boot-file-name"] == expected.encode()
        assert reply.file.rstrip(b"\0") == expected.encode()
        assert reply.siaddr == SERVER_IP


def test_relayed_discover_is_unicast_to_giaddr_with_option_82(boot_net: BootNet) -> None:
    server = boot_net.start()
    relay_ip = "198.18.0.60"
    ns = boot_net.client("relay", "52:54:00:aa:00:02", cidr=f"{relay_ip}/24")
    relay = Client(ns, (relay_ip, 67))  # bound to a unicast address: no broadcast reaches it
    agent = b"\x01\x06circ-7\x02\x04rid1"
    try:
        relay.send(
            dhcp_packet(
                mac_of(13),
                "discover",
                0x2002,
                giaddr=relay_ip,
                options=[("relay_agent_information", agent)],
            ),
            (SERVER_IP, 67),
        )
        offer, src = relay.recv()
        assert src == (SERVER_IP, 67)
        assert offer.giaddr == relay_ip and offer.yiaddr == "198.18.0.13"
        assert opts(offer)["relay_agent_information"] == agent
        relay.send(
            dhcp_packet(
                mac_of(13),
                "request",
                0x2003,
                giaddr=relay_ip,
                options=[
                    ("server_id", SERVER_IP),
                    ("requested_addr", "198.18.0.13"),
                    ("relay_agent_information", agent),
                ],
            ),
            (SERVER_IP, 67),
        )
        ack, _ = relay.recv()
        assert opts(ack)["message-type"] == 5 and ack.yiaddr == "198.18.0.13"
        assert opts(ack)["relay_agent_information"] == agent
    finally:
        relay.close()
    assert server.counters["replies"] == 2


def test_malformed_packets_are_dropped_and_counted(boot_net: BootNet, client: Client) -> None:
    server = boot_net.start()
    good = dhcp_packet(mac_of(10), "discover", 0x3003)
    client.send(b"\x01" * 10)  # short
    client.send(good[:236] + b"XXXX" + good[240:])  # no magic cookie
    client.send(good[:-1] + b"\x3c\x40abc")  # option 60 claims 64 bytes, has 3
    client.send(bytes(BOOTP(chaddr=b"\x52\x54\x00\x12\x00\x0a")))  # BOOTP, no DHCP type
    reply = client.barrier(mac_of(10), 0x3004)
    assert reply.xid == 0x3004
    assert server.counters["malformed"] == 4
    malformed = [f for kind, f in boot_net.events if kind == "malformed"]
    assert len(malformed) == 1 and malformed[0]["reason"] == "short"  # events rate limited


def test_uuid_matches_when_mac_is_not_declared(boot_net: BootNet, client: Client) -> None:
    boot_net.start()
    uuid = bytes.fromhex("00000000000040008000" + f"{11:012x}")
    client.send(
        dhcp_packet(
            "52:54:00:77:77:77",
            "discover",
            0x4004,
            options=[("pxe_client_machine_identifier", b"\x00" + uuid)],
        )
    )
    reply, _ = client.recv()
    assert reply.yiaddr == "198.18.0.11"
    assert reply.chaddr[:6] == bytes.fromhex("525400777777")


def test_decline_release_and_wrong_requests(boot_net: BootNet, client: Client) -> None:
    server = boot_net.start()
    mac = mac_of(12)
    client.send(
        dhcp_packet(
            mac,
            "decline",
            0x5001,
            options=[("requested_addr", "198.18.0.12"), ("server_id", SERVER_IP)],
        )
    )
    client.send(
        dhcp_packet(
            mac, "release", 0x5002, ciaddr="198.18.0.12", options=[("server_id", SERVER_IP)]
        )
    )
    # A REQUEST for another peer's offer is none of our business: silence.
    client.send(
        dhcp_packet(
            mac,
            "request",
            0x5003,
            options=[("server_id", "198.18.0.2"), ("requested_addr", "198.18.0.12")],
        )
    )
    assert client.barrier(mac, 0x5004).xid == 0x5004
    kinds = {kind: f for kind, f in boot_net.events}
    assert kinds["decline"]["mac"] == mac and kinds["decline"]["ip"] == "198.18.0.12"
    assert kinds["release"]["ip"] == "198.18.0.12" and kinds["release"]["known"] is True
    assert server.counters["other_server"] == 1
    # INIT-REBOOT asking for an address that is not its reservation: NAK.
    client.send(dhcp_packet(mac, "request", 0x5005, options=[("requested_addr", "198.18.0.99")]))
    nak, _ = client.recv()
    assert nak.xid == 0x5005 and opts(nak)["message-type"] == 6 and nak.yiaddr == "0.0.0.0"


def test_inform_gets_options_without_address_unicast(boot_net: BootNet) -> None:
    boot_net.start()
    ns = boot_net.client("cli", mac_of(12), cidr="198.18.0.12/24")
    c = Client(ns, ("198.18.0.12", 68))  # unicast only
    try:
        c.send(dhcp_packet(mac_of(12), "inform", 0x6006, ciaddr="198.18.0.12"))
        ack, src = c.recv()
    finally:
        c.close()
    o = opts(ack)
    assert src == (SERVER_IP, 67)
    assert o["message-type"] == 5 and ack.yiaddr == "0.0.0.0" and ack.ciaddr == "198.18.0.12"
    assert "lease_time" not in o  # RFC 2131 4.3.5: no lease in an INFORM answer
    assert o["router"] == SERVER_IP and o["domain"] == b"lab.example"


def test_requests_lost_in_a_burst_are_counted(boot_net: BootNet, client: Client) -> None:
    """While the server is busy, the kernel queue overflows: the loss must show in counters."""
    server = boot_net.start()
    busy = threading.Event()
    boot_net.loop.call(busy.wait, 30)  # the server's loop is stuck until we set `busy`
    burst = 5000  # far more than the 1 MiB receive buffer holds
    flood = dhcp_packet("52:54:00:99:00:01", "discover", 0x8000)  # unknown: no replies
    try:
        for _ in range(burst):
            client.send(flood)
    finally:
        busy.set()
    # Let the server drain its queue: once a round trip through its loop handles nothing
    # new, its socket is not readable any more (a readable socket is served every iteration).
    handled = -1
    for _ in range(burst):
        before = server.counters.get("unknown", 0)
        boot_net.loop.run(asyncio.sleep(0))
        if before == handled:
            break
        handled = before
    assert client.barrier(mac_of(10), 0x8001).xid == 0x8001
    lost = server.counters.get("rx_overflow_67", 0)
    assert lost > 0
    assert server.counters["unknown"] + lost == burst  # handled, or counted as lost


def test_swap_table_serves_the_new_revision(boot_net: BootNet, client: Client) -> None:
    server = boot_net.start(spec=make_spec(count=4))  # hosts 10..13
    client.send(dhcp_packet(mac_of(14), "discover", 0x9001))
    assert client.barrier(mac_of(10), 0x9002).xid == 0x9002  # 14 got no answer
    new = t.compile_table(make_spec(count=5), "br0", revision="next")
    server.swap_table(new)  # from another thread: one reference assignment
    client.send(dhcp_packet(mac_of(14), "discover", 0x9003))
    reply, _ = client.recv()
    assert reply.xid == 0x9003 and reply.yiaddr == "198.18.0.14"
    with pytest.raises(ValueError, match="another server address"):
        other = dataclasses.replace(
            make_spec(), server=t.ServerIdentity({"br0": "198.18.0.9"}, "198.18.0.9")
        )
        server.swap_table(t.compile_table(other, "br0"))
