"""`vaq-peer upgrade` on files standing in for the slot partitions, and the image's disk layout.

Real parts: the disk is made by image/assemble.py (sfdisk, mkfs.vfat, mtools, mke2fs,
grub-mkimage), the grubenv is read and written by GRUB's own grub-editenv next to ours, the
system is a real squashfs. Only the block devices are files (the partition contents are
copied out of the assembled disk); booting it is tests/image/test_image_boot.py's job.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from appliance.upgrade import GrubEnv

REPO = Path(__file__).parents[2]
TOOLS = ("mksquashfs", "sfdisk", "mkfs.vfat", "mcopy", "mke2fs", "grub-mkimage", "grub-editenv")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs {', '.join(TOOLS)} (tools/install.sh)")


def vaq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "vaq-peer"), *args],
                          capture_output=True, text=True, timeout=120)


def editenv_list(env: Path) -> dict[str, str]:
    out = subprocess.run(["grub-editenv", str(env), "list"], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def assembled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4 MiB-slot disk with a tiny squashfs system in slot A, and its pieces as files."""
    tmp = tmp_path_factory.mktemp("disk")
    tree = tmp / "tree"
    (tree / "usr/lib/vaquero").mkdir(parents=True)
    (tree / "usr/lib/vaquero/build-id").write_text("vaquero test build 2\n")
    (tree / "blob").write_bytes(os.urandom(300_000))  # incompressible: several blocks
    system = tmp / "system.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(system), "-quiet", "-no-progress",
                    "-comp", "gzip"], check=True, timeout=60)
    disk = tmp / "disk.img"
    subprocess.run([sys.executable, str(REPO / "image/assemble.py"), str(system), str(disk),
                    "--slot-mb", "4", "--state-mb", "8", "--config-mb", "4"],
                   check=True, timeout=120, capture_output=True)
    parts = {p["name"]: p for p in json.loads(subprocess.run(
        ["sfdisk", "--json", str(disk)], capture_output=True, text=True,
        check=True).stdout)["partitiontable"]["partitions"]}
    slots = tmp / "by-partlabel"
    slots.mkdir()
    for name in ("vaq-root-a", "vaq-root-b"):  # the "devices": exactly the partitions' size
        with open(disk, "rb") as src:
            src.seek(parts[name]["start"] * 512)
            (slots / name).write_bytes(src.read(parts[name]["size"] * 512))
    esp_offset = parts["vaq-esp"]["start"] * 512
    env = tmp / "grubenv"
    subprocess.run(["mcopy", "-i", f"{disk}@@{esp_offset}", "::/grub/grubenv", str(env)],
                   check=True, timeout=30)
    return {"disk": disk, "system": system, "slots": slots, "env": env, "tmp": tmp}


def test_the_build_s_grubenv_is_grub_s_format(assembled: dict[str, Path]) -> None:
    env = assembled["env"]
    assert env.stat().st_size == 1024
    assert editenv_list(env) == {"slot": "a"}
    subprocess.run(["grub-editenv", str(env), "set", "try_slot=b", "try_pending=1"], check=True)
    assert GrubEnv.load(env) == {"slot": "a", "try_slot": "b", "try_pending": "1"}
    GrubEnv.update(env, slot="b", try_slot="", try_pending="")
    assert editenv_list(env) == {"slot": "b"}
    assert env.stat().st_size == 1024


def test_upgrade_writes_the_other_slot_and_asks_for_one_trial_boot(
        assembled: dict[str, Path], tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    GrubEnv.new(env, {"slot": "a"})
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=PARTLABEL=vaq-root-a vaq.slot=a ro\n")
    slots = tmp_path / "slots"
    shutil.copytree(assembled["slots"], slots)
    before_a = (slots / "vaq-root-a").read_bytes()
    hidden = ["--grubenv", str(env), "--partlabel-dir", str(slots), "--proc-cmdline",
              str(cmdline)]
    # The whole disk image as IMAGE: its slot A partition is the payload.
    done = vaq("upgrade", str(assembled["disk"]), *hidden)
    assert done.returncode == 0, done.stderr
    assert "slot b written and verified" in done.stdout
    system = assembled["system"].read_bytes()
    assert (slots / "vaq-root-b").read_bytes()[:len(system)] == system
    assert (slots / "vaq-root-a").read_bytes() == before_a  # the running slot is untouched
    assert editenv_list(env) == {"slot": "a", "try_slot": "b", "try_pending": "1"}
    # GRUB boots slot b once (try_pending=0); on that boot, confirm makes b the default. This
    # host has no /run/vaquero/peer.env (no peer config), so the system being up is enough.
    subprocess.run(["grub-editenv", str(env), "set", "try_pending=0"], check=True)
    cmdline.write_text("root=PARTLABEL=vaq-root-b vaq.slot=b ro\n")
    if Path("/run/vaquero/peer.env").exists():
        pytest.skip("this host runs an appliance peer config")
    done = vaq("upgrade", "--confirm", "--timeout", "5", *hidden)
    assert done.returncode == 0, done.stderr
    assert editenv_list(env) == {"slot": "b"}
    # The squashfs alone, from stdin (`ssh peer vaq-peer upgrade - < vaquero-root.sqfs`).
    cmdline.write_text("vaq.slot=b\n")
    with open(assembled["system"], "rb") as stdin:
        done = subprocess.run([str(Path(sys.executable).parent / "vaq-peer"), "upgrade", "-",
                               *hidden], stdin=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (slots / "vaq-root-a").read_bytes()[:len(system)] == system
    assert editenv_list(env) == {"slot": "b", "try_slot": "a", "try_pending": "1"}


def test_upgrade_refuses_what_is_not_a_system_or_does_not_fit(
        assembled: dict[str, Path], tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    GrubEnv.new(env, {"slot": "a"})
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("vaq.slot=a\n")
    slots = tmp_path / "slots"
    slots.mkdir()
    (slots / "vaq-root-b").write_bytes(b"\0" * 65536)  # smaller than the system
    hidden = ["--grubenv", str(env), "--partlabel-dir", str(slots), "--proc-cmdline",
              str(cmdline)]
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(b"not an image" * 100)
    done = vaq("upgrade", str(garbage), *hidden)
    assert done.returncode == 1
    assert "neither a squashfs system nor an appliance disk image" in done.stderr
    done = vaq("upgrade", str(assembled["system"]), *hidden)
    assert done.returncode == 1 and "does not fit" in done.stderr, done.stderr
    cmdline.write_text("root=/dev/sda1 ro\n")
    done = vaq("upgrade", str(assembled["system"]), *hidden)
    assert done.returncode == 1 and "not running from an appliance slot" in done.stderr
    assert editenv_list(env) == {"slot": "a"}  # nothing was asked of GRUB


def _appliance_config():
    path = REPO / "image/rootfs/usr/lib/vaquero/appliance_config.py"
    spec = importlib.util.spec_from_file_location("appliance_config", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tar_b64(members: dict[str, bytes]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def test_kernel_command_line_config_unpacks_only_inside_its_directory(tmp_path: Path) -> None:
    config = _appliance_config()
    me = pwd.getpwuid(os.getuid())
    dest = tmp_path / "cfg"
    config.unpack_cmdline_config(_tar_b64({"peer.yaml": b"site: x\n", "secrets/k": b"s"}),
                                 dest, me)
    assert (dest / "peer.yaml").read_text() == "site: x\n"
    assert oct((dest / "secrets/k").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ValueError, match="refused path"):
        config.unpack_cmdline_config(_tar_b64({"../escape": b"x"}), tmp_path / "c2", me)
    assert not (tmp_path / "escape").exists()
    with pytest.raises(ValueError, match=r"not base64 of a \.tar\.gz"):
        config.unpack_cmdline_config("!!!", tmp_path / "c3", me)


def test_a_peer_config_that_keeps_its_data_off_the_state_partition_is_refused(
        tmp_path: Path) -> None:
    config = _appliance_config()
    (tmp_path / "k").write_text("a2V5\n")
    peer = tmp_path / "peer.yaml"
    peer.write_text("site: s1\npeer: p1\ndata_dir: /srv/data\ninterface: ens5\n"
                    "sot: {path: sot}\ntoken_secret_file: k\n"
                    "raft: {address: '198.18.0.2:7650', password_file: k}\n")
    problems = config.check_peer_config(peer)
    assert problems == [f"{peer}: data_dir is /srv/data; on the image it must be "
                        "/var/lib/vaquero/peer (the state partition, kept across updates)"]
    peer.write_text("site: s1\npeer: p1\n")
    problems = config.check_peer_config(peer)
    assert problems and all(p.startswith(f"{peer}:") for p in problems)


def test_a_missing_peer_config_still_installs_the_partition_s_ssh_keys_and_network(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The first QEMU boot with no peer.yaml said so on the console but answered no SSH: the
    partition's authorized_keys and network files were installed only with a config."""
    config = _appliance_config()
    partition = tmp_path / "etc-vaquero"
    (partition / "network").mkdir(parents=True)
    (partition / "authorized_keys").write_text("ssh-ed25519 AAAA test\n")
    (partition / "network/10-boot.network").write_text("[Match]\nName=ens5\n")
    monkeypatch.setattr(config, "PARTITION_DIR", partition)
    monkeypatch.setattr(config, "RUN", tmp_path / "run")
    monkeypatch.setattr(config, "NETWORK_RUN", tmp_path / "run-network")
    monkeypatch.setattr(config, "cmdline_value", lambda name: None)
    monkeypatch.setattr(config.pwd, "getpwnam", lambda name: pwd.getpwuid(os.getuid()))
    assert config.main() == 0
    assert (tmp_path / "run/ssh/root.authorized_keys").read_text() == "ssh-ed25519 AAAA test\n"
    assert (tmp_path / "run-network/10-boot.network").is_file()
    assert not (tmp_path / "run/peer.env").exists()  # no peer without a config
    assert "<3>vaquero: NO PEER: no " in capsys.readouterr().out
