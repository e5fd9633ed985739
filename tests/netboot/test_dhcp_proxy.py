"""proxyDHCP next to another DHCP server: boot information for PXE clients only, on 67 and 4011.

UEFI firmware behind a proxy is the case that breaks most often elsewhere: after taking its
address from the real server it asks the proxy again on port 4011 (EDK2's "BINL" retry,
iPXE's ProxyDHCPREQUEST) and boots nothing unless that request is answered.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dhcp_support import (
    HTTP_BOOT_URL,
    SCRIPT_URL,
    SERVER_IP,
    BootNet,
    Client,
    dhcp_packet,
    mac_of,
    opts,
    run_dhclient,
)

pytestmark = pytest.mark.root

UEFI = [
    ("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"),
    ("pxe_client_architecture", b"\x00\x07"),
]
GUID = b"\x00" + bytes(range(16))


@pytest.fixture
def proxy(boot_net: BootNet):
    server = boot_net.start(mode="proxy")
    ns = boot_net.client("cli", "52:54:00:aa:00:03", cidr="198.18.0.201/24")
    c = Client(ns, ("0.0.0.0", 68))
    yield server, c
    c.close()


def test_proxy_offer_for_uefi_pxe_client(proxy) -> None:
    _, client = proxy
    client.send(
        dhcp_packet(
            mac_of(11), "discover", 0x7001, options=[*UEFI, ("pxe_client_machine_identifier", GUID)]
        )
    )
    offer, src = client.recv()
    o = opts(offer)
    assert src == (SERVER_IP, 67)
    assert o["message-type"] == 2 and offer.xid == 0x7001
    assert offer.yiaddr == "0.0.0.0"  # a proxy never hands out addresses
    assert "lease_time" not in o and "subnet_mask" not in o
    assert o["vendor_class_id"] == b"PXEClient"
    assert o["vendor_specific"] == b"\x06\x01\x08\xff"  # boot the named file, no discovery
    assert o["pxe_client_machine_identifier"] == GUID
    assert o["server_id"] == SERVER_IP and offer.siaddr == SERVER_IP
    assert offer.file.rstrip(b"\0") == b"snponly.efi"


def test_proxy_ignores_plain_clients_and_the_real_servers_traffic(boot_net: BootNet, proxy):
    server, client = proxy
    client.send(dhcp_packet(mac_of(11), "discover", 0x7101))  # no PXEClient: not ours
    client.send(
        dhcp_packet(
            mac_of(11),
            "request",
            0x7102,
            options=[*UEFI, ("server_id", "198.18.0.2"), ("requested_addr", "198.18.0.120")],
        )
    )
    client.send(dhcp_packet("52:54:00:99:99:98", "discover", 0x7103, options=UEFI))  # unknown
    client.send(dhcp_packet(mac_of(11), "discover", 0x7104, options=UEFI))
    first, _ = client.recv()
    assert first.xid == 0x7104
    assert server.counters["ignored"] == 2
    assert server.counters["unknown"] == 1
    assert [f["mac"] for k, f in boot_net.events if k == "unknown-mac"] == ["52:54:00:99:99:98"]


@pytest.mark.parametrize(
    ("vendor", "arch", "user_class", "expected"),
    [
        (b"PXEClient:Arch:00007:UNDI:003016", b"\x00\x07", None, b"snponly.efi"),
        (b"PXEClient:Arch:00009:UNDI:003016", b"\x00\x09", None, b"snponly.efi"),
        (b"PXEClient:Arch:00000:UNDI:002001", b"\x00\x00", None, b"undionly.kpxe"),
        (b"PXEClient:Arch:00011:UNDI:003000", b"\x00\x0b", None, b"ipxe-arm64.efi"),
        (b"HTTPClient:Arch:00016:UNDI:003000", b"\x00\x10", None, HTTP_BOOT_URL.encode()),
        (b"PXEClient:Arch:00007:UNDI:003010", b"\x00\x07", b"iPXE", SCRIPT_URL.encode()),
    ],
)
def test_proxy_answers_the_boot_server_request_on_4011(
    boot_net: BootNet, proxy, vendor, arch, user_class, expected
) -> None:
    """The client has its address from the real server now and asks us by unicast on 4011."""
    server = proxy[0]
    ns = boot_net.client("uefi", mac_of(12), cidr="198.18.0.120/24")
    c = Client(ns, ("198.18.0.120", 68))
    extra = [("vendor_class_id", vendor), ("pxe_client_architecture", arch)]
    if user_class:
        extra.append(("user_class", user_class))
    try:
        c.send(
            dhcp_packet(
                mac_of(12),
                "request",
                0x7201,
                ciaddr="198.18.0.120",
                options=[*extra, ("pxe_client_machine_identifier", GUID)],
            ),
            (SERVER_IP, 4011),
        )
        ack, src = c.recv()
    finally:
        c.close()
    o = opts(ack)
    assert server.counters["replies"] == 1 and server.counters["pxe_port"] == 1
    assert src == (SERVER_IP, 4011)
    assert o["message-type"] == 5 and ack.xid == 0x7201
    assert ack.ciaddr == "198.18.0.120" and ack.yiaddr == "0.0.0.0"
    assert o["boot-file-name"] == expected
    assert o["pxe_client_machine_identifier"] == GUID
    if vendor.startswith(b"HTTPClient"):
        assert o["vendor_class_id"] == b"HTTPClient"
    else:
        assert o["vendor_class_id"] == b"PXEClient"


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq missing")
def test_dhclient_takes_its_address_from_the_real_server(boot_net: BootNet, tmp_path: Path) -> None:
    """dnsmasq plays the site's DHCP server; our proxy stays out of a plain client's way."""
    server = boot_net.start(mode="proxy")
    dhcp_ns = boot_net.client("dnsmasq", "52:54:00:aa:00:04", cidr="198.18.0.2/24")
    dnsmasq = dhcp_ns.popen(
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--port=0",
            "--interface=eth0",
            "--bind-interfaces",
            "--dhcp-range=198.18.0.100,198.18.0.150,255.255.255.0,1h",
            f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
            f"--pid-file={tmp_path / 'pid'}",
        ]
    )
    try:
        cli = boot_net.client("plain", mac_of(13))
        rc, env = run_dhclient(cli, tmp_path, timeout=10)
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(timeout=10)
    assert rc == 0
    assert env["new_dhcp_server_identifier"] == "198.18.0.2"
    assert env["new_ip_address"].startswith("198.18.0.1")
    assert server.counters.get("replies", 0) == 0
    assert server.counters["ignored"] >= 2  # its DISCOVER and REQUEST
