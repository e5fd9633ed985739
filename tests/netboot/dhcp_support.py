"""Helpers for the DHCP tests: the boot network, a DHCP table, a running server.

The DHCP server runs in this test process, on an asyncio loop in a thread that entered the
server namespace (tools.rigs.netns.LoopThread): its sockets live in the namespace, while the
test reads its counters and events directly, with no IPC to get wrong. Clients (dhclient,
perfdhcp, crafted packets) run in other namespaces joined to the server's bridge by veths.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scapy.layers.dhcp import BOOTP, DHCP

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


RECV_TIMEOUT = 5.0


def dhcp_packet(
    mac: str,
    msg: str,
    xid: int,
    *,
    giaddr: str = "0.0.0.0",
    ciaddr: str = "0.0.0.0",
    options: list | None = None,
) -> bytes:
    pkt = BOOTP(
        chaddr=bytes.fromhex(mac.replace(":", "")),
        xid=xid,
        giaddr=giaddr,
        ciaddr=ciaddr,
        flags=0x8000,
    )
    return bytes(pkt / DHCP(options=[("message-type", msg), *(options or []), "end"]))


def opts(reply: BOOTP) -> dict:
    return {
        o[0]: (o[1] if len(o) == 2 else o[1:]) for o in reply[DHCP].options if isinstance(o, tuple)
    }


class Client:
    """A UDP socket in a client namespace; `send` then `recv` decoded replies."""

    def __init__(self, ns: Netns, bind: tuple[str, int]) -> None:
        self.sock = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
        self.sock.bind(bind)
        self.sock.settimeout(RECV_TIMEOUT)

    def send(self, data: bytes, dest: tuple[str, int] = ("255.255.255.255", 67)) -> None:
        self.sock.sendto(data, dest)

    def recv(self) -> tuple[BOOTP, tuple[str, int]]:
        data, src = self.sock.recvfrom(2048)
        return BOOTP(data), src

    def barrier(self, mac: str, xid: int = 0xBA11) -> BOOTP:
        """Send a DISCOVER that must be answered, return the first reply that arrives."""
        self.send(dhcp_packet(mac, "discover", xid))
        reply, _ = self.recv()
        return reply

    def close(self) -> None:
        self.sock.close()


DHCLIENT_CONF = """
timeout {timeout};
retry 1;
initial-interval 1;
request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers,
        host-name, ntp-servers, interface-mtu;
"""

# dhclient calls this instead of configuring the interface: it records what it was given.
SCRIPT = """#!/bin/sh
env | grep -E '^(reason|new_|interface)' | sort > "{out}/$reason.env"
exit 0
"""


def run_dhclient(ns, tmp_path: Path, timeout: int) -> tuple[int, dict[str, str]]:
    (tmp_path / "dhclient.conf").write_text(DHCLIENT_CONF.format(timeout=timeout))
    script = tmp_path / "script.sh"
    script.write_text(SCRIPT.format(out=tmp_path))
    script.chmod(0o755)
    # -1: one attempt, exit 2 on failure; on success dhclient daemonizes: stopped below.
    args = ["dhclient", "-1", "-cf", str(tmp_path / "dhclient.conf")]
    args += ["-lf", str(tmp_path / "leases"), "-pf", str(tmp_path / "pid")]
    args += ["-sf", str(script), "eth0"]
    proc = ns.run(*args, check=False, timeout=timeout + 20)
    pidfile = tmp_path / "pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
    env_file = tmp_path / "BOUND.env"
    env: dict[str, str] = {}
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value.strip("'")
    return proc.returncode, env
