"""Real PXE firmware against our DHCP server: OVMF's UEFI PXE and QEMU's iPXE ROM (SeaBIOS).

What is checked is the first thing the firmware fetches after DHCP, caught by a bare listener
on the server address: a TFTP read request (UEFI PXE loading the NBP), or an HTTP request
(iPXE following its script URL, UEFI HTTP boot fetching the URL we gave for arch 16). That
proves the firmware took our answer, which is the DHCP server's whole job; the rest of the
chain belongs to the boot tests.

The proxy cases put dnsmasq on the segment as the site's DHCP server (addresses only, no PXE
settings): the firmware gets its address there and its boot file from us. UEFI behind a
proxyDHCP is the case that breaks most often elsewhere.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
from dhcp_support import HTTP_BOOT_URL, SCRIPT_URL, SERVER_IP, BootNet, mac_of

from tools.rigs.netns import Netns
from tools.rigs.qemu_guest import QemuGuest
from tools.rigs.qemu_guest import unavailable_reason as qemu_unavailable

pytestmark = [pytest.mark.slow, pytest.mark.root]

FETCH_TIMEOUT_S = 150  # TCG: OVMF reaches PXE in ~10-20 s, SeaBIOS+iPXE faster
DNSMASQ_RANGE = ("198.18.0.100", "198.18.0.150")


def start_site_dhcp(boot_net: BootNet, tmp_path: Path) -> None:
    ns = boot_net.client("site", "52:54:00:aa:00:06", cidr="198.18.0.2/24")
    tmp_path.chmod(0o755)
    ns.popen(
        [
            "dnsmasq", "--keep-in-foreground", "--port=0", "--interface=eth0",
            "--bind-interfaces", f"--dhcp-range={DNSMASQ_RANGE[0]},{DNSMASQ_RANGE[1]},1h",
            f"--dhcp-leasefile={tmp_path / 'site.leases'}", "--user=root",
        ]
    )  # fmt: skip


def listener(ns: Netns, kind: str) -> socket.socket:
    if kind == "tftp":
        sock = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((SERVER_IP, 69))
    else:
        sock = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((SERVER_IP, 80))
        sock.listen(4)
    sock.settimeout(FETCH_TIMEOUT_S)
    return sock


def first_fetch(sock: socket.socket, kind: str) -> tuple[bytes, str]:
    """(what was asked for, from which address): a TFTP RRQ file name or an HTTP path."""
    if kind == "tftp":
        data, src = sock.recvfrom(1024)
        assert data[:2] == b"\x00\x01", data  # RRQ
        return data[2:].split(b"\0")[0], src[0]
    conn, src = sock.accept()
    with conn:
        conn.settimeout(30)
        request = conn.recv(1024)
    return request.split(b" ")[1], src[0]


# OVMF tries PXEv4, PXEv6, then HTTPv4 on each NIC; these fw_cfg knobs switch PXE off so the
# firmware goes straight to UEFI HTTP boot (DHCP with "HTTPClient", arch 16).
HTTP_BOOT_ONLY = (
    "-fw_cfg",
    "name=opt/org.tianocore/IPv4PXESupport,string=n",
    "-fw_cfg",
    "name=opt/org.tianocore/IPv6PXESupport,string=n",
)
HTTP_BOOT_PATH = HTTP_BOOT_URL.split(SERVER_IP)[1].encode()

CASES = [
    # (firmware, mode, listener, expected fetch, extra QEMU args)
    pytest.param("uefi", "proxy", "tftp", b"snponly.efi", (), id="uefi-behind-proxy"),
    pytest.param("uefi", "server", "tftp", b"snponly.efi", (), id="uefi-full-server"),
    pytest.param("bios", "proxy", "http", SCRIPT_URL.split(SERVER_IP)[1].encode(), (),
                 id="ipxe-rom-behind-proxy"),
    pytest.param("uefi", "server", "http", HTTP_BOOT_PATH, HTTP_BOOT_ONLY,
                 id="uefi-http-boot-full-server"),
    pytest.param("uefi", "proxy", "http", HTTP_BOOT_PATH, HTTP_BOOT_ONLY,
                 id="uefi-http-boot-behind-proxy"),
]  # fmt: skip


@pytest.mark.parametrize(("firmware", "mode", "kind", "expected", "qemu_args"), CASES)
def test_firmware_boots_what_we_answer(
    boot_net: BootNet,
    tmp_path: Path,
    firmware: str,
    mode: str,
    kind: str,
    expected: bytes,
    qemu_args: tuple[str, ...],
) -> None:
    reason = qemu_unavailable(firmware)  # type: ignore[arg-type]
    if reason or shutil.which("dnsmasq") is None:
        pytest.skip(reason or "dnsmasq missing")
    server = boot_net.start(mode=mode)
    if mode == "proxy":
        start_site_dhcp(boot_net, tmp_path)
    sock = listener(boot_net.srv, kind)
    started = time.monotonic()
    try:
        with QemuGuest(
            boot_net.srv,
            "br0",
            mac=mac_of(11),
            firmware=firmware,  # type: ignore[arg-type]
            workdir=tmp_path / "guest",
            extra_args=qemu_args,
        ) as guest:
            try:
                fetched, src = first_fetch(sock, kind)
            except TimeoutError:
                pytest.fail(
                    f"no fetch after {time.monotonic() - started:.0f} s; "
                    f"counters {dict(server.counters)}\n{guest.console_tail()}"
                )
    finally:
        sock.close()
    assert fetched == expected
    if mode == "proxy":
        last = int(src.rsplit(".", 1)[1])
        assert 100 <= last <= 150, f"address {src} should come from the site's DHCP server"
        assert server.counters["ignored"] >= 1  # the REQUEST meant for the site's server
    else:
        assert src == "198.18.0.11"  # the reservation
    assert server.counters["replies"] >= 1
    assert server.counters.get("unknown", 0) == 0
