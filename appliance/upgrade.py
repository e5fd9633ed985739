"""`vaq-peer upgrade`: A/B system updates of the appliance image (image/, docs/install.md).

Why A/B with a trial boot: a peer is unattended; an update must never leave it unbootable. The
image has two read-only system slots (partitions `vaq-root-a`, `vaq-root-b`). `upgrade IMAGE`
writes the new system into the slot not running, verifies it, and asks GRUB for one trial boot
of it (grubenv: `try_slot`, `try_pending=1`). GRUB clears `try_pending` as it boots the trial;
on that boot `vaq-boot-confirm.service` runs `upgrade --confirm`, which makes the slot the
default once the peer answers /healthz, or reboots when it does not in time. A trial that
panics, hangs until a reboot or never turns healthy is dropped by GRUB on the next boot, which
starts the previous slot again. Configuration and state live on their own partitions, so the
Raft journal, mirror and cache survive either way.

Stdlib only: the image build (image/assemble.py) uses GrubEnv too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

ENV_SIZE = 1024
ENV_HEADER = b"# GRUB Environment Block\n"
GRUBENV = Path("/boot/efi/grub/grubenv")
PARTLABEL_DIR = Path("/dev/disk/by-partlabel")
SQUASHFS_MAGIC = b"hsqs"
SLOT_PARTLABEL = "vaq-root-{}"
CHUNK = 4 << 20
PROC_CMDLINE = Path("/proc/cmdline")
MAX_TRIAL_RESTARTS = 3


class UpgradeError(Exception):
    """What went wrong, in a sentence for the operator."""


class GrubEnv:
    """GRUB's environment block: 1024 bytes of `key=value` lines padded with '#'.

    Rewritten in place, never replaced, because GRUB's `save_env` writes into the blocks the
    file already has (it cannot allocate on FAT), and so must we keep them.
    """

    @staticmethod
    def encode(values: dict[str, str]) -> bytes:
        body = ENV_HEADER + b"".join(f"{k}={v}\n".encode() for k, v in values.items() if v != "")
        if len(body) > ENV_SIZE:
            raise UpgradeError(f"grubenv: {len(body)} bytes of variables, more than {ENV_SIZE}")
        return body + b"#" * (ENV_SIZE - len(body))

    @staticmethod
    def decode(block: bytes) -> dict[str, str]:
        if not block.startswith(ENV_HEADER) or len(block) != ENV_SIZE:
            raise UpgradeError("grubenv: not a GRUB environment block")
        values = {}
        for line in block[len(ENV_HEADER):].split(b"\n"):
            key, sep, value = line.decode(errors="replace").partition("=")
            if sep and not key.startswith("#"):
                values[key] = value
        return values

    @classmethod
    def new(cls, path: Path, values: dict[str, str]) -> None:
        path.write_bytes(cls.encode(values))

    @classmethod
    def load(cls, path: Path) -> dict[str, str]:
        try:
            return cls.decode(path.read_bytes())
        except OSError as exc:
            raise UpgradeError(f"{path}: {exc.strerror} (is the ESP mounted at /boot/efi?)"
                               ) from None

    @classmethod
    def update(cls, path: Path, **changes: str) -> dict[str, str]:
        values = cls.load(path)
        values.update(changes)
        with open(path, "r+b") as f:
            f.write(cls.encode(values))
            f.flush()
            os.fsync(f.fileno())
        return values


def booted_slot(cmdline: Path = PROC_CMDLINE) -> str:
    text = cmdline.read_text()
    for word in text.split():
        if word.startswith("vaq.slot="):
            slot = word.split("=", 1)[1]
            if slot in ("a", "b"):
                return slot
    raise UpgradeError("not running from an appliance slot (no vaq.slot= on the kernel command "
                       "line): on a Debian host, upgrade with pip or apt instead")


def other_slot(slot: str) -> str:
    return "b" if slot == "a" else "a"


def squashfs_length(superblock: bytes) -> int:
    """Bytes of the filesystem, from its superblock (mksquashfs pads the file to 4 KiB)."""
    if superblock[:4] != SQUASHFS_MAGIC or len(superblock) < 96:
        raise UpgradeError("neither a squashfs system nor an appliance disk image")
    (bytes_used,) = struct.unpack_from("<Q", superblock, 40)
    return bytes_used


def open_payload(image: str) -> tuple[BinaryIO, bytes, int]:
    """The squashfs system in IMAGE, as (stream after the superblock, superblock, length).

    IMAGE: a squashfs file as the build writes it (`vaquero-root.sqfs`), a whole disk image
    (its `vaq-root-a` partition), or "-" for a squashfs on stdin (`ssh peer vaq-peer upgrade -
    < vaquero-root.sqfs`: no room needed on the peer for the file).
    """
    if image == "-":
        stream: BinaryIO = sys.stdin.buffer
    else:
        path = Path(image)
        if not path.is_file():
            raise UpgradeError(f"{image}: no such file")
        stream = open(path, "rb")  # noqa: SIM115 (the caller closes it)
        if stream.read(4) != SQUASHFS_MAGIC:
            try:
                offset = _gpt_partition_offset(stream, SLOT_PARTLABEL.format("a"))
            except UpgradeError as exc:
                stream.close()
                raise UpgradeError(f"{image}: {exc}") from None
        else:
            offset = 0
        stream.seek(offset)
    superblock = stream.read(96)
    try:
        return stream, superblock, squashfs_length(superblock)
    except UpgradeError as exc:
        stream.close()
        raise UpgradeError(f"{image}: {exc}") from None


def _gpt_partition_offset(f, name: str) -> int:
    f.seek(512)
    header = f.read(92)
    if header[:8] != b"EFI PART":
        raise UpgradeError("neither a squashfs system nor an appliance disk image (no GPT)")
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    f.seek(entries_lba * 512)
    for _ in range(min(count, 256)):
        entry = f.read(entry_size)
        first_lba = struct.unpack_from("<Q", entry, 32)[0]
        label = entry[56:128].decode("utf-16-le").rstrip("\0")
        if label == name:
            return first_lba * 512
    raise UpgradeError(f"the disk image has no partition named {name}")


def write_slot(image: str, target: Path) -> str:
    """Copy the system into the target slot, then read it back: the sha256 they share."""
    stream, superblock, length = open_payload(image)
    with stream:
        try:
            capacity = _device_size(target)
        except OSError as exc:
            raise UpgradeError(f"{target}: {exc.strerror}") from None
        if length > capacity:
            raise UpgradeError(f"{image}: system of {length} bytes does not fit {target} "
                               f"({capacity} bytes)")
        written = hashlib.sha256(superblock)
        with open(target, "r+b") as dst:
            dst.write(superblock)
            left = length - len(superblock)
            while left:
                block = stream.read(min(CHUNK, left))
                if not block:
                    raise UpgradeError(f"{image}: truncated ({left} bytes missing)")
                dst.write(block)
                written.update(block)
                left -= len(block)
            dst.flush()
            os.fsync(dst.fileno())
    readback = hashlib.sha256()
    with open(target, "rb") as dst:
        os.posix_fadvise(dst.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the medium, not the cache
        left = length
        while left:
            block = dst.read(min(CHUNK, left))
            if not block:
                break
            readback.update(block)
            left -= len(block)
    if readback.digest() != written.digest():
        raise UpgradeError(f"{target}: read back differs from what was written")
    return written.hexdigest()


def _device_size(path: Path) -> int:
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


def peer_http_ports(uid: int | None = None) -> list[int]:
    """TCP ports the peer's user listens on (from /proc/net/tcp): where /healthz may answer,
    whatever the config or the SoT chose."""
    if uid is None:
        import pwd

        try:
            uid = pwd.getpwnam("vaquero").pw_uid
        except KeyError:
            return []
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 7 and cols[3] == "0A" and int(cols[7]) == uid:  # 0A: LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def peer_restarts() -> int:
    """How often systemd restarted vaq-peer this boot: a crash loop needs no full timeout."""
    out = subprocess.run(["systemctl", "show", "-P", "NRestarts", "vaq-peer.service"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def healthy(ports: list[int]) -> int | None:
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as resp:
                if resp.status == 200:
                    return port
        except (urllib.error.URLError, OSError, ValueError):
            continue
    return None


def cmd_upgrade(args: argparse.Namespace) -> int:
    try:
        if args.status:
            return show_status(args)
        if args.confirm:
            return confirm(args)
        if not args.image:
            print("vaq-peer upgrade: give IMAGE (or --confirm / --status)", file=sys.stderr)
            return 2
        return install(args)
    except UpgradeError as exc:
        print(f"vaq-peer upgrade: {exc}", file=sys.stderr)
        return 1


def show_status(args: argparse.Namespace) -> int:
    env = GrubEnv.load(args.grubenv)
    slot = booted_slot(args.proc_cmdline)
    build = Path("/usr/lib/vaquero/build-id")
    print(f"running slot {slot} ({build.read_text().strip() if build.exists() else '?'}); "
          f"default slot {env.get('slot', 'a')}; trial: {env.get('try_slot') or 'none'}")
    return 0


def install(args: argparse.Namespace) -> int:
    image = args.image
    slot = booted_slot(args.proc_cmdline)
    target_slot = other_slot(slot)
    target = args.partlabel_dir / SLOT_PARTLABEL.format(target_slot)
    print(f"writing {image} into slot {target_slot} ({target}); running slot {slot} stays "
          "the default until the new one is confirmed", flush=True)
    digest = write_slot(image, target)
    GrubEnv.update(args.grubenv, try_slot=target_slot, try_pending="1")
    print(f"slot {target_slot} written and verified (sha256 {digest[:16]}); the next boot "
          f"tries it once, and falls back to slot {slot} unless it confirms", flush=True)
    if args.reboot:
        subprocess.run(["systemctl", "reboot"], check=False)
    return 0


def confirm(args: argparse.Namespace) -> int:
    """The trial boot's verdict: make it the default once the peer is healthy, else fail (the
    unit then reboots)."""
    slot = booted_slot(args.proc_cmdline)
    env = GrubEnv.load(args.grubenv)
    if env.get("try_slot") != slot:
        print(f"slot {slot}: not a trial boot, nothing to confirm", flush=True)
        return 0
    if not Path("/run/vaquero/peer.env").exists():
        # No peer config: the system came up and is reachable; that is all it can show.
        GrubEnv.update(args.grubenv, slot=slot, try_slot="", try_pending="")
        print(f"slot {slot} confirmed (the system is up; no peer config to check)", flush=True)
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        port = healthy(peer_http_ports())
        restarts = peer_restarts()
        if not port and restarts >= MAX_TRIAL_RESTARTS:
            print(f"slot {slot}: vaq-peer failed {restarts} times", flush=True)
            break
        if port:
            GrubEnv.update(args.grubenv, slot=slot, try_slot="", try_pending="")
            print(f"slot {slot} confirmed: the peer answers /healthz on port {port}", flush=True)
            return 0
        time.sleep(2)
    # vaq-boot-confirm.service reboots on this failure (FailureAction=reboot); GRUB then
    # drops the trial and boots the confirmed slot.
    print(f"slot {slot}: the peer is not healthy (no /healthz answer within "
          f"{args.timeout:.0f} s or a crash loop); the next boot is slot {env.get('slot', 'a')}",
          flush=True)
    return 1


def add_upgrade_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upgrade", help="appliance image: install a new system in the other "
                       "A/B slot (root)")
    p.add_argument("image", nargs="?",
                   help="vaquero-root.sqfs, a whole vaquero.img, or - (squashfs on stdin)")
    p.add_argument("--reboot", action="store_true", help="reboot into it once written")
    p.add_argument("--confirm", action="store_true",
                   help="(vaq-boot-confirm.service) confirm a trial boot once the peer is healthy")
    p.add_argument("--timeout", type=float, default=300, help="--confirm: seconds to wait")
    p.add_argument("--status", action="store_true", help="slots: running, default, trial")
    p.add_argument("--grubenv", type=Path, default=GRUBENV, help=argparse.SUPPRESS)
    p.add_argument("--partlabel-dir", type=Path, default=PARTLABEL_DIR, help=argparse.SUPPRESS)
    p.add_argument("--proc-cmdline", type=Path, default=PROC_CMDLINE, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_upgrade)
