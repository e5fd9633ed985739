"""The built appliance image boots into a running peer, on UEFI (OVMF) and on legacy BIOS.

Each run: a copy of build/image/vaquero.img gets a config partition naming a one-peer site
(written with image/write-config.sh, as an operator would), boots in QEMU on a bridge in a
namespace, and is checked only from outside: /healthz over HTTP, SSH with the key from the
config, and a second QEMU machine on the same bridge that netboots from the image's peer
(DHCP, TFTP, iPXE, HTTP) into the test OS and phones home; the peer's own record of that
phone-home (its progress journal on the state partition) is the assertion.

Needs the image: `image/build.sh` first (tests skip without it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.image.conftest import (
    PEER_MAC,
    healthz,
    netboot_guest,
    ssh,
    wait_healthy,
    wait_until,
)
from tests.image.image_vm import IMAGE_DIR, ImageGuest, disk_with_config
from tools.rigs.netns import NetnsRig
from tools.rigs.qemu_guest import QemuGuest, RouterAdvertiser

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.usefixtures("image_ready")]


@pytest.mark.parametrize("firmware", ["uefi", "bios"])
def test_image_boots_a_peer_that_netboots_a_machine(firmware: str, site_config: Path,
                                                     tmp_path: Path) -> None:
    disk = disk_with_config(IMAGE_DIR / "vaquero.img", site_config, tmp_path / "disk.img")
    key = tmp_path / "id_ed25519"
    name, mac, ip = netboot_guest()
    with NetnsRig() as rig:
        ns = rig.netns("img")
        rig.bridge(ns, "br0", "198.18.0.1/24")
        with ImageGuest(ns, "br0", PEER_MAC, disk, firmware, name=f"peer-{firmware}",
                        workdir=tmp_path / "vm") as vm:
            seconds = wait_healthy(ns, vm)
            print(f"{firmware}: /healthz answered {seconds:.0f} s after power on")
            status = ssh(ns, key, "vaq-peer upgrade --status; systemctl is-active vaq-peer; "
                         "findmnt -no FSTYPE,OPTIONS /")
            assert status.returncode == 0, status.stderr
            lines = status.stdout.splitlines()
            assert lines[0].startswith("running slot a (vaquero "), lines
            assert lines[1] == "active"
            assert lines[2].startswith("squashfs ro"), lines  # the system is read-only
            with RouterAdvertiser(ns, "br0"), \
                    QemuGuest(ns, "br0", mac=mac, firmware="bios", name=name,
                              workdir=tmp_path / "netboot") as guest:
                def phoned_home() -> dict | None:
                    if not guest.running and guest.elapsed > 5:
                        raise AssertionError(f"{name} stopped before phoning home:\n"
                                             + guest.console_tail())
                    done = ssh(ns, key, "cat /var/lib/vaquero/peer/progress.jsonl")
                    for line in done.stdout.splitlines():
                        entry = json.loads(line)
                        if entry.get("host") == name and entry.get("done") == 1:
                            return entry
                    return None

                entry = wait_until(vm, f"{name} phones home", phoned_home, timeout=600)
                print(f"{firmware}: {name} netbooted from the image's peer and phoned home "
                      f"{guest.elapsed:.0f} s after power on ({entry})")
            assert healthz(ns)
            log = ssh(ns, key, "journalctl -u vaq-peer -o cat --no-pager").stdout
            steps = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
            seen = {s["event"] for s in steps if s.get("host") == name}
            assert {"boot.script", "artifact.request", "boot.phone_home"} <= seen, seen
            report = next(json.loads(s["report"]) for s in steps
                          if s["event"] == "boot.phone_home" and s.get("host") == name)
            assert report["mac"].lower() == mac and report["ip"] == ip, report


def test_a_missing_config_says_what_is_wrong_and_keeps_ssh(site_config: Path,
                                                           tmp_path: Path) -> None:
    """No peer.yaml on the partition (only the SSH key and network): no peer, a console
    message naming the partition, and the machine still answers SSH."""
    (site_config / "peer.yaml").rename(site_config / "peer.yaml.draft")
    disk = disk_with_config(IMAGE_DIR / "vaquero.img", site_config, tmp_path / "disk.img")
    with NetnsRig() as rig:
        ns = rig.netns("img")
        rig.bridge(ns, "br0", "198.18.0.1/24")
        with ImageGuest(ns, "br0", PEER_MAC, disk, "bios", name="peer-noconfig",
                        workdir=tmp_path / "vm") as vm:
            vm.wait_console(r"vaquero: NO PEER: no /etc/vaquero/peer\.yaml", timeout=900)
            assert "labelled VAQCONFIG" in vm.console_text()
            key = tmp_path / "id_ed25519"
            done = wait_until(vm, "SSH", lambda: (r := ssh(ns, key, "systemctl is-active "
                              "vaq-peer; true")).returncode == 0 and r, 180)
            assert done.stdout.strip() == "inactive"
            assert not healthz(ns)
