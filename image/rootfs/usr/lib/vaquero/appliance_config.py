"""First boot (and every boot) of the appliance image: find, check and install the peer's config.

Why a separate step before the peer: the system is read-only and identical on every peer, so
everything that makes a machine *this* peer comes from outside it, either the small FAT
partition labelled VAQCONFIG (mounted read-only at /etc/vaquero, writable from any laptop) or
`vaq.config=<base64 of a .tar.gz of the same files>` on the kernel command line. A missing or
bad config must not leave a silent black box: the console says what is wrong and where to put
the file, and SSH (keys from the same place) and the serial console stay up.

Files it reads from the config directory:
  peer.yaml               the peer config (docs/peer.md); relative paths are relative to it
  authorized_keys         SSH public keys for root (optional)
  network/*.network       systemd-networkd files for the boot and peer networks (optional;
                          default: DHCP on every Ethernet port)
It writes only under /run: /run/vaquero/peer.env (the config path, read by vaq-peer.service,
which does not start without it), /run/vaquero/ssh/root.authorized_keys, /run/systemd/network/.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import pwd
import shutil
import sys
import tarfile
from pathlib import Path

PARTITION_DIR = Path("/etc/vaquero")
CMDLINE_DIR = Path("/run/vaquero/cmdline-config")
RUN = Path("/run/vaquero")
NETWORK_RUN = Path("/run/systemd/network")
MAX_CMDLINE_TAR = 1 << 20  # unpacked bytes: a config and a few secrets, never more
HELP = (
    "Put the peer's files on the FAT partition labelled VAQCONFIG (partition 5 of the image; "
    "any laptop can write it): peer.yaml, its secret files, authorized_keys, network/*.network. "
    "Or pass vaq.config=<base64 of a .tar.gz of them> on the kernel command line. "
    "See docs/install.md. Then reboot."
)


def say(line: str, priority: int = 6) -> None:
    """One line in the journal; on the console too when `priority` is warning (4) or worse:
    journald forwards the unit's stdout to the console only up to MaxLevelConsole=warning
    (the `<N>` prefix is the line's syslog priority)."""
    print(f"<{priority}>vaquero: {line}", flush=True)


def cmdline_value(name: str) -> str | None:
    try:
        words = Path("/proc/cmdline").read_text().split()
    except OSError:
        return None
    for word in words:
        key, _, value = word.partition("=")
        if key == name:
            return value
    return None


def unpack_cmdline_config(blob: str, dest: Path, owner: pwd.struct_passwd) -> None:
    """Unpack `vaq.config=`: regular files and directories only, inside `dest`, bounded."""
    try:  # plain base64 (`base64 -w0`) or its URL-safe form, padding optional
        raw = base64.b64decode(blob.replace("-", "+").replace("_", "/")
                               + "=" * (-len(blob) % 4), validate=True)
        tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:*")  # noqa: SIM115 (with below)
    except (binascii.Error, tarfile.TarError, ValueError) as exc:
        raise ValueError(f"vaq.config= is not base64 of a .tar.gz: {exc}") from None
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(mode=0o700, parents=True)
    total = 0
    with tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if member.name.startswith("/") or ".." in parts or not parts:
                raise ValueError(f"vaq.config=: refused path {member.name!r}")
            target = dest.joinpath(*parts)
            if member.isdir():
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
            elif member.isfile():
                total += member.size
                if total > MAX_CMDLINE_TAR:
                    raise ValueError("vaq.config=: more than 1 MiB unpacked")
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())
                target.chmod(0o600)
            else:
                raise ValueError(f"vaq.config=: {member.name!r} is not a file or directory")
    for path in [dest, *dest.rglob("*")]:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def install_access(config_dir: Path) -> None:
    """SSH keys and network files first: they keep the machine reachable even with a bad
    peer.yaml."""
    keys = config_dir / "authorized_keys"
    ssh_dir = RUN / "ssh"
    ssh_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    if keys.is_file():
        target = ssh_dir / "root.authorized_keys"
        target.write_bytes(keys.read_bytes())
        target.chmod(0o600)
        say(f"SSH: root keys from {keys}")
    else:
        say(f"SSH: no {keys}; root login by SSH is closed")
    networks = sorted((config_dir / "network").glob("*.network"))
    if networks:
        NETWORK_RUN.mkdir(parents=True, exist_ok=True)
        for path in networks:
            shutil.copyfile(path, NETWORK_RUN / path.name)
            (NETWORK_RUN / path.name).chmod(0o644)
        say("network: " + ", ".join(p.name for p in networks))


def check_peer_config(path: Path) -> list[str]:
    """Every problem of the peer config, file:line each (empty: good)."""
    from appliance.config import ConfigError, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        return str(exc).splitlines()
    problems = []
    state = Path("/var/lib/vaquero/peer")
    if config.data_dir != state and state not in config.data_dir.parents:
        problems.append(f"{path}: data_dir is {config.data_dir}; on the image it must be "
                        f"{state} (the state partition, kept across updates)")
    return problems


def find_config(owner: pwd.struct_passwd) -> Path | None:
    if (PARTITION_DIR / "peer.yaml").is_file():
        return PARTITION_DIR
    blob = cmdline_value("vaq.config")
    if blob:
        unpack_cmdline_config(blob, CMDLINE_DIR, owner)
        return CMDLINE_DIR
    return None


def main() -> int:
    RUN.mkdir(mode=0o755, parents=True, exist_ok=True)
    env = RUN / "peer.env"
    env.unlink(missing_ok=True)
    owner = pwd.getpwnam("vaquero")
    try:
        config_dir = find_config(owner)
    except ValueError as exc:
        install_access(PARTITION_DIR)  # whatever the partition holds keeps the machine reachable
        say(f"NO PEER: {exc}", 3)
        say(HELP, 4)
        return 0
    if config_dir is None:
        # No peer.yaml, but the partition's SSH keys and network files still apply: the first
        # QEMU boot with a missing config answered no SSH, its keys never installed.
        install_access(PARTITION_DIR)
        say(f"NO PEER: no {PARTITION_DIR}/peer.yaml and no vaq.config= on the kernel "
            "command line.", 3)
        say(HELP, 4)
        return 0
    install_access(config_dir)
    problems = check_peer_config(config_dir / "peer.yaml")
    if problems:
        say(f"NO PEER: the config in {config_dir} is not valid:", 3)
        for line in problems:
            say(f"  {line}", 3)
        say(HELP, 4)
        return 0
    env.write_text(f"VAQ_CONFIG={config_dir / 'peer.yaml'}\n")
    say(f"peer config {config_dir / 'peer.yaml'} is valid; starting vaq-peer", 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
