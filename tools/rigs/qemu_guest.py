"""Real PXE clients for end-to-end tests: QEMU guests that netboot on a namespace's bridge.

Why: the boot chain (firmware PXE -> TFTP -> iPXE -> HTTP -> kernel -> phone home) breaks in
ways only real firmware shows (option 93, iPXE's user class, UEFI's `initrd=`). A guest is a
`qemu-system-x86_64` under TCG (no KVM needed) whose NIC is a tap on a bridge inside a network
namespace made with `tools.rigs.netns`, so it only ever talks to the test's own servers.

- `firmware="bios"`: SeaBIOS, `-device e1000` whose option ROM (QEMU's iPXE build) is the PXE
  client. Since that ROM *is* iPXE, it sends option 175 / user class "iPXE" on its first DHCP.
- `firmware="uefi"`: OVMF (read-only CODE + a per-guest copy of VARS) and
  `-device virtio-net-pci,romfile=`: no option ROM, so the firmware's own UEFI PXE (option 93
  = 7) does DHCP and fetches the NBP (e.g. `snponly.efi`) by TFTP; that then runs iPXE.

The serial console goes to `guest.console_log`. `with QemuGuest(...) as g:` always kills QEMU
and deletes its tap, whatever happens in the block; waits are bounded. Use `-no-reboot` (always
on) with `panic=-1` on the kernel command line so that a failed boot ends QEMU at once: the
panic reboots, and QEMU exits instead of rebooting (a clean `poweroff -f` exits it too).

Usage (the boot script: `tools.rigs.test_kernel.ipxe_script` / `kernel_cmdline`)::

    with NetnsRig() as rig:
        srv = rig.netns("srv")
        rig.bridge(srv, "br0", "198.18.0.1/24")
        ... start DHCP/TFTP/HTTP servers in srv ...
        with QemuGuest(srv, "br0", mac="52:54:00:12:34:01", firmware="uefi") as guest:
            home = guest.wait_for(lambda: my_server.phone_homes.get(mac), timeout=180)
            print(guest.console_tail())

Fast boots, what the boot network should do:
- iPXE configures IPv4 (DHCP) and IPv6 (router solicitation) together and only goes on when
  both are done: on a link without an IPv6 router that costs ~14 s per iPXE start under TCG.
  Run a `RouterAdvertiser(ns, "br0")` next to the guests to answer at once.
- iPXE waits ~2 s for ProxyDHCP offers after the first DHCP offer unless the offer carries its
  no-pxedhcp flag (option 175, sub-option 176 = 1); a DHCP server should send it to iPXE.

Timings measured on 2 cores under TCG, QEMU start to phone home with the test OS of
`tools.rigs.test_kernel`, both of the above, dnsmasq as DHCP/TFTP: one guest alone BIOS ~16 s,
UEFI ~25 s; both at once with other tests loading the machine, BIOS 25-35 s, UEFI 30-41 s.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog

from tools.rigs.netns import Netns
from tools.rigs.test_kernel import KERNEL_ARGS

log = structlog.get_logger("vaquero.rigs.qemu")

QEMU = "qemu-system-x86_64"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
Firmware = Literal["bios", "uefi"]
T = TypeVar("T")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_counter = itertools.count(1)


class GuestError(RuntimeError):
    """The guest could not start, or did not finish in time (the message has the console tail)."""


def unavailable_reason(firmware: Firmware = "bios") -> str | None:
    """Why a guest cannot run here (for pytest.skip), or None when it can."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt: qemu-system-x86)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (tap devices)"
    if firmware == "uefi" and not (os.path.isfile(OVMF_CODE) and os.path.isfile(OVMF_VARS)):
        return f"{OVMF_CODE} / {OVMF_VARS} missing (apt: ovmf)"
    return None


class QemuGuest:
    """One netbooting VM on `bridge` in namespace `ns`; a context manager that always cleans up.

    `kernel`/`initrd`/`append` boot a kernel directly instead of PXE (handy to debug an
    initramfs without the boot chain). `accel` defaults to TCG (or $VAQ_QEMU_ACCEL) so that
    results do not depend on the host having KVM; "kvm" goes faster where it exists.
    """

    def __init__(
        self,
        ns: Netns,
        bridge: str,
        mac: str,
        firmware: Firmware = "bios",
        *,
        name: str | None = None,
        uuid: str | None = None,
        memory_mb: int = 256,
        accel: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        kernel: str | os.PathLike[str] | None = None,
        initrd: str | os.PathLike[str] | None = None,
        append: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        mac = mac.lower()
        if not _MAC_RE.match(mac):
            raise ValueError(f"bad MAC {mac!r}")
        if firmware not in ("bios", "uefi"):
            raise ValueError(f"firmware must be 'bios' or 'uefi', not {firmware!r}")
        self.ns = ns
        self.bridge = bridge
        self.mac = mac
        self.firmware: Firmware = firmware
        n = next(_counter)
        self.name = name or f"{firmware}{n}"
        # Interface names are at most 15 characters; unique per process and guest.
        self.tap = f"vqt{os.getpid() % 100000}x{n}"[:15]
        self.uuid = uuid  # SMBIOS system UUID (what PXE sends as option 97), QEMU's default if None
        self.memory_mb = memory_mb
        self.accel = accel or os.environ.get("VAQ_QEMU_ACCEL") or "tcg"
        self.kernel, self.initrd, self.append = kernel, initrd, append
        self.extra_args = extra_args
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"vaq-guest-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_log = self.workdir / f"{self.name}.console.log"
        self.qemu_log = self.workdir / f"{self.name}.qemu.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.started_at: float | None = None
        self.exited_at: float | None = None
        self._tap_made = False

    # --- lifecycle ---

    def argv(self) -> list[str]:
        """The QEMU command line (also useful to reproduce a failure by hand)."""
        argv = [
            QEMU, "-name", self.name, "-accel", self.accel, "-m", str(self.memory_mb),
            "-nographic", "-no-reboot", "-monitor", "none", "-parallel", "none",
            "-serial", f"file:{self.console_log}",
            "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
        ]  # fmt: skip
        if self.uuid:
            argv += ["-uuid", self.uuid]
        if self.firmware == "bios":
            argv += ["-device", f"e1000,netdev=n0,mac={self.mac},bootindex=1"]
        else:
            vars_copy = self.workdir / f"{self.name}.OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            argv += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
                "-device", f"virtio-net-pci,netdev=n0,mac={self.mac},romfile=,bootindex=1",
            ]  # fmt: skip
        if self.kernel:
            argv += ["-kernel", str(self.kernel)]
            if self.initrd:
                argv += ["-initrd", str(self.initrd)]
            argv += ["-append", self.append or KERNEL_ARGS]
        else:
            argv += ["-boot", "n"]
        return [*argv, *self.extra_args]

    def start(self) -> QemuGuest:
        """Create the tap on the bridge and start QEMU in the namespace."""
        reason = unavailable_reason(self.firmware)
        if reason:
            raise GuestError(reason)
        try:
            self._ip("tuntap", "add", "dev", self.tap, "mode", "tap")
            self._tap_made = True
            self._ip("link", "set", self.tap, "master", self.bridge)
            self._ip("link", "set", self.tap, "up")
            argv = self.argv()
            with open(self.qemu_log, "wb") as err:
                self.proc = self.ns.popen(
                    argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT
                )
            self.started_at = time.monotonic()
            log.info("guest.start", guest=self.name, mac=self.mac, firmware=self.firmware,
                     tap=self.tap, pid=self.proc.pid)  # fmt: skip
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill QEMU (its whole process group) and delete the tap; safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if self.proc is not None and self.exited_at is None:
            self.exited_at = time.monotonic()
        if self._tap_made:
            self._ip("link", "del", self.tap, check=False)
            self._tap_made = False
        if self._own_workdir and os.environ.get("VAQ_KEEP_GUEST") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> QemuGuest:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- observing ---

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def elapsed(self) -> float:
        """Seconds since start (until exit, once it exited)."""
        if self.started_at is None:
            return 0.0
        return (self.exited_at or time.monotonic()) - self.started_at

    def wait_exit(self, timeout: float = 180) -> int:
        """Wait for QEMU to exit (poweroff, or a panic with panic=-1); its exit status.

        Raises GuestError with the console tail when the guest is still running at `timeout`.
        """
        if self.proc is None:
            raise GuestError("guest not started")
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GuestError(
                f"guest {self.name} still running after {timeout:.0f} s; console tail:\n"
                + self.console_tail()
            ) from None
        if self.exited_at is None:
            self.exited_at = time.monotonic()
        return rc

    def wait_for(self, predicate: Callable[[], T | None], timeout: float = 180) -> T:
        """Poll `predicate` (e.g. "has my server seen this guest's phone home?") until it returns
        something truthy; raise GuestError with the console tail as soon as the guest exits
        without satisfying it (a failed boot ends QEMU at once: no waiting for the timeout), or
        at `timeout` seconds after the guest started.
        """
        if self.started_at is None:
            raise GuestError("guest not started")
        deadline = self.started_at + timeout
        while True:
            exited = not self.running  # read before the predicate: no lost last-moment success
            value = predicate()
            if value:
                return value
            if exited or time.monotonic() > deadline:
                state = "exited" if exited else f"still running after {timeout:.0f} s"
                raise GuestError(
                    f"guest {self.name} {state} before the condition held; console tail:\n"
                    + self.console_tail()
                )
            time.sleep(0.2)

    def wait_console(self, pattern: str, timeout: float = 180) -> re.Match[str]:
        """Wait until the console log matches the regex `pattern` (debugging aid, bounded)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.console_text())
            if m:
                return m
            if not self.running or time.monotonic() > deadline:
                state = "exited" if not self.running else f"timed out after {timeout:.0f} s"
                raise GuestError(
                    f"guest {self.name} {state} before {pattern!r}; console tail:\n"
                    + self.console_tail()
                )
            time.sleep(0.2)

    def console_text(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        """The last lines of the console plus QEMU's own stderr: what a failing test prints."""
        text = "\n".join(self.console_text().splitlines()[-lines:])
        with contextlib.suppress(FileNotFoundError):
            qemu = self.qemu_log.read_text(errors="replace").strip()
            if qemu:
                text += f"\n[qemu stderr]\n{qemu[-2000:]}"
        return text

    def _ip(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            ["ip", "-n", self.ns.name, *args], check=check, capture_output=True, timeout=10
        )

    def __repr__(self) -> str:
        return f"QemuGuest({self.name!r}, mac={self.mac}, firmware={self.firmware})"


class RouterAdvertiser:
    """Answers IPv6 router solicitations on the boot bridge with an empty router advertisement.

    Why: iPXE's "Configuring (net0 ...)" waits for DHCPv4 *and* an IPv6 router advertisement;
    with no router on the link it retries solicitations for ~14 s before giving up, on every
    iPXE start (the BIOS guest's ROM, or snponly.efi after the UEFI firmware's PXE, which does
    not solicit itself). An RA with no prefix, no
    M/O flags and router lifetime 0 ends iPXE's IPv6 autoconfiguration immediately without
    configuring anything (no address, no route). It is link-local only: sent from the bridge's
    fe80:: address to ff02::1 on the namespace's bridge, so it never leaves the test network.
    A thread answers each solicitation and repeats the RA every `interval` s (the bridge may
    not have its link-local address yet when the first solicitation arrives).
    """

    def __init__(self, ns: Netns, bridge: str, interval: float = 1.0) -> None:
        self.ns, self.bridge, self.interval = ns, bridge, interval
        self.sent = 0
        self.solicitations = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self) -> RouterAdvertiser:
        """Start answering; without IPv6 here it only logs (guests then boot ~14 s slower)."""
        # No duplicate address detection on the bridge: its fe80:: address is usable at once.
        self.ns.run("sysctl", "-q", "-w", f"net.ipv6.conf.{self.bridge}.accept_dad=0", check=False)
        out = self.ns.run("cat", f"/sys/class/net/{self.bridge}/ifindex").stdout
        self._ifindex = int(out)
        try:
            sock = self.ns.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        except OSError as exc:
            log.warning("ra.unavailable", ns=self.ns.name, error=str(exc))
            return self
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.bridge.encode())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self._ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            group = socket.inet_pton(socket.AF_INET6, "ff02::2")
            mreq = group + struct.pack("@I", self._ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        except OSError as exc:
            sock.close()
            log.warning("ra.unavailable", ns=self.ns.name, error=str(exc))
            return self
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name=f"ra:{self.ns.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._sock is not None
        # type 134, code 0, checksum (the kernel fills it), hop limit 64, flags 0,
        # router lifetime 0, reachable time 0, retransmit timer 0.
        ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0)
        next_at = 0.0
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.2)
            solicited = False
            if ready:
                with contextlib.suppress(OSError):
                    data = self._sock.recv(2048)
                    if data[:1] == bytes([133]):
                        solicited = True
                        self.solicitations += 1
            if solicited or time.monotonic() >= next_at:
                try:
                    self._sock.sendto(ra, ("ff02::1", 0, 0, self._ifindex))
                    self.sent += 1
                except OSError:
                    pass  # no link-local address yet (no port up): try again next round
                next_at = time.monotonic() + self.interval

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> RouterAdvertiser:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
