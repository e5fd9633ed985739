"""The QEMU rig proven with reference servers: real BIOS and UEFI guests netboot and phone home.

Why against dnsmasq and a trivial HTTP server first: when the rig works with the reference
tools, a failure of our own DHCP/TFTP/HTTP servers in their end-to-end tests is theirs, not the
rig's. The boot network is a bridge at 198.18.0.1/24 in a namespace this test creates; dnsmasq
answers DHCP (fixed address per MAC, option 93 -> NBP, iPXE user class -> boot.ipxe) and TFTP;
an aiohttp server in the same namespace serves boot.ipxe, the test OS, and records the POSTs.
Success is asserted from the POST the guest's initramfs sends (MAC, IP, firmware), never from
console text.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tools.rigs.netns import LoopThread, Netns, NetnsRig, sweep_stale
from tools.rigs.netns import unavailable_reason as netns_unavailable
from tools.rigs.qemu_guest import GuestError, QemuGuest, RouterAdvertiser
from tools.rigs.qemu_guest import unavailable_reason as qemu_unavailable
from tools.rigs.test_kernel import (
    KERNEL_ARGS,
    GuestOS,
    build_initramfs,
    build_test_os,
    ipxe_script,
    parse_phone_home,
    sha256_file,
)

SERVER = "198.18.0.1"
HTTP = f"http://{SERVER}:8080"
IPXE_DIR = Path("/usr/lib/ipxe")
GUESTS = {  # firmware -> (MAC, reserved address)
    "bios": ("52:54:00:18:00:11", "198.18.0.11"),
    "uefi": ("52:54:00:18:00:12", "198.18.0.12"),
}
UUIDS = {"bios": "a0a0a0a0-0000-4000-8000-000000000011", "uefi": None}  # None: QEMU's default
BOOT_TIMEOUT = 180  # s from QEMU start to phone home; measured ~30 s (BIOS), ~40 s (UEFI)

# ${mac:hexhyp} is expanded by iPXE: each guest phones home to its own URL.
BOOT_IPXE = ipxe_script(
    f"{HTTP}/vmlinuz", f"{HTTP}/initrd.img", f"{HTTP}/phone-home/${{mac:hexhyp}}", markers=True
)


@dataclass
class BootServer:
    """The HTTP side of the boot network: what was fetched, and the phone homes received."""

    tos: GuestOS
    requests: list[str] = field(default_factory=list)
    # token -> (peer address, body, arrival time.monotonic())
    homes: dict[str, tuple[str, bytes, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> web.Application:
        async def boot_ipxe(request: web.Request) -> web.Response:
            self.requests.append(f"GET {request.path} from {request.remote}")
            return web.Response(text=BOOT_IPXE)

        async def phone_home(request: web.Request) -> web.Response:
            body = await request.read()
            with self.lock:
                token = request.match_info["token"]
                self.homes[token] = (request.remote or "", body, time.monotonic())
            return web.Response(text="ok\n")

        def file(path: Path):  # type: ignore[no-untyped-def]
            async def handler(request: web.Request) -> web.FileResponse:
                self.requests.append(f"GET {request.path} from {request.remote}")
                return web.FileResponse(path)

            return handler

        app = web.Application()
        app.router.add_get("/boot.ipxe", boot_ipxe)
        app.router.add_get("/vmlinuz", file(self.tos.kernel))
        app.router.add_get("/initrd.img", file(self.tos.initrd))
        app.router.add_post("/phone-home/{token}", phone_home)
        return app

def start_dnsmasq(rig: NetnsRig, ns: Netns, work: Path) -> Path:
    """dnsmasq as the reference DHCP+TFTP server on br0; returns its log file."""
    tftp = work / "tftp"
    tftp.mkdir()
    for nbp in ("undionly.kpxe", "snponly.efi"):
        shutil.copyfile(IPXE_DIR / nbp, tftp / nbp)
    logfile = work / "dnsmasq.log"
    argv = [
        "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
        "--interface=br0", "--bind-interfaces", f"--pid-file={work / 'dnsmasq.pid'}",
        f"--dhcp-leasefile={work / 'leases'}", f"--log-facility={logfile}", "--log-dhcp",
        "--dhcp-range=198.18.0.50,198.18.0.99,255.255.255.0,10m",
        # Firmware PXE, iPXE and the initramfs's udhcpc send different client ids: the
        # reservation is by MAC, whoever asks.
        "--dhcp-ignore-clid",
        "--enable-tftp", f"--tftp-root={tftp}",
        "--dhcp-match=set:ipxe,175",
        # iPXE's no-pxedhcp (175.176 = 1): no ProxyDHCP on this network, do not wait for one.
        "--dhcp-option=tag:ipxe,encap:175,176,1b",
        "--dhcp-match=set:efi64,option:client-arch,7",
        "--dhcp-match=set:efi64,option:client-arch,9",
        "--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
        "--dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi",
        f"--dhcp-boot=tag:ipxe,{HTTP}/boot.ipxe",
    ]  # fmt: skip
    argv += [f"--dhcp-host={mac},{ip}" for mac, ip in GUESTS.values()]
    proc = ns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while "started, version" not in (logfile.read_text() if logfile.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"dnsmasq did not start (rc={proc.poll()}): {logfile.read_text()}")
        time.sleep(0.05)
    return logfile


@pytest.fixture(scope="module")
def test_os() -> GuestOS:
    return build_test_os()  # cached; the first build downloads Debian's kernel package


@pytest.fixture
def boot_network(
    tmp_path: Path, test_os: GuestOS
) -> Iterator[tuple[NetnsRig, Netns, BootServer, Path]]:
    for reason in (netns_unavailable(), qemu_unavailable("uefi")):
        if reason:
            pytest.skip(reason)
    sweep_stale()
    with NetnsRig() as rig:
        srv = rig.netns("boot")
        rig.bridge(srv, "br0", f"{SERVER}/24")
        server = BootServer(test_os)
        dnsmasq_log = start_dnsmasq(rig, srv, tmp_path)
        # Without an IPv6 router on the link, iPXE waits ~14 s per start (see RouterAdvertiser).
        with LoopThread(srv.path) as loop, RouterAdvertiser(srv, "br0"):
            runner = web.AppRunner(server.app(), access_log=None)
            loop.run(runner.setup())
            loop.run(web.TCPSite(runner, SERVER, 8080).start())
            try:
                yield rig, srv, server, dnsmasq_log
            finally:
                loop.run(runner.cleanup())
                print("--- dnsmasq log tail ---\n" + "\n".join(
                    dnsmasq_log.read_text().splitlines()[-30:]))  # fmt: skip
                print("--- HTTP requests ---\n" + "\n".join(server.requests))
                for token, (peer, body, _at) in server.homes.items():
                    print(f"--- phone home {token} from {peer}: {body.decode(errors='replace')}")


@pytest.mark.slow
@pytest.mark.root
def test_bios_and_uefi_guests_netboot_and_phone_home(
    boot_network: tuple[NetnsRig, Netns, BootServer, Path], tmp_path: Path
) -> None:
    """Both guests in parallel (one core each): firmware PXE -> iPXE -> HTTP -> Linux -> POST."""
    _rig, srv, server, dnsmasq_log = boot_network
    guests = {
        fw: QemuGuest(srv, "br0", mac, fw, uuid=UUIDS[fw], workdir=tmp_path / fw)
        for fw, (mac, _) in GUESTS.items()
    }
    timings: dict[str, float] = {}
    try:
        for guest in guests.values():
            guest.start()
        for fw, guest in guests.items():
            mac, ip = GUESTS[fw]
            token = mac.replace(":", "-")
            # Fails at once with the console if the guest ends without phoning home.
            peer, body, at = guest.wait_for(lambda t=token: server.homes.get(t), BOOT_TIMEOUT)
            timings[fw] = at - guest.started_at  # type: ignore[operator]
            home = parse_phone_home(body)
            assert (home["mac"], home["ip"], peer) == (mac, ip, ip), (fw, home, peer)
            assert home["firmware"] == fw, home
            if UUIDS[fw]:
                assert home["uuid"].lower() == UUIDS[fw], home
            assert home["uname"].startswith("Linux "), home
        for fw, guest in guests.items():
            # After the POST the initramfs powers off: QEMU must end on its own.
            rc = guest.wait_exit(timeout=60)
            assert rc == 0, f"{fw} QEMU exit status {rc}:\n{guest.console_tail()}"
    finally:
        for guest in guests.values():
            guest.close()
        print("boot to phone home (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    # The UEFI firmware's own PXE client fetched the NBP by TFTP (the BIOS guest's ROM is
    # already iPXE, so it goes straight to boot.ipxe over HTTP).
    assert f"snponly.efi to {GUESTS['uefi'][1]}" in dnsmasq_log.read_text()
    assert "boot.ipxe" in "\n".join(r for r in server.requests if GUESTS["bios"][1] in r)
    # Both guests left nothing behind: their taps are gone from the namespace.
    links = srv.run("ip", "-o", "link", "show").stdout
    assert all(g.tap not in links for g in guests.values()), links


# --- the rig's own guarantees: cleanup, bounded waits, panic=-1, the initramfs ---------------


@pytest.fixture
def bare_bridge() -> Iterator[Netns]:
    """A namespace with a bridge and no servers at all."""
    for reason in (netns_unavailable(), qemu_unavailable("bios")):
        if reason:
            pytest.skip(reason)
    with NetnsRig() as rig:
        ns = rig.netns("bare")
        rig.bridge(ns, "br0", f"{SERVER}/24")
        yield ns


@pytest.mark.root
def test_guest_without_answers_times_out_and_is_cleaned_up(bare_bridge: Netns) -> None:
    """No DHCP server: the bounded wait raises with the console, close() kills QEMU and its tap."""
    guest = QemuGuest(bare_bridge, "br0", GUESTS["bios"][0], "bios")
    with guest:
        assert guest.tap in bare_bridge.run("ip", "-o", "link", "show", "master", "br0").stdout
        guest.wait_console(r"iPXE", timeout=60)  # the ROM runs, and gets no answer
        with pytest.raises(GuestError, match="still running after 1 s"):
            guest.wait_exit(timeout=1)
        proc = guest.proc
    assert proc is not None and proc.poll() is not None
    assert guest.tap not in bare_bridge.run("ip", "-o", "link", "show").stdout
    assert not guest.workdir.exists()  # its own temporary directory is gone too


@pytest.mark.slow
@pytest.mark.root
def test_failed_boots_end_qemu_at_once(bare_bridge: Netns, test_os: GuestOS) -> None:
    """`panic=-1` + `-no-reboot`: a kernel without init, and an initramfs without its phone-home
    URL, both end QEMU by themselves, and `wait_for` reports it without waiting 180 s."""
    mac = GUESTS["bios"][0]
    boots = {  # what the console must show -> kernel command line
        "Kernel panic": f"{KERNEL_ARGS} rdinit=/does-not-exist init=/does-not-exist",
        "VAQ-TEST: FAILED: no vaq.phone_home=": KERNEL_ARGS,
    }
    guests = [
        QemuGuest(bare_bridge, "br0", mac, "bios", kernel=test_os.kernel, initrd=test_os.initrd,
                  append=append)
        for append in boots.values()
    ]  # fmt: skip
    try:
        for guest in guests:
            guest.start()
        for expected, guest in zip(boots, guests, strict=True):
            with pytest.raises(GuestError, match="exited before"):
                guest.wait_for(lambda: False, timeout=BOOT_TIMEOUT)
            assert expected in guest.console_text(), guest.console_tail()
    finally:
        for guest in guests:
            guest.close()


def test_initramfs_has_init_busybox_and_modules_in_dependency_order(
    test_os: GuestOS, tmp_path: Path
) -> None:
    """Unpacked with GNU cpio; module dependencies read back with busybox `strings`."""
    assert sha256_file(test_os.initrd) == test_os.initrd_sha256
    assert sha256_file(test_os.kernel) == test_os.kernel_sha256
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        input=gzip.decompress(test_os.initrd.read_bytes()), cwd=root, check=True, timeout=60,
    )  # fmt: skip
    init = root / "init"
    assert os.access(init, os.X_OK) and "vaq.phone_home=" in init.read_text()
    assert os.readlink(root / "bin/udhcpc") == "busybox" and (root / "bin/busybox").is_file()
    assert (root / "dev/console").is_char_device()
    order = (root / "lib/modules/load.order").read_text().split()
    names = [ko.removesuffix(".ko").replace("-", "_") for ko in order]
    assert {"e1000", "virtio_net", "virtio_pci"} <= set(names)
    for i, ko in enumerate(order):
        strings = subprocess.run(
            ["busybox", "strings", str(root / "lib/modules" / ko)],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.splitlines()  # fmt: skip
        deps = [d for s in strings if s.startswith("depends=") for d in s[8:].split(",") if d]
        for dep in deps:
            assert dep.replace("-", "_") in names[:i], f"{ko} needs {dep} loaded before it"
    # Deterministic: the same inputs rebuild the very same bytes (what a SoT's sha256 relies on).
    modules = [root / "lib/modules" / ko for ko in order]
    assert build_initramfs(modules, test_os.markers) == test_os.initrd.read_bytes()
