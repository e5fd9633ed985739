"""The wire watch rig: its parsing checked against frames scapy builds (an encoder that is not
ours), and a real watch on a bridge seeing a datagram that one namespace sends another."""

from __future__ import annotations

import socket
import time

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from tools.rigs.netns import NetnsRig
from tools.rigs.netns import unavailable_reason as netns_unavailable
from tools.rigs.wire_watch import DHCP_ACK, DHCP_OFFER, Packet, WireWatch, dhcp_reply, parse

MAC = "52:54:00:77:00:01"


def ack(kind: str = "ack", server: str = "198.18.0.3") -> bytes:
    return bytes(Ether(src="52:54:00:aa:00:03", dst="ff:ff:ff:ff:ff:ff")
                 / IP(src=server, dst="255.255.255.255") / UDP(sport=67, dport=68)
                 / BOOTP(op=2, yiaddr="198.18.0.31", chaddr=bytes.fromhex(MAC.replace(":", "")))
                 / DHCP(options=[("message-type", kind), ("server_id", server), "end"]))


def test_a_dhcp_ack_is_read_with_its_server_and_client() -> None:
    reply = dhcp_reply(parse(ack(), 1.0))
    assert reply is not None
    assert (reply.kind, reply.client_mac, reply.yiaddr, reply.server_id) == (
        DHCP_ACK, MAC, "198.18.0.31", "198.18.0.3")
    assert dhcp_reply(parse(ack("offer"), 1.0)).kind == DHCP_OFFER


def test_a_tagged_tcp_segment_gives_its_addresses_ports_and_payload() -> None:
    frame = bytes(Ether() / Dot1Q(vlan=7) / IP(src="198.18.0.31", dst="198.18.0.2")
                  / TCP(sport=40000, dport=8080, flags="PA") / b"GET /artifacts/x HTTP/1.1\r\n")
    pkt = parse(frame, 2.0)
    assert pkt is not None
    assert (pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport) == (
        "tcp", "198.18.0.31", "198.18.0.2", 40000, 8080)
    assert pkt.payload == b"GET /artifacts/x HTTP/1.1\r\n"
    assert dhcp_reply(pkt) is None


@pytest.mark.parametrize("cut", [0, 13, 20, 33, 41, 100, 250, 280])
def test_truncated_or_foreign_frames_are_none_never_an_error(cut: int) -> None:
    frame = ack()[:cut]
    pkt = parse(frame, 0.0)
    assert pkt is None or dhcp_reply(pkt) is None
    assert parse(bytes(Ether(type=0x86DD) / (b"\x60" * 60)), 0.0) is None  # IPv6: not ours


def test_the_watch_sees_what_the_bridge_forwards_between_two_namespaces() -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    seen: list[Packet] = []

    def on_packet(pkt: Packet) -> bool:
        if pkt.proto == "udp" and pkt.dport == 9999:
            seen.append(pkt)
            return True
        return False

    with NetnsRig() as rig:
        lan = rig.netns("lan")
        rig.bridge(lan, "br0")
        a, b = rig.netns("a"), rig.netns("b")
        rig.veth(lan, a, bridge="br0", cidr_b="198.18.0.10/24")
        rig.veth(lan, b, bridge="br0", cidr_b="198.18.0.11/24")
        with WireWatch(lan, "br0", on_packet) as watch:
            sender = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for _ in range(50):  # the links come up within a second or so
                    sender.sendto(b"hello", ("198.18.0.11", 9999))
                    if watch.wait(timeout=0.2):
                        break
                    time.sleep(0.05)
            finally:
                sender.close()
    assert seen and (seen[0].src, seen[0].dst, seen[0].payload) == (
        "198.18.0.10", "198.18.0.11", b"hello")
