"""End to end: real firmware netboots from a `vaq-peer serve` process and phones home.

A BIOS guest (SeaBIOS + the e1000's iPXE ROM), a UEFI guest (OVMF's own PXE, then
snponly.efi by TFTP, then iPXE) and a BIOS guest known by its serial number (its NIC is not
the one the SoT declares) each: get their reservation by DHCP, chain to the peer's
HTTP, receive their stage script, load kernel and initrd from the peer's artifact cache
(verified by sha256 from a file:// upstream), boot the test OS, which phones home with the
per-host token. The assertion is the peer's own record of each phone-home, not console text.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.rigs.netns import NetnsRig
from tools.rigs.qemu_guest import QemuGuest, RouterAdvertiser
from tools.rigs.qemu_guest import unavailable_reason as qemu_unavailable
from tools.rigs.test_kernel import GuestOS, build_test_os

pytestmark = [pytest.mark.slow, pytest.mark.root]
SERVER = "198.18.0.2"
GUESTS = {"bios-01": ("52:54:00:e2:00:01", "198.18.0.21", "bios"),
          "uefi-01": ("52:54:00:e2:00:02", "198.18.0.22", "uefi"),
          "serial-01": ("52:54:00:e2:00:03", "198.18.0.23", "bios")}
# serial-01's NIC was replaced: the SoT still has the old MAC. DHCP finds it by its SMBIOS
# UUID (option 97), and iPXE's chain by its serial number (${serial}), set by QEMU's -smbios.
# It is served its stage and loads the kernel and initrd; the test OS's own DHCP client
# sends no UUID, so it gets no address there and does not phone home (not what is tested).
SERIAL_HOST = "serial-01"
SERIAL = "VAQ-E2E-SN-0003"
SERIAL_UUID = "5b1c0d3e-7a4f-4e2b-9c61-3f8d2a4b6c03"
OLD_MAC = "52:54:00:e2:0f:03"


def write_sot(root: Path, guest_os: GuestOS) -> None:
    (root / "sites/e2e").mkdir(parents=True)
    (root / "os").mkdir()
    (root / "boot").mkdir()
    (root / "workflows").mkdir()
    (root / "sites/e2e/env.yml").write_text(f"""
id: e2e
subnets:
  - {{id: boot, cidr: 198.18.0.0/24, gateway: 198.18.0.1, dns: [198.18.0.1], domain: e2e.test}}
peers:
  - {{name: peer-1, address: {SERVER}}}
netboot: {{http_port: 8080}}
""")
    hosts = [f"""name: {name}
workflow: testos
interfaces:
  - {{type: physical, mac: "{mac}", subnet: boot, ipv4: {ip}}}
""" for name, (mac, ip, _) in GUESTS.items() if name != SERIAL_HOST]
    hosts.append(f"""name: {SERIAL_HOST}
workflow: testos
serial: {SERIAL}
uuid: {SERIAL_UUID}
interfaces:
  - {{type: physical, mac: "{OLD_MAC}", subnet: boot, ipv4: {GUESTS[SERIAL_HOST][1]}}}
""")
    (root / "sites/e2e/cluster-guests.yml").write_text("---\n".join(hosts))
    (root / "os/testos.yml").write_text(guest_os.sot_os())
    (root / "boot/testos.yml").write_text("id: testos\noperating_system: testos\n")
    (root / "workflows/testos.yml").write_text(
        "id: testos\nstages:\n  - {name: boot, boot: testos, timeout: 300}\n"
        "rollout: {max_concurrent: 2}\n")


@pytest.fixture(scope="module")
def guest_os():
    return build_test_os()


def test_bios_and_uefi_guests_boot_from_the_peer_and_phone_home(guest_os, tmp_path: Path) -> None:
    for firmware in ("bios", "uefi"):
        reason = qemu_unavailable(firmware)
        if reason:
            pytest.skip(reason)
    sot = tmp_path / "sot"
    write_sot(sot, guest_os)
    secret = tmp_path / "secret"
    secret.write_text("ZTJlLXRlc3Qtc2VjcmV0LWtleS0wMTIzNDU2Nzg5\n")
    raft_secret = tmp_path / "raft.secret"
    raft_secret.write_text("ZTJlLXJhZnQtcGFzc3dvcmQ=\n")
    raft_secret.chmod(0o600)
    config = tmp_path / "peer.yaml"
    config.write_text(f"site: e2e\npeer: peer-1\ndata_dir: {tmp_path / 'data'}\n"
                      f"interface: br0\nsot: {{path: {sot}}}\ntoken_secret_file: {secret}\n"
                      f"raft: {{address: '127.0.0.1:7950', password_file: {raft_secret}}}\n")
    log = tmp_path / "serve.log"
    with NetnsRig() as rig:
        srv = rig.netns("e2e")
        rig.bridge(srv, "br0", f"{SERVER}/24")
        with log.open("w") as out:
            peer = srv.popen([str(Path(sys.executable).parent / "vaq-peer"), "serve",
                              "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
        guests = [QemuGuest(srv, "br0", mac=mac, firmware=fw, name=name,
                            **({"uuid": SERIAL_UUID,
                                "extra_args": ("-smbios", f"type=1,serial={SERIAL}")}
                               if name == SERIAL_HOST else {}))
                  for name, (mac, _, fw) in GUESTS.items()]
        # iPXE waits ~14 s for an IPv6 router advertisement unless one arrives (rig notes).
        advertiser = RouterAdvertiser(srv, "br0")
        advertiser.start()
        try:
            for guest in guests:
                guest.start()
            done = _wait_phone_homes(log, set(GUESTS) - {SERIAL_HOST}, peer, timeout=240)
            serial_steps = _wait_steps(log, SERIAL_HOST, {"boot.script": 1,
                                                          "artifact.request": 2}, timeout=120)
        finally:
            advertiser.close()
            for guest in guests:
                guest.close()
            if peer.poll() is None:
                peer.send_signal(signal.SIGTERM)
                peer.wait(timeout=15)
        consoles = "\n".join(f"--- {g.name}\n{g.console_tail()}" for g in guests)
        assert set(done) == set(GUESTS) - {SERIAL_HOST}, \
            f"phone-homes: {done}\n{log.read_text()}\n{consoles}"
        assert serial_steps["boot.script"][0]["matched_by"] == "serial", serial_steps
        assert len(serial_steps["artifact.request"]) >= 2, f"{serial_steps}\n{log.read_text()}"
        for name, line in done.items():
            mac, ip, fw = GUESTS[name]
            report = json.loads(line["report"])
            assert report["mac"].lower() == mac and report["ip"] == ip, (name, report)
            print(f"{name} ({fw}): phoned home {line['elapsed']:.1f} s after start")
    journal = [json.loads(x) for x in (tmp_path / "data/progress.jsonl").read_text().splitlines()]
    assert {(e["host"], e["done"]) for e in journal} == {(n, 1) for n in done}
    steps = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    for name in done:  # every boot step of each host is in the log, by host name
        seen = {s["event"] for s in steps if s.get("host") == name}
        assert {"boot.script", "artifact.request", "boot.phone_home"} <= seen, (name, seen)
    matched = {s["host"]: s.get("matched_by") for s in steps if s["event"] == "boot.script"
               and "matched_by" in s}
    assert matched == {"bios-01": "mac", "uefi-01": "mac", SERIAL_HOST: "serial"}, matched


def _wait_steps(log: Path, host: str, wanted: dict[str, int], timeout: float
                ) -> dict[str, list[dict]]:
    """The host's log entries of each wanted event, once each has its count (or time out)."""
    start = time.monotonic()
    found: dict[str, list[dict]] = {}
    while time.monotonic() - start < timeout:
        found = {event: [] for event in wanted}
        for line in log.read_text().splitlines():
            if not line.startswith("{") or f'"{host}"' not in line:
                continue
            entry = json.loads(line)
            if entry.get("host") == host and entry.get("event") in wanted:
                found[entry["event"]].append(entry)
        if all(len(found[e]) >= n for e, n in wanted.items()):
            break
        time.sleep(1)
    return found


def _wait_phone_homes(log: Path, hosts: set[str], peer: subprocess.Popen,
                      timeout: float) -> dict[str, dict]:
    start = time.monotonic()
    found: dict[str, dict] = {}
    while time.monotonic() - start < timeout and set(found) != hosts:
        if peer.poll() is not None:
            raise AssertionError(f"the peer exited {peer.returncode}:\n{log.read_text()}")
        for line in log.read_text().splitlines():
            if '"boot.phone_home"' not in line:
                continue
            entry = json.loads(line)
            if entry.get("host") in hosts and entry["host"] not in found:
                entry["elapsed"] = time.monotonic() - start
                found[entry["host"]] = entry
        time.sleep(1)
    return found
