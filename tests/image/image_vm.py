"""The appliance image in QEMU: a machine booting its own disk on a test network namespace.

Why a subclass of the netboot rig's QemuGuest: the same tap-on-a-bridge plumbing and bounded
waits, but this guest boots from its disk (a sparse copy of the built image, so the build stays
pristine and each test starts from a fresh machine) instead of PXE, and has enough
memory for Debian and the peer. A reboot ends QEMU (`-no-reboot`); `power_cycle` starts it
again on the same disk and firmware variables, like a machine that reboots.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tools.rigs.netns import Netns
from tools.rigs.qemu_guest import OVMF_CODE, OVMF_VARS, QEMU, Firmware, QemuGuest

IMAGE_DIR = Path(os.environ.get("VAQ_IMAGE_DIR", Path(__file__).parents[2] / "build/image"))


def image_unavailable() -> str | None:
    """Why the image tests cannot run here (for pytest.skip)."""
    if not (IMAGE_DIR / "vaquero.img").is_file():
        return (f"no appliance image in {IMAGE_DIR}: build it with image/build.sh "
                "(or set VAQ_IMAGE_DIR)")
    for tool in ("mcopy", "sfdisk", "mksquashfs", "unsquashfs"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (tools/install.sh)"
    return None


class ImageGuest(QemuGuest):
    """A machine booting `disk` (BIOS or UEFI), its NIC (ens5 in the guest) on `bridge`."""

    def __init__(self, ns: Netns, bridge: str, mac: str, disk: Path, firmware: Firmware,
                 *, name: str, workdir: Path, memory_mb: int = 1024) -> None:
        super().__init__(ns, bridge, mac, firmware, name=name, memory_mb=memory_mb,
                         workdir=workdir)  # TCG, or $VAQ_QEMU_ACCEL=kvm where it works
        self.disk = disk
        self.boots = 0

    def argv(self) -> list[str]:
        argv = [
            QEMU, "-name", self.name, "-accel", self.accel, "-m", str(self.memory_mb),
            "-smp", "1", "-nographic", "-no-reboot", "-monitor", "none", "-parallel", "none",
            # Appended, not truncated: one log across power cycles, each boot after its marker.
            "-chardev", f"file,id=s0,path={self.console_log},append=on", "-serial", "chardev:s0",
            "-drive", f"if=none,id=d0,format=raw,file={self.disk}",
            "-device", "virtio-blk-pci,drive=d0,bootindex=0,addr=0x4",
            "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={self.mac},romfile=,addr=0x5",  # ens5
        ]  # fmt: skip
        if self.firmware == "uefi":
            vars_copy = self.workdir / f"{self.name}.OVMF_VARS.fd"
            if not vars_copy.exists():
                shutil.copyfile(OVMF_VARS, vars_copy)
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        return argv

    def start(self) -> ImageGuest:
        # Each boot appends to the same console log; remember where this one starts.
        self.boots += 1
        with self.console_log.open("a") as log:
            log.write(f"\n===== vaquero test: power on #{self.boots} =====\n")
        super().start()
        return self

    def power_cycle(self) -> ImageGuest:
        """After the guest rebooted (QEMU exited) or hung: start it again on the same disk."""
        self.close()
        return self.start()

    def boot_text(self) -> str:
        """The console of the current boot only."""
        marker = f"===== vaquero test: power on #{self.boots} ====="
        return self.console_text().rpartition(marker)[2]


def disk_with_config(base: Path, config_dir: Path, path: Path) -> Path:
    """The machine's own disk: a sparse copy of the built image (writes never reach the build)
    whose config partition holds `config_dir`, written as docs/install.md tells an operator."""
    subprocess.run(["cp", "--sparse=always", str(base), str(path)], check=True, timeout=120)
    subprocess.run([str(Path(__file__).parents[2] / "image/write-config.sh"), str(path),
                    str(config_dir)], check=True, timeout=60, capture_output=True)
    return path


def second_build(kind: str) -> Path:
    """The system (vaquero-root.sqfs) of a second build made by image/build.sh itself, next to
    the first: `second` (another build-id) or `broken` (a peer that cannot start); skips the
    test when it has not been built (the commands are in the message)."""
    out = IMAGE_DIR.with_name(f"{IMAGE_DIR.name}-{kind}")
    system = out / "vaquero-root.sqfs"
    if not system.is_file():
        env = {"second": "VAQ_BUILD_NOTE=second-build", "broken": "VAQ_BUILD_BROKEN=1"}[kind]
        pytest.skip(f"no {kind} build in {out}: {env} image/build.sh {out}")
    return system


def build_id(system: Path) -> str:
    """The build-id a build wrote next to its system, as `vaq-peer upgrade --status` shows it."""
    return (system.parent / "build-id").read_text().strip()
