"""A real machine behind a real BMC: a QEMU guest powered by OpenIPMI's `ipmi_sim`, for tests.

Why: the workflow engine powers machines over IPMI (pyghmi) and then netboots them. Its
end-to-end test needs machines that only run while their BMC says they are on, and BMCs that
answer on the boot network like real ones. `BmcGuest` runs one `ipmi_sim` inside a network
namespace, its LAN channel on `bmc_address` (added to the bridge, so any namespace wired to
that bridge reaches it over IPMI LAN, e.g. `ipmitool -I lanplus` or pyghmi).

How the sim drives the machine: its `chassis_control` program (a small generated Python script,
see CHASSIS_PROGRAM) answers power and boot-device requests. Power on runs a generated shell
script that ensures the tap is on the bridge, appends a line to `boots.log` and `exec`s QEMU
(argv from `QemuGuest`, `-no-reboot` kept); power off kills that QEMU; reset is off then on;
soft off presses the ACPI power button through QMP; power state is "a QEMU of this guest is
alive". So a guest OS that powers off or reboots ends QEMU and the BMC then reports off.
Why not the sim's `startcmd` + a VM on its KCS socket: OpenIPMI 2.0.33 answers "Invalid data
field" to Set System Boot Options (what `set_bootdev` sends) unless a chassis_control program
or a loadable module handles it, VM or not, and with `-no-reboot` its hard reset ends QEMU.

Per guest, in its working directory: `boots.log` (one line per machine start: power on,
cycle, reset), `console.log` (the serial console, appended across power cycles), `qemu.log`
(QEMU's stderr, appended), `chassis.log` (every power/boot request the BMC received),
`bootdev` (the last boot device set), the sim's config and `sim.log`. Every QEMU of a guest
carries a unique marker as its `-name`, which is how the BMC, `running()` and `close()` find
it whatever process group it is in. The boot device is recorded, not obeyed: guests always
netboot (they have no disk).

Measured on 2 cores under TCG, BIOS guest, ipmitool from another namespace: BMC start 0.07 s;
`power on` 0.1 s, QEMU already running when it returns; iPXE opens the NIC 2.4 s later;
`power cycle`: the new QEMU runs 1.1 s after the command (the sim polls once a second for
"off" before powering on); `power off` 0.1 s, QEMU gone when it returns; close 0.04 s.

Usage::

    with NetnsRig() as rig:
        lan = rig.netns("lan")
        rig.bridge(lan, "br0", "198.18.0.1/24")
        with BmcGuest(lan, "br0", "52:54:00:18:01:01", "198.18.0.101") as g:
            lan.run(*g.bmc.ipmitool("power", "on"), env=g.bmc.ipmitool_env())
            g.wait_power_ons(1)
            g.wait_console(r"iPXE")
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from tools.rigs.netns import Netns
from tools.rigs.qemu_guest import Firmware, GuestError, QemuGuest
from tools.rigs.qemu_guest import unavailable_reason as qemu_unavailable

log = structlog.get_logger("vaquero.rigs.bmc")

IPMI_SIM = "ipmi_sim"
RIG_NET = ipaddress.ip_network("198.18.0.0/15")
T = TypeVar("T")
_counter = itertools.count(1)
_PASSWORD_RE = re.compile(r"^[A-Za-z0-9!#$%&()*+,./:;<=>?@^_{|}~-]{1,16}$")
_USER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,16}$")
_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9_./+-]+$")

# ipmi_sim's chassis_control program: called as `<prog> get power boot` (prints `name:value`
# lines) or `<prog> set power 1` / `set reset 1` / `set boot pxe` / `set shutdown 1`. The sim
# blocks while it runs, so it never waits long. Its settings come from chassis.json beside it.
# The rig itself uses its `machine_pids` (one implementation of "is this machine running").
CHASSIS_PROGRAM = r'''
import json, os, signal, socket, subprocess, sys, time


def machine_pids(marker, script=None):
    """Live (not zombie) processes of one machine: QEMU (-name marker), its power-on script."""
    name, found = marker.encode(), []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2:][:1] in ("Z", "X"):
            continue
        if (script and argv[1:2] == [script.encode()]) or any(
                a == b"-name" and b == name for a, b in zip(argv, argv[1:])):
            found.append(int(d))
    return found


def main(here, op, *items):
    with open(os.path.join(here, "chassis.json")) as f:
        c = json.load(f)
    pids = lambda: machine_pids(c["marker"], c["script"])

    def power_off():
        deadline = time.monotonic() + 3
        while (live := pids()) and time.monotonic() < deadline:
            for pid in live:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def power_on():
        if not pids():
            subprocess.Popen(["/bin/sh", c["script"]], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, close_fds=True)

    def soft_off():  # the ACPI power button through QMP: the guest OS decides what to do
        if c["qmp"] and pids():
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(c["qmp"])
                f = s.makefile("rwb")
                f.readline()
                for cmd in ("qmp_capabilities", "system_powerdown"):
                    f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                    f.flush()
                    f.readline()

    bootdev = os.path.join(here, "bootdev")
    if op == "get":
        for name in items:
            if name == "power":
                print(f"power:{1 if pids() else 0}")
            elif name == "boot":
                dev = open(bootdev).read().strip() if os.path.exists(bootdev) else ""
                print(f"boot:{dev or 'default'}")
            else:
                print(f"{name}:0")
    elif op == "set":
        for name, value in zip(items[::2], items[1::2]):
            with open(os.path.join(here, "chassis.log"), "a") as f:
                f.write(f"{time.time():.3f} {name} {value}\n")
            if name == "reset" or (name, value) == ("power", "0"):
                power_off()
            if name in ("power", "reset") and value == "1":
                power_on()
            elif name == "boot":
                with open(bootdev, "w") as f:
                    f.write(value + "\n")
            elif name == "shutdown":
                soft_off()


if __name__ == "__main__":
    main(os.path.dirname(os.path.abspath(__file__)), *sys.argv[1:])
'''
_PROGRAM: dict[str, Any] = {"__name__": "chassis"}
exec(compile(CHASSIS_PROGRAM, "<chassis program>", "exec"), _PROGRAM)

# Starts ipmi_sim as a child subreaper (the flag survives execve): the machines, orphaned by the
# short-lived chassis program, become its children and it reaps them, whatever PID 1 does.
_SUBREAPER_EXEC = (
    "import ctypes, os, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0):  # PR_SET_CHILD_SUBREAPER\n"
    "    sys.exit('prctl(PR_SET_CHILD_SUBREAPER) failed')\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def unavailable_reason(firmware: Firmware = "bios") -> str | None:
    """Why a BMC guest cannot run here (for pytest.skip), or None when it can."""
    if shutil.which(IPMI_SIM) is None:
        return f"{IPMI_SIM} is not installed (apt: openipmi)"
    return qemu_unavailable(firmware)


@dataclass(frozen=True)
class BmcInfo:
    """Where and how to reach the BMC; the repr hides the password."""

    address: str
    port: int
    user: str
    password: str = field(repr=False)

    def pyghmi_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `pyghmi.ipmi.command.Command(**...)`."""
        return {"bmc": self.address, "userid": self.user, "password": self.password,
                "port": self.port}  # fmt: skip

    def ipmitool(self, *args: str) -> list[str]:
        """An ipmitool argv (IPMI 2.0); the password travels in `ipmitool_env()`, not argv.

        `-C 3` (the suite pyghmi uses too): without it ipmitool first asks for the cipher
        suites, which ipmi_sim does not answer, and every call waits ~10 s.
        """
        return ["ipmitool", "-I", "lanplus", "-C", "3", "-H", self.address,
                "-p", str(self.port), "-U", self.user, "-E", *args]  # fmt: skip

    def ipmitool_env(self) -> dict[str, str]:
        return {**os.environ, "IPMI_PASSWORD": self.password}

    def sot_block(self, credentials: str) -> dict[str, Any]:
        """The `bmc:` block of a SoT interface of type bmc (credentials: a secrets-file name)."""
        return {"type": "ipmi", "address": self.address, "port": self.port,
                "credentials": credentials}  # fmt: skip

    def secrets_entry(self) -> dict[str, str]:
        """The peer secrets-file entry for those credentials: `{name: secrets_entry()}`."""
        return {"user": self.user, "password": self.password}


class BmcGuest:
    """One QEMU guest on `bridge` in `ns`, powered only through its own ipmi_sim BMC.

    The machine is off until IPMI power on. `close()` (or leaving the `with` block) kills the
    sim and every QEMU of this guest, deletes the tap and the BMC address it added, and removes
    its own temporary working directory (kept with VAQ_KEEP_GUEST=1).
    """

    def __init__(
        self,
        ns: Netns,
        bridge: str,
        mac: str,
        bmc_address: str,
        *,
        firmware: Firmware = "bios",
        uuid: str | None = None,
        user: str = "admin",
        password: str | None = None,
        bmc_port: int = 623,
        memory_mb: int = 256,
        accel: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        sol_port: int | None = None,
    ) -> None:
        """`sol_port`: the guest's serial port is also a TCP server on 127.0.0.1:`sol_port` in
        the namespace, which the BMC offers as its serial-over-LAN console (console.log still
        records everything); one port per guest of a namespace."""
        if ipaddress.ip_address(bmc_address) not in RIG_NET:
            raise ValueError(f"BMC address {bmc_address} is not in {RIG_NET}")
        if not _USER_RE.match(user):
            raise ValueError("user: 1-16 characters of letters, digits, _ . -")
        password = password if password is not None else secrets.token_hex(8)
        if not _PASSWORD_RE.match(password):
            # Never echo it: a password in a traceback ends up in CI logs. 16: IPMI 1.5's
            # limit, and ipmi_sim refused 20-character ones over IPMI 2.0.
            raise ValueError("password: 1-16 printable characters, no quotes/space/backslash")
        self.ns = ns
        self.bridge = bridge
        self.bmc = BmcInfo(bmc_address, bmc_port, user, password)
        self.sol_port = sol_port
        # Unique per process and guest: every QEMU of this guest carries it as -name.
        self.marker = f"vqbmc{os.getpid()}x{next(_counter)}{secrets.token_hex(3)}"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vaq-bmc-")).absolute()
        if not _SAFE_PATH_RE.match(str(self.workdir)):
            raise ValueError(f"workdir {self.workdir}: letters, digits and _ . / + - only")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_log = self.workdir / "console.log"
        self.boots_log = self.workdir / "boots.log"
        self.qemu_log = self.workdir / "qemu.log"
        self.sim_log = self.workdir / "sim.log"
        self.chassis_log = self.workdir / "chassis.log"
        self.script = self.workdir / "power-on.sh"
        qmp = self.workdir / "qmp.sock"
        self.qmp = qmp if len(str(qmp)) < 100 else None  # sun_path limit; else no soft off
        try:  # validates mac and firmware
            self.guest = QemuGuest(ns, bridge, mac, firmware, name=self.marker, uuid=uuid,
                                   memory_mb=memory_mb, accel=accel, workdir=self.workdir)
        except ValueError:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.mac = self.guest.mac
        self.tap = self.guest.tap
        self.sim: subprocess.Popen[bytes] | None = None
        self._tap_made = False
        self._addr_added = False

    # --- lifecycle ---

    def start(self) -> BmcGuest:
        """Start the BMC (the machine stays off); returns once the BMC listens on its port."""
        reason = unavailable_reason(self.guest.firmware)
        if reason:
            raise GuestError(reason)
        try:
            self._add_address()
            self._ip("tuntap", "add", "dev", self.tap, "mode", "tap")
            self._tap_made = True
            self._ip("link", "set", self.tap, "master", self.bridge)
            self._ip("link", "set", self.tap, "up")
            self._write_files()
            with open(self.sim_log, "ab") as out:
                self.sim = self.ns.popen(
                    [sys.executable, "-I", "-S", "-c", _SUBREAPER_EXEC,
                     IPMI_SIM, "-c", str(self.workdir / "lan.conf"),
                     "-f", str(self.workdir / "emu.cmds"), "-n",
                     "-s", str(self.workdir / "state")],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            self._wait_sim_ready(timeout=10)
            log.info("bmc_guest.start", guest=self.marker, mac=self.mac, bmc=self.bmc.address,
                     port=self.bmc.port, user=self.bmc.user, tap=self.tap,
                     firmware=self.guest.firmware, sim_pid=self.sim.pid)  # fmt: skip
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill every QEMU of this guest and the sim; delete tap and address. Idempotent."""
        self._kill_machine()  # first, so that the sim (their reaper) is still there
        if self.sim is not None and self.sim.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.sim.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sim.wait(timeout=10)
        self._kill_machine()  # one started by an IPMI request that came in meanwhile
        if self._tap_made:
            self._ip("link", "del", self.tap, check=False)
            self._tap_made = False
        if self._addr_added:
            self._ip("addr", "del", f"{self.bmc.address}/32", "dev", self.bridge, check=False)
            self._addr_added = False
        if self._own_workdir and os.environ.get("VAQ_KEEP_GUEST") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> BmcGuest:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- observing ---

    def power_ons(self) -> int:
        """How many times the machine was started (power on, cycle, reset: one line each)."""
        return len(_lines(self.boots_log))

    def running(self) -> bool:
        """Is a QEMU of this guest alive (not a zombie) right now?"""
        return bool(self.qemu_pids())

    def qemu_pids(self) -> list[int]:
        """The live QEMU of this guest (one at most, unless something is badly wrong)."""
        return self._machine_pids(qemu_only=True)

    def boot_device(self) -> str:
        """The boot device last set over IPMI (ipmi_sim's names: pxe, default, none, ...)."""
        return (_lines(self.workdir / "bootdev") or ["default"])[-1]

    def chassis_requests(self) -> list[str]:
        """Every power/boot request the BMC handled, oldest first: "power 1", "boot pxe"..."""
        return [line.split(" ", 1)[1] for line in _lines(self.chassis_log)]

    def console_text(self) -> str:
        """The serial console of every power-on so far, in order."""
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        """The console's last lines plus QEMU's and the sim's output: what a failing test prints."""
        text = "\n".join(self.console_text().splitlines()[-lines:])
        for label, path in (("qemu", self.qemu_log), ("ipmi_sim", self.sim_log)):
            with contextlib.suppress(FileNotFoundError):
                out = path.read_text(errors="replace").strip()
                if out:
                    text += f"\n[{label}]\n{out[-2000:]}"
        return text

    def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll `predicate` until truthy; GuestError with the console tail after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.sim is None or self.sim.poll() is not None:
                raise GuestError(f"{self.marker}: BMC not running, waiting for {what}:\n"
                                 + self.console_tail())  # fmt: skip
            if time.monotonic() > deadline:
                raise GuestError(f"{self.marker}: no {what} after {timeout:.0f} s:\n"
                                 + self.console_tail())  # fmt: skip
            time.sleep(0.1)

    def wait_power_ons(self, count: int, timeout: float = 30) -> int:
        """Wait until at least `count` machine starts happened and a QEMU runs; the count."""
        return self.wait_for(
            lambda: self.power_ons() >= count and self.running() and self.power_ons(),
            timeout, f"power-on #{count}",
        )  # fmt: skip

    def wait_stopped(self, timeout: float = 30) -> None:
        """Wait until no QEMU of this guest is left (power off, or the guest's own exit)."""
        self.wait_for(lambda: not self._machine_pids(), timeout, "power off")

    def wait_console(self, pattern: str, timeout: float = 60, count: int = 1) -> str:
        """Wait until the console matches regex `pattern` `count` times (across power-ons)."""
        rx = re.compile(pattern)
        self.wait_for(lambda: len(rx.findall(self.console_text())) >= count, timeout,
                      f"{count}x {pattern!r} on the console")  # fmt: skip
        return self.console_text()

    # --- internals ---

    def _kill_machine(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while pids := self._machine_pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                log.warning("bmc_guest.unkillable", guest=self.marker, pids=pids)
                return
            time.sleep(0.05)

    def _machine_pids(self, qemu_only: bool = False) -> list[int]:
        """Live processes of this machine: QEMU, and (unless qemu_only) its power-on script."""
        pids: list[int] = _PROGRAM["machine_pids"](
            self.marker, None if qemu_only else str(self.script))
        return pids

    def _add_address(self) -> None:
        out = subprocess.run(["ip", "-n", self.ns.name, "-o", "addr", "show"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        if f" {self.bmc.address}/" not in out:
            self._ip("addr", "add", f"{self.bmc.address}/32", "dev", self.bridge)
            self._addr_added = True

    def _qemu_argv(self) -> list[str]:
        argv = self.guest.argv()
        serial = f"file:{self.guest.console_log}"
        i = next((i for i in range(len(argv) - 1)
                  if argv[i] == "-serial" and argv[i + 1] == serial), None)  # fmt: skip
        if i is None:
            raise GuestError(f"QemuGuest.argv() has no '-serial {serial}' to replace: {argv}")
        # The console survives power cycles: append, never truncate.
        chardev = f"file,id=ser0,path={self.console_log},append=on"
        if self.sol_port is not None:  # the BMC connects here for serial-over-LAN
            chardev = (f"socket,id=ser0,host=127.0.0.1,port={self.sol_port},server=on,"
                       f"wait=off,logfile={self.console_log},logappend=on")
        argv[i : i + 2] = ["-chardev", chardev, "-serial", "chardev:ser0"]  # fmt: skip
        if self.qmp:
            argv += ["-qmp", f"unix:{self.qmp},server=on,wait=off"]
        return argv

    def _write_files(self) -> None:
        q, b, w = shlex.quote, self.bmc, self.workdir
        tap, br = q(self.tap), q(self.bridge)
        self.script.write_text(f"""\
#!/bin/sh
# Power on of {self.marker}, run by the BMC's chassis program inside the namespace. `exec`:
# this process becomes the machine (QEMU), found again by its -name.
ip link show dev {tap} >/dev/null 2>&1 || ip tuntap add dev {tap} mode tap
ip link set dev {tap} master {br}
ip link set dev {tap} up
echo "power-on $(date +%s.%N) pid=$$" >> {q(str(self.boots_log))}
exec {shlex.join(self._qemu_argv())} </dev/null >>{q(str(self.qemu_log))} 2>&1
""")
        (w / "chassis.py").write_text(CHASSIS_PROGRAM)
        (w / "chassis.json").write_text(json.dumps({
            "marker": self.marker, "script": str(self.script),
            "qmp": str(self.qmp) if self.qmp else None,
        }))  # fmt: skip
        prog = f"{sys.executable} -I -S {w / 'chassis.py'}"
        (w / "lan.conf").write_text(f"""\
name "{self.marker}"
set_working_mc 0x20
  startlan 1
    addr {b.address} {b.port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid {secrets.token_hex(16)}
  endlan
  chassis_control "{prog}"
{f'  sol "tcp:127.0.0.1:{self.sol_port}" 115200' if self.sol_port else ''}
  user 2 true "{b.user}" "{b.password}" admin 10 none md2 md5 straight
""")
        (w / "lan.conf").chmod(0o600)
        (w / "emu.cmds").write_text("""\
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
""")
        (w / "state").mkdir(exist_ok=True)

    def _wait_sim_ready(self, timeout: float) -> None:
        """Until the sim's IPMI UDP port is bound, read from its own namespace's /proc view."""
        assert self.sim is not None
        udp = f"{_hex_addr(self.bmc.address)}:{self.bmc.port:04X} "
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if udp in Path(f"/proc/{self.sim.pid}/net/udp").read_text():
                    return
            if self.sim.poll() is not None or time.monotonic() > deadline:
                state = "exited" if self.sim.poll() is not None else f"not ready in {timeout} s"
                raise GuestError(f"{self.marker}: ipmi_sim {state}:\n" + self.console_tail())
            time.sleep(0.05)

    def _ip(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            ["ip", "-n", self.ns.name, *args], check=check, capture_output=True, timeout=10
        )

    def __repr__(self) -> str:
        return f"BmcGuest({self.marker!r}, mac={self.mac}, bmc={self.bmc.address}:{self.bmc.port})"


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _hex_addr(address: str) -> str:
    """An IPv4 address as /proc/net/udp prints it (the raw 32 bits, little endian here)."""
    return socket.inet_aton(address)[::-1].hex().upper()
