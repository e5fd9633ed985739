"""A SoT for workflow tests: one site `lab`, an `etcd` cluster and a `workers` cluster whose
workflow depends on etcd's, two network-boot stages each (firmware, install) of the test OS.

Hosts are (name, cluster, mac, ipv4, bmc) with bmc None (powered by hand: the test acts as
the machine) or (address, port) of an IPMI BMC using the credentials `lab-ipmi`.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tools.rigs.lab_sot import env_document, host_document, os_document

ENV = {"GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.test",
       "GIT_COMMITTER_NAME": "Ops", "GIT_COMMITTER_EMAIL": "ops@example.test",
       "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}


@dataclass
class LabHost:
    name: str
    cluster: str
    mac: str
    ipv4: str
    bmc: tuple[str, int] | None = None
    never_provision: bool = False
    subnet: str = "boot"  # or "loop" (127.0.0.0/24): a host whose health check the test serves


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True, env=ENV, timeout=30).stdout.strip()


def write_sot(root: Path, hosts: list[LabHost], kernel: Path, initrd: Path, *,
              peers: list[str], http_port: int, worker_concurrency: int = 2,
              stage_timeout: int = 300, retries: int = 1, install_note: str = "v1",
              depends: bool = True, install_new_hosts: bool = True,
              force_provision: bool = False,
              health: str | None = None, stay: bool = False,
              firmware_health: str | None = None,
              before_shutdown: dict[str, str] | None = None) -> None:
    """The whole tree; `install_note` lands on the workers' install stage cmdline (change it
    to make every host of the workers cluster, and only those, need a reinstall).
    `firmware_health` and `before_shutdown` ({stage name: YAML list}) go on the workers'
    stages."""
    for sub in ("sites/lab", "os", "boot", "workflows"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sites/lab/env.yml").write_text(env_document(
        peers, ["{id: boot, cidr: 198.18.0.0/24, gateway: 198.18.0.1, dns: [198.18.0.1], "
                "domain: lab.test}", "{id: loop, cidr: 127.0.0.0/24}"], http_port,
        f"{{install_new_hosts: {str(install_new_hosts).lower()}, "
        f"force_provision: {str(force_provision).lower()}}}"))
    for cluster in sorted({h.cluster for h in hosts}):
        docs = []
        for h in (h for h in hosts if h.cluster == cluster):
            last = int(h.mac.split(":")[-1], 16)
            docs.append(host_document(
                h.name, cluster, h.mac, h.ipv4, subnet=h.subnet,
                head=f"never_provision: {str(h.never_provision).lower()}\n",
                bmc=None if h.bmc is None else (f"52:54:00:bb:00:{last:02x}",
                                                f"198.18.0.{200 + last}", *h.bmc)))
        (root / f"sites/lab/cluster-{cluster}.yml").write_text("---\n".join(docs))
    # the firmware stage is shared; each workflow has its own install (the note: workers only)
    for ident, note in (("firmware", "fw"), ("install-etcd", "v1"),
                        ("install-workers", install_note)):
        (root / f"os/testos-{ident}.yml").write_text(os_document(
            f"testos-{ident}", kernel, initrd,
            ['panic: "-1"', f'vaq.stage: "{ident}-{note}"', f'vaq.stay: "{int(stay)}"',
             'vaq.phone_home: "{{ urls.phone_home }}"',
             "vaq.peers: \"{{ urls.peers | join(',') }}\""]))
        (root / f"boot/testos-{ident}.yml").write_text(
            f"id: testos-{ident}\noperating_system: testos-{ident}\n")

    def stages(workflow: str) -> str:
        mine = workflow == "workers"
        checked = f", health: {firmware_health}" if firmware_health and mine else ""
        hooks = {name: f", before_shutdown: {text}" if mine else ""
                 for name, text in (before_shutdown or {}).items()}
        return (f"  - {{name: firmware, boot: testos-firmware, timeout: {stage_timeout}, "
                f"retries: {retries}{checked}{hooks.get('firmware', '')}}}\n"
                f"  - {{name: install, boot: testos-install-{workflow}, "
                f"timeout: {stage_timeout}, retries: {retries}{hooks.get('install', '')}}}\n")

    (root / "workflows/etcd.yml").write_text(
        f"id: etcd\nstages:\n{stages('etcd')}rollout: {{max_concurrent: 1}}\n")
    (root / "workflows/workers.yml").write_text(
        f"id: workers\nstages:\n{stages('workers')}" + ("depends_on: [etcd]\n" if depends else "") +
        f"rollout: {{max_concurrent: {worker_concurrency}, max_fail: 0"
        + (f", health: {health}" if health else "") + "}\n")


def init_repo(tmp: Path) -> tuple[Path, Path]:
    """(work tree, bare remote) with `origin` pointing at the bare one."""
    bare, work = tmp / "sot.git", tmp / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True,
                   env=ENV, timeout=30)
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    git(work, "remote", "add", "origin", str(bare))
    return work, bare


def push(work: Path, message: str) -> str:
    git(work, "add", "-A")
    git(work, "commit", "-qm", message)
    git(work, "push", "-q", "origin", "main")
    return git(work, "rev-parse", "HEAD")


def reset(root: Path) -> None:
    for sub in ("sites", "os", "boot", "workflows"):
        shutil.rmtree(root / sub, ignore_errors=True)
