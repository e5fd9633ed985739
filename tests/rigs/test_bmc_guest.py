"""The BMC rig proven with real IPMI clients: ipmitool and pyghmi, from another namespace.

Why from another namespace: the workflow engine reaches BMCs over the network, never through
the BMC's own host. The lab is a bridge br0 (198.18.0.1/24) in namespace "lan" holding the
guest's tap and its BMC address 198.18.0.101; namespace "ops" has only a veth onto br0
(198.18.0.2/24) and runs every IPMI client. What is asserted comes from the machine itself:
QEMU processes, the power-on log, iPXE's own lines on the serial console.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools.rigs.bmc_guest import BmcGuest, BmcInfo
from tools.rigs.bmc_guest import unavailable_reason as bmc_unavailable
from tools.rigs.netns import Netns, NetnsRig, sweep_stale
from tools.rigs.netns import unavailable_reason as netns_unavailable

MACS = ("52:54:00:18:01:01", "52:54:00:18:01:02")
BMCS = ("198.18.0.101", "198.18.0.102")
PASSWORD = "Rig-bmc-Pw-7731"

# pyghmi as the product uses it, run by the interpreter of this test inside "ops". Argument 1:
# Command's keyword arguments without the password (that comes from the environment);
# argument 2: a list of [method, args]; prints the list of results as JSON.
PYGHMI = """
import json, os, sys
from pyghmi.ipmi.command import Command
kw = json.loads(sys.argv[1])
cmd = Command(password=os.environ["VAQ_BMC_PASSWORD"], **kw)
print(json.dumps([getattr(cmd, m)(*a) for m, a in json.loads(sys.argv[2])]))
"""


@dataclass
class Lab:
    rig: NetnsRig
    lan: Netns
    ops: Netns
    tmp: Path

    def ipmitool(self, bmc: BmcInfo, *args: str) -> str:
        out = self.ops.run(*bmc.ipmitool(*args), env=bmc.ipmitool_env(), check=False)
        assert out.returncode == 0, f"ipmitool {args}: {out.stdout}{out.stderr}"
        return out.stdout.strip()

    def pyghmi(self, bmc: BmcInfo, *calls: tuple[str, list[Any]]) -> list[Any]:
        kw = {k: v for k, v in bmc.pyghmi_kwargs().items() if k != "password"}
        env = {**os.environ, "VAQ_BMC_PASSWORD": bmc.password}
        out = self.ops.run(sys.executable, "-c", PYGHMI, json.dumps(kw), json.dumps(calls),
                           env=env, check=False, timeout=90)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    for reason in (netns_unavailable(), bmc_unavailable("bios")):
        if reason:
            pytest.skip(reason)
    if shutil.which("ipmitool") is None:
        pytest.skip("ipmitool is not installed")
    sweep_stale()
    with NetnsRig() as rig:
        lan = rig.netns("lan")
        rig.bridge(lan, "br0", "198.18.0.1/24")
        ops = rig.netns("ops")
        rig.veth(lan, ops, bridge="br0", cidr_b="198.18.0.2/24")
        yield Lab(rig, lan, ops, tmp_path)


def qemu_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return not stat[stat.rfind(")") + 2 :].startswith(("Z", "X"))


@pytest.mark.slow
@pytest.mark.root
def test_power_and_bootdev_over_ipmi_lan_drive_a_real_guest(lab: Lab) -> None:
    """Off -> bootdev + on (pyghmi) -> iPXE runs -> cycle -> reset -> guest dies -> on -> off."""
    g = BmcGuest(lab.lan, "br0", MACS[0], BMCS[0], password=PASSWORD, workdir=lab.tmp / "g")
    # iPXE (the e1000 ROM) starting DHCP on the guest's NIC: trying to network boot.
    nic_probe = rf"Configuring \(net0 {MACS[0]}\)"
    with g:
        assert lab.ipmitool(g.bmc, "power", "status") == "Chassis Power is off"
        assert (g.power_ons(), g.running()) == (0, False)

        calls = [("get_power", []), ("set_bootdev", ["network"]), ("set_power", ["on", 30])]
        assert lab.pyghmi(g.bmc, *calls) == [
            {"powerstate": "off"}, {"bootdev": "network"}, {"powerstate": "on"}]  # fmt: skip
        assert g.wait_power_ons(1) == 1
        assert g.boot_device() == "pxe"
        g.wait_console(nic_probe, timeout=60)  # the firmware is trying to network boot
        assert lab.ipmitool(g.bmc, "power", "status") == "Chassis Power is on"
        # "on" again is not a restart; soft off (the ACPI button via QMP) is delivered, and
        # the firmware, like a real one without an OS, ignores it.
        (pid,) = g.qemu_pids()
        lab.ipmitool(g.bmc, "power", "on")
        lab.ipmitool(g.bmc, "power", "soft")
        assert g.qemu_pids() == [pid] and g.power_ons() == 1

        lab.ipmitool(g.bmc, "power", "cycle")  # off, then on once the sim sees it off
        assert g.wait_power_ons(2) == 2
        # The console is appended across power-ons: the second boot's probe follows the first.
        g.wait_console(nic_probe, timeout=60, count=2)
        assert lab.ipmitool(g.bmc, "chassis", "bootdev", "pxe") == "Set Boot Device to pxe"

        assert lab.pyghmi(g.bmc, ("set_power", ["reset", 30])) == [{"pendingpowerstate": "reset"}]
        assert g.wait_power_ons(3) == 3

        # The guest ending QEMU by itself (what -no-reboot makes of its poweroff or reboot)
        # is a machine that is off, as far as its BMC knows.
        (pid,) = g.qemu_pids()
        os.kill(pid, signal.SIGKILL)
        g.wait_stopped(timeout=10)
        assert lab.ipmitool(g.bmc, "power", "status") == "Chassis Power is off"

        assert lab.pyghmi(g.bmc, ("set_power", ["on", 30])) == [{"powerstate": "on"}]
        assert g.wait_power_ons(4) == 4
        (pid,) = g.qemu_pids()
        assert lab.pyghmi(g.bmc, ("set_power", ["off", 30]), ("get_power", [])) == [
            {"powerstate": "off"}, {"powerstate": "off"}]  # fmt: skip
        assert not qemu_alive(pid) and not g.running()
        assert g.power_ons() == 4
        assert g.chassis_requests() == [
            "boot pxe", "power 1", "power 1", "shutdown 1", "power 0", "power 1", "boot pxe",
            "reset 1", "power 1", "power 0"]  # fmt: skip
        tap, sim = g.tap, g.sim
    # close(): the BMC is gone, its address and the guest's tap too.
    assert sim is not None and sim.poll() is not None
    links = lab.lan.run("ip", "-o", "addr", "show").stdout
    assert tap not in links and BMCS[0] not in links, links
    unreachable = lab.ops.run(*g.bmc.ipmitool("-R", "1", "-N", "1", "power", "status"),
                              env=g.bmc.ipmitool_env(), check=False)  # fmt: skip
    assert unreachable.returncode != 0


@pytest.mark.slow
@pytest.mark.root
def test_two_guests_on_one_bridge_answer_each_for_its_own_machine(lab: Lab) -> None:
    """Each BMC powers only its own guest; both machines share the boot bridge."""
    guests = [
        BmcGuest(lab.lan, "br0", mac, bmc, password=PASSWORD)
        for mac, bmc in zip(MACS, BMCS, strict=True)
    ]
    try:
        for g in guests:
            g.start()
        a, b = guests
        lab.ipmitool(b.bmc, "power", "on")
        assert b.wait_power_ons(1) == 1
        assert lab.ipmitool(a.bmc, "power", "status") == "Chassis Power is off"
        assert lab.ipmitool(b.bmc, "power", "status") == "Chassis Power is on"
        lab.ipmitool(a.bmc, "power", "on")
        assert a.wait_power_ons(1) == 1
        lab.ipmitool(b.bmc, "power", "off")
        b.wait_stopped(timeout=10)
        assert a.running() and not b.running()
        assert (a.power_ons(), b.power_ons()) == (1, 1)
        bridge_ports = lab.lan.run("ip", "-o", "link", "show", "master", "br0").stdout
        assert a.tap in bridge_ports and b.tap in bridge_ports
        workdirs = [g.workdir for g in guests]
    finally:
        for g in guests:
            g.close()
    assert not any(w.exists() for w in workdirs)  # their own temporary directories
    assert not any(g.running() for g in guests)


def test_bad_settings_are_refused_without_echoing_the_password() -> None:
    lan = Netns(NetnsRig(), "unused")  # never started: validation happens in __init__
    with pytest.raises(ValueError, match=r"not in 198\.18\.0\.0/15"):
        BmcGuest(lan, "br0", MACS[0], "10.0.0.1")
    secret = 'has"quote'
    with pytest.raises(ValueError, match="password") as exc:
        BmcGuest(lan, "br0", MACS[0], BMCS[0], password=secret)
    assert secret not in str(exc.value)
    info = BmcInfo(BMCS[0], 623, "admin", PASSWORD)
    assert PASSWORD not in repr(info)
    assert info.sot_block("ipmi-lab") == {"type": "ipmi", "address": BMCS[0], "port": 623,
                                          "credentials": "ipmi-lab"}  # fmt: skip
    assert PASSWORD not in " ".join(info.ipmitool("power", "status"))
