"""A/B updates of a running appliance: to a second build, and to a build broken on purpose.

Both go the way docs/install.md tells an operator: stream the new system over SSH into
`vaq-peer upgrade -`, reboot. A reboot ends QEMU (-no-reboot); the test powers the machine on
again on the same disk, as the machine's own reset would. Checked from outside: which slot and
build run (`vaq-peer upgrade --status` over SSH), /healthz, and that the peer's state (the
state partition: Raft journal, SSH host key) is the same before and after.

Needs the image and, for each test, a second build made by image/build.sh itself (another
build-id, or a peer broken on purpose) next to it; each test skips without its builds:

    image/build.sh build/image
    VAQ_BUILD_NOTE=second-build image/build.sh build/image-second
    VAQ_BUILD_BROKEN=1 image/build.sh build/image-broken
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.image.conftest import PEER_MAC, healthz, ssh, wait_healthy, wait_until
from tests.image.image_vm import IMAGE_DIR, ImageGuest, build_id, disk_with_config, second_build
from tools.rigs.netns import Netns, NetnsRig

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.usefixtures("image_ready")]
FIRST = IMAGE_DIR / "vaquero-root.sqfs"
STATE = ("ssh-keygen -lf /var/lib/vaquero/ssh/ssh_host_ed25519_key.pub; "
         "ls /var/lib/vaquero/peer")


def upgrade_and_reboot(ns: Netns, vm: ImageGuest, key: Path, system: Path) -> None:
    done = ssh(ns, key, "vaq-peer upgrade -", stdin_file=system, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "slot b written and verified" in done.stdout, done.stdout
    status = ssh(ns, key, "vaq-peer upgrade --status").stdout
    assert "default slot a; trial: b" in status, status
    ssh(ns, key, "systemctl reboot")
    vm.wait_exit(timeout=300)
    vm.power_cycle()


def slot_status(ns: Netns, key: Path) -> str:
    return ssh(ns, key, "vaq-peer upgrade --status").stdout.strip()


def test_upgrade_to_a_second_build_keeps_the_peer_s_state(site_config: Path,
                                                         tmp_path: Path) -> None:
    second = second_build("second")
    assert build_id(second) != build_id(FIRST)
    disk = disk_with_config(IMAGE_DIR / "vaquero.img", site_config, tmp_path / "disk.img")
    key = tmp_path / "id_ed25519"
    with NetnsRig() as rig:
        ns = rig.netns("img")
        rig.bridge(ns, "br0", "198.18.0.1/24")
        with ImageGuest(ns, "br0", PEER_MAC, disk, "uefi", name="peer-upgrade",
                        workdir=tmp_path / "vm") as vm:
            wait_healthy(ns, vm)
            before = ssh(ns, key, STATE).stdout.splitlines()
            assert len(before) >= 2, before  # the host key and at least one peer file
            upgrade_and_reboot(ns, vm, key, second)
            wait_healthy(ns, vm)
            status = wait_until(vm, "slot b confirmed", lambda: (
                s := slot_status(ns, key)) and "default slot b; trial: none" in s and s, 240)
            assert status.startswith(f"running slot b ({build_id(second)}); "), status
            after = ssh(ns, key, STATE).stdout.splitlines()
            assert after[0] == before[0]  # the same SSH host key
            assert set(before[1:]) <= set(after[1:])  # the peer's files are still there
            assert healthz(ns)


def test_a_broken_build_falls_back_to_the_previous_slot(site_config: Path,
                                                        tmp_path: Path) -> None:
    broken = second_build("broken")
    assert "BROKEN-ON-PURPOSE" in build_id(broken)
    disk = disk_with_config(IMAGE_DIR / "vaquero.img", site_config, tmp_path / "disk.img")
    key = tmp_path / "id_ed25519"
    with NetnsRig() as rig:
        ns = rig.netns("img")
        rig.bridge(ns, "br0", "198.18.0.1/24")
        with ImageGuest(ns, "br0", PEER_MAC, disk, "bios", name="peer-fallback",
                        workdir=tmp_path / "vm") as vm:
            wait_healthy(ns, vm)
            first = slot_status(ns, key)
            assert first.startswith(f"running slot a ({build_id(FIRST)}); "), first
            upgrade_and_reboot(ns, vm, key, broken)
            # The trial boot of slot b: the peer cannot start, the confirm fails, the machine
            # reboots by itself (vaq-boot-confirm.service FailureAction=reboot).
            vm.wait_exit(timeout=900)
            trial = vm.boot_text()
            assert "vaq.slot=b" in trial or "slot b" in trial, trial[-3000:]
            vm.power_cycle()
            wait_healthy(ns, vm)
            assert "slot b was not confirmed; booting slot a" in vm.boot_text()
            status = slot_status(ns, key)
            assert status.startswith("running slot a (vaquero "), status
            assert "default slot a; trial: none" in status, status
            assert status.split(";")[0] == first.split(";")[0]  # the first build again
