"""Assemble the bootable disk from a squashfs system: GPT, ESP, GRUB for BIOS and UEFI, A/B slots.

Why a script of its own and no loop device: every partition is built as a file (mkfs.vfat -C
and mtools for FAT, mke2fs for ext4, the squashfs as it is), laid out with sfdisk on the disk
file and copied in at its offset; GRUB's BIOS stage is written the way grub-bios-setup writes
it (boot.img in the protective MBR, core.img in the BIOS boot partition, both patched with
the sector numbers). So the build runs unprivileged, in a container or CI.

Layout (GPT, 1 MiB aligned):
  1 bios        1 MiB   GRUB core.img (legacy BIOS)
  2 vaq-esp    32 MiB   FAT: EFI/BOOT/BOOTX64.EFI, grub/grub.cfg, grub/grubenv (A/B state)
  3 vaq-root-a 256 MiB    squashfs system, slot A (the build writes it here)
  4 vaq-root-b 256 MiB    slot B (empty until the first `vaq-peer upgrade`)
  5 vaq-config 16 MiB   FAT labelled VAQCONFIG: peer.yaml and secrets, written by the operator
  6 vaq-state  64 MiB+  ext4: Raft journal, SoT mirror, artifact cache, SSH host keys
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from appliance.upgrade import GrubEnv  # noqa: E402  (stdlib-only module of the repository)

MIB = 1 << 20
SECTOR = 512
GRUB_DIR = Path("/usr/lib/grub")
GRUB_MODULES = ["part_gpt", "fat", "squash4", "xzio", "gzio", "ext2", "normal", "linux",
                "search", "search_fs_file", "configfile", "loadenv", "test", "echo", "regexp",
                "serial", "terminal", "boot", "cat", "ls", "sleep"]
TYPE_BIOS = "21686148-6449-6E6F-744E-656564454649"
TYPE_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
TYPE_ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
TYPE_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"  # what laptops mount: the config
TYPE_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def run(*argv: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=True, **kw)


def grub_images(work: Path) -> tuple[Path, Path]:
    """core.img for BIOS and BOOTX64.EFI, each with the modules and the ESP-finding config."""
    early = HERE / "grub/early.cfg"  # embedded: finds the ESP by /vaquero-esp.id (no comments:
    # GRUB's embedded config does not take them)
    core = work / "core.img"
    run("grub-mkimage", "-O", "i386-pc", "-o", core, "-c", early, "-p", "/grub",
        "biosdisk", *GRUB_MODULES)
    efi = work / "BOOTX64.EFI"
    run("grub-mkimage", "-O", "x86_64-efi", "-o", efi, "-c", early, "-p", "/grub",
        "efi_gop", "efi_uga", "all_video", *GRUB_MODULES)
    return core, efi


def esp_image(work: Path, efi: Path, size_mb: int) -> Path:
    esp = work / "esp.img"
    esp.unlink(missing_ok=True)
    run("mkfs.vfat", "-n", "VAQ-ESP", "-i", "56415145", "-C", esp, str(size_mb * 1024),
        stdout=subprocess.DEVNULL)
    (work / "vaquero-esp.id").write_text("vaquero ESP: GRUB finds this partition by this file\n")
    env = work / "grubenv"
    GrubEnv.new(env, {"slot": "a"})
    img = f"{esp}"
    run("mmd", "-i", img, "::/EFI", "::/EFI/BOOT", "::/grub")
    run("mcopy", "-i", img, efi, "::/EFI/BOOT/BOOTX64.EFI")
    run("mcopy", "-i", img, HERE / "grub/grub.cfg", env, "::/grub/")
    run("mcopy", "-i", img, work / "vaquero-esp.id", "::/vaquero-esp.id")
    return esp


def config_image(work: Path, size_mb: int, config_dir: Path | None) -> Path:
    cfg = work / "config.img"
    cfg.unlink(missing_ok=True)
    run("mkfs.vfat", "-n", "VAQCONFIG", "-i", "56415143", "-C", cfg, str(size_mb * 1024),
        stdout=subprocess.DEVNULL)
    run("mcopy", "-i", cfg, HERE / "config/README.txt", HERE / "config/peer.yaml.example", "::/")
    if config_dir is not None:
        write_config(cfg, 0, config_dir)
    return cfg


def write_config(disk: Path, offset: int, config_dir: Path) -> None:
    """Copy a directory's files onto a FAT (partition) image: what an operator does from a
    laptop, here with mtools (no mount)."""
    img = f"{disk}@@{offset}" if offset else str(disk)
    entries = sorted(p for p in config_dir.iterdir())
    if entries:
        run("mcopy", "-o", "-s", "-i", img, *entries, "::/")


def state_image(work: Path, size_mb: int) -> Path:
    state = work / "state.img"
    state.unlink(missing_ok=True)
    run("mke2fs", "-q", "-t", "ext4", "-L", "vaq-state", "-U", "clear", "-E",
        "hash_seed=56415153-0000-0000-0000-000000000000", state, f"{size_mb}M",
        stdout=subprocess.DEVNULL)
    return state


def partition_table(disk: Path, sizes: list[tuple[str, str, int]]) -> list[dict]:
    lines = ["label: gpt", "unit: sectors", "first-lba: 2048",
             "label-id: 56415155-4552-4f00-0000-000000000001"]
    for n, (name, ptype, size_mb) in enumerate(sizes, 1):
        size = f"size={size_mb * MIB // SECTOR}, " if size_mb else ""
        uuid = f"56415155-4552-4f00-0000-{n:012d}"
        lines.append(f"{size}type={ptype}, name={name}, uuid={uuid}")
    run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk,
        input="\n".join(lines) + "\n", text=True, stdout=subprocess.DEVNULL)
    out = run("sfdisk", "--json", disk, capture_output=True, text=True).stdout
    return json.loads(out)["partitiontable"]["partitions"]


def copy_in(disk: Path, part: dict, image: Path) -> None:
    size = image.stat().st_size
    if size > part["size"] * SECTOR:
        raise SystemExit(f"assemble: {image.name} ({size} bytes) does not fit partition "
                         f"{part['name']} ({part['size'] * SECTOR} bytes)")
    with open(disk, "r+b") as out, open(image, "rb") as src:
        out.seek(part["start"] * SECTOR)
        shutil.copyfileobj(src, out, 4 * MIB)


def install_bios_grub(disk: Path, bios_part: dict, core: Path) -> None:
    """What grub-bios-setup does for a GPT disk with a BIOS boot partition."""
    boot = bytearray((GRUB_DIR / "i386-pc/boot.img").read_bytes())
    core_img = bytearray(core.read_bytes())
    start = bios_part["start"]
    sectors = (len(core_img) + SECTOR - 1) // SECTOR
    if sectors > bios_part["size"]:
        raise SystemExit(f"assemble: core.img needs {sectors} sectors, the BIOS boot "
                         f"partition has {bios_part['size']}")
    struct.pack_into("<Q", boot, 0x5C, start)  # GRUB_BOOT_MACHINE_KERNEL_SECTOR
    boot[0x66:0x68] = b"\x90\x90"  # GRUB_BOOT_MACHINE_DRIVE_CHECK: trust the BIOS drive
    # diskboot.img's first blocklist (end of core.img's first sector): the rest of core.img.
    struct.pack_into("<QHH", core_img, SECTOR - 12, start + 1, sectors - 1, 0x820)
    with open(disk, "r+b") as out:
        out.seek(0)
        out.write(boot[:0x1B8])  # keep the disk signature and the protective MBR entries
        out.seek(start * SECTOR)
        out.write(core_img)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="the squashfs system")
    ap.add_argument("disk", type=Path, help="the disk image to write")
    ap.add_argument("--slot-mb", type=int, default=256)
    ap.add_argument("--state-mb", type=int, default=64)
    ap.add_argument("--config-mb", type=int, default=16)
    ap.add_argument("--config-dir", type=Path, help="files to put on the config partition")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vaq-assemble-") as tmp:
        work = Path(tmp)
        core, efi = grub_images(work)
        esp = esp_image(work, efi, 32)
        cfg = config_image(work, args.config_mb, args.config_dir)
        state = state_image(work, args.state_mb)
        layout = [("bios", TYPE_BIOS, 1), ("vaq-esp", TYPE_ESP, 32),
                  ("vaq-root-a", TYPE_ROOT_X86_64, args.slot_mb),
                  ("vaq-root-b", TYPE_ROOT_X86_64, args.slot_mb),
                  ("vaq-config", TYPE_BASIC_DATA, args.config_mb),
                  ("vaq-state", TYPE_LINUX, args.state_mb)]
        total_mb = 1 + sum(size for _, _, size in layout) + 1
        args.disk.unlink(missing_ok=True)
        with open(args.disk, "wb") as f:
            f.truncate(total_mb * MIB)
        parts = partition_table(args.disk, layout)
        for part, image in zip(parts[1:], [esp, args.root, None, cfg, state], strict=True):
            if image is not None:
                copy_in(args.disk, part, image)
        install_bios_grub(args.disk, parts[0], core)
    os.utime(args.disk)
    print(f"assemble: {args.disk} ({total_mb} MiB, slot {args.slot_mb} MiB, "
          f"system {args.root.stat().st_size / MIB:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
