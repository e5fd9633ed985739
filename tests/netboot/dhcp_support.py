"""Helpers for the DHCP tests: the boot network, a DHCP table, a running server.

The DHCP server runs in this test process, on an asyncio loop in a thread that entered the
server namespace (tools.rigs.netns.LoopThread): its sockets live in the namespace, while the
test reads its counters and events directly, with no IPC to get wrong. Clients (dhclient,
perfdhcp, crafted packets) run in other namespaces joined to the server's bridge by veths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.netboot import dhcp_table as t
from appliance.netboot.dhcp_server import DhcpServer
from tools.rigs.netns import LoopThread, Netns, NetnsRig

SERVER_IP = "198.18.0.1"
SUBNET = "198.18.0.0/24"
SCRIPT_URL = "http://198.18.0.1/boot.ipxe"
HTTP_BOOT_URL = "http://198.18.0.1/assets/ipxe/snponly.efi"


def mac_of(i: int) -> str:
    return f"52:54:00:12:{i >> 8:02x}:{i & 0xFF:02x}"


def ip_of(i: int) -> str:
    return f"198.18.{i >> 8}.{i & 0xFF}"


def make_spec(count: int = 4, interface: str = "br0", first: int = 10) -> t.TableSpec:
    """`count` reservations: host i has MAC mac_of(i) and address ip_of(i), i from `first`."""
    subnet = t.SubnetSpec(
        cidr=SUBNET if count + first < 255 else "198.18.0.0/20",
        gateway=SERVER_IP,
        dns=("198.18.0.53", "198.18.0.54"),
        domain="lab.example",
        ntp=("198.18.0.123",),
        lease_time=3600,
        mtu=1500,
        extra_options=((224, b"vaquero"),),
    )
    boot = t.BootFiles(
        ipxe_script_url=SCRIPT_URL,
        arm64="ipxe-arm64.efi",
        http_boot_url=HTTP_BOOT_URL,
    )
    reservations = tuple(
        t.ReservationSpec(
            mac=mac_of(i),
            ipv4=ip_of(i),
            hostname=f"node{i}.lab.example",
            subnet=subnet.cidr,
            boot=boot,
            uuid=f"00000000-0000-4000-8000-{i:012x}",
        )
        for i in range(first, first + count)
    )
    return t.TableSpec(
        subnets=(subnet,),
        reservations=reservations,
        server=t.ServerIdentity({interface: SERVER_IP}, next_server=SERVER_IP),
    )


@dataclass
class BootNet:
    """The server namespace with bridge br0 (198.18.0.1/24) and ways to attach clients."""

    rig: NetnsRig
    srv: Netns
    loop: LoopThread
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    server: DhcpServer | None = None

    def client(self, label: str, mac: str, cidr: str | None = None) -> Netns:
        ns = self.rig.netns(label)
        self.rig.veth(self.srv, ns, bridge="br0", mac_b=mac, cidr_b=cidr)
        return ns

    def start(self, mode: str = "server", spec: t.TableSpec | None = None) -> DhcpServer:
        table = t.compile_table(spec or make_spec(), "br0", revision="test")

        def on_event(kind: str, **fields: Any) -> None:
            self.events.append((kind, fields))

        async def go() -> DhcpServer:
            server = DhcpServer(
                lambda: table, "br0", mode=mode, server_ip=SERVER_IP, on_event=on_event
            )
            await server.start()
            return server

        self.server = self.loop.run(go())
        return self.server
