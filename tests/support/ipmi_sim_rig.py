"""OpenIPMI's `ipmi_sim` as a real BMC for tests, on loopback.

ipmi_sim models power with its `startcmd`: the process it starts is the machine (power on
starts it, power off kills it). Ours is a `sleep` with an argument unique to the test, so
the "machine" can be seen in /proc. Used through the `sim` fixture (tests/power/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tools.rigs.peer_proc import free_tcp_ports

PASSWORD = "s3cret-Pw-9431"
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")  # one LAN channel each


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _udp_bound(port: int) -> bool:
    text = Path("/proc/net/udp").read_text()
    return f":{port:04X} " in text


@dataclass
class Sim:
    port: int
    marker: str  # the startcmd's argument: finds the "machine" process
    proc: subprocess.Popen[bytes]

    def machine_pids(self) -> list[int]:
        pids = []
        needle = f"sleep\0{self.marker}\0".encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "cmdline").read_bytes() == needle:
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids


def run_sim(tmp_path: Path, sol_port: int | None = None) -> Iterator[Sim]:
    """`sol_port`: the BMC offers serial-over-LAN, connected to a TCP server the test runs on
    127.0.0.1:`sol_port` (without it, the BMC refuses SOL: "Invalid command")."""
    port = free_udp_port()
    marker = f"7{port}"
    lans = "".join(f"""\
  startlan {channel}
    addr {address} {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
""" for channel, address in enumerate(ADDRESSES, start=1))
    (tmp_path / "lan.conf").write_text(f"""\
name "vaqsim"
set_working_mc 0x20
{lans}  serial 15 127.0.0.1 {free_tcp_ports(1)[0]} codec VM
{f'  sol "tcp:127.0.0.1:{sol_port}" 115200' if sol_port else ''}
  startcmd "sleep {marker}"
  startnow false
  poweroff_wait 1
  kill_wait 1
  user 2 true "admin" "{PASSWORD}" admin 10 none md2 md5 straight
""")
    (tmp_path / "emu.cmds").write_text("""\
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
""")
    state = tmp_path / "state"
    state.mkdir()
    log = (tmp_path / "sim.log").open("wb")
    proc = subprocess.Popen(
        ["ipmi_sim", "-c", str(tmp_path / "lan.conf"), "-f", str(tmp_path / "emu.cmds"),
         "-n", "-s", str(state)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    s = Sim(port, marker, proc)
    try:
        deadline = time.monotonic() + 10
        while not _udp_bound(port):
            assert proc.poll() is None, (tmp_path / "sim.log").read_text()
            assert time.monotonic() < deadline, "ipmi_sim did not bind its port in 10 s"
            time.sleep(0.05)
        yield s
    finally:
        for pid in s.machine_pids():
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()
        for pid in s.machine_pids():  # a machine started while we were killing the sim
            os.kill(pid, signal.SIGKILL)


