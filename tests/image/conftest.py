"""Shared parts of the appliance image tests: the one-peer site's config partition, and
talking to the booted machine from outside (HTTP and SSH from the test's namespace)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.image.image_vm import ImageGuest, image_unavailable
from tests.netboot.test_boot_e2e import GUESTS, SERVER, write_sot
from tools.rigs.netns import Netns
from tools.rigs.qemu_guest import unavailable_reason as qemu_unavailable
from tools.rigs.test_kernel import build_test_os

T = TypeVar("T")
PEER_MAC = "52:54:00:e2:00:10"
HTTP = f"http://{SERVER}:8080"
ARTIFACTS = Path("/etc/vaquero/artifacts")  # where the config partition is mounted, in the VM


@pytest.fixture(scope="session")
def image_ready() -> None:
    reason = image_unavailable() or qemu_unavailable("uefi")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def guest_os():
    return build_test_os()


@pytest.fixture
def site_config(tmp_path: Path, guest_os) -> Path:
    """What an operator writes on the config partition for a one-peer site (docs/install.md):
    peer.yaml, its secrets, an SSH key, the boot network's address, and here also the SoT and
    the test OS it boots (a lab's `sot: {path: ...}`; production follows a git remote)."""
    cfg = tmp_path / "config"
    (cfg / "secrets").mkdir(parents=True)
    (cfg / "network").mkdir()
    (cfg / "artifacts").mkdir()
    shutil.copyfile(guest_os.kernel, cfg / "artifacts/vmlinuz")
    shutil.copyfile(guest_os.initrd, cfg / "artifacts/initrd.img")
    # The SoT's artifacts: file:// URLs of the copies on the config partition, as the VM sees it.
    write_sot(cfg / "sot", dataclasses.replace(guest_os, kernel=ARTIFACTS / "vmlinuz",
                                               initrd=ARTIFACTS / "initrd.img"))
    (cfg / "secrets/phone-home.key").write_text("aW1hZ2UtdGVzdC1waG9uZS1ob21lLWtleQ==\n")
    (cfg / "secrets/raft.key").write_text("aW1hZ2UtdGVzdC1yYWZ0LWtleQ==\n")
    (cfg / "peer.yaml").write_text(f"""\
site: e2e
peer: peer-1
data_dir: /var/lib/vaquero/peer
interface: ens5
sot: {{path: sot}}
token_secret_file: secrets/phone-home.key
raft: {{address: '{SERVER}:7650', password_file: secrets/raft.key}}
""")
    (cfg / "network/10-boot.network").write_text(
        f"[Match]\nName=ens5\n\n[Network]\nAddress={SERVER}/24\n")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, timeout=30)
    shutil.copyfile(f"{key}.pub", cfg / "authorized_keys")
    return cfg


def ssh(ns: Netns, key: Path, command: str, *, timeout: float = 240,
        stdin_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `command` as root on the machine, over SSH from the test's namespace; a command
    still running at `timeout` counts as failed (exit 124), like `timeout(1)`. Generous: under
    TCG on a busy machine, starting `vaq-peer` in the guest alone has taken over a minute."""
    argv = ns.cmd("ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                  "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                  "-o", "LogLevel=ERROR", f"root@{SERVER}", command)
    try:
        if stdin_file is None:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        with stdin_file.open("rb") as stdin:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  stdin=stdin)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, 124, str(exc.stdout or ""),
                                           f"timed out after {timeout:.0f} s")


def healthz(ns: Netns) -> bool:
    """One probe; a probe the loaded host did not even finish in time is a "not yet" (seen:
    `ip netns exec curl -m 3` still running after 10 s on a 2-core host at load 15)."""
    try:
        done = ns.run("curl", "-sf", "-m", "5", f"{HTTP}/healthz", check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def wait_until(vm: ImageGuest, what: str, probe: Callable[[], T | None],
               timeout: float) -> T:
    """Poll `probe` every 2 s until it answers, the VM stops, or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if not vm.running or time.monotonic() > deadline:
            state = "stopped" if not vm.running else f"not within {timeout:.0f} s"
            raise AssertionError(f"{vm.name}: {what}: {state}; console:\n"
                                 + "\n".join(vm.boot_text().splitlines()[-60:]))
        time.sleep(2)


def wait_healthy(ns: Netns, vm: ImageGuest, timeout: float = 900) -> float:
    """Seconds from power on until the peer answers /healthz from outside the VM."""
    wait_until(vm, "/healthz", lambda: healthz(ns), timeout)
    return vm.elapsed


def netboot_guest() -> tuple[str, str, str]:
    """The SoT's BIOS machine (name, MAC, IPv4) that netboots from the image's peer."""
    name = "bios-01"
    mac, ip, _ = GUESTS[name]
    return name, mac, ip
