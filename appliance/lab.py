"""`vaq-peer lab`: a virtual datacenter on this one machine, to see the whole product work.

`lab up` builds, as root: a boot network (a bridge in a network namespace), a site of 3 peers
(`vaq-peer serve`, each in its own namespace on the bridge, configured by `vaq-peer init`),
a git remote holding a lab SoT whose artifacts are real (the small test OS the test rigs
build: a Debian kernel and a busybox initramfs, with their true sha256), and N QEMU machines,
each powered only through its own `ipmi_sim` BMC on the bridge. It pushes the SoT, approves
its first revision, and returns; the peers then power, netboot and install the machines.
This machine reaches the peers through a veth on the bridge (198.18.0.254), so `vaq-peer
status`, `rollout --follow`, `hosts` work from the shell with the printed VAQ_PEER.

What runs where: one supervisor process (`python -m appliance.lab run`, detached) owns every
namespace, peer, BMC and QEMU; `lab status` reads its state file and the API; `lab down`
sends it SIGTERM and it removes everything, the state directory included.

Why the test rigs are imported from the checkout's `tools/rigs` instead of being moved into
the package: they are the same code the end-to-end tests trust (namespaces with pid-tagged
names and a sweep for leftovers, the BMC's chassis program, the test-OS build), and the lab
needs QEMU, OpenIPMI and a kernel package, which only a development or evaluation machine
has. So the lab, like `vaq-peer demo`, runs from a checkout; an installed appliance has no
`tools/` and `lab up` says so instead of failing on an import.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = Path("/run/vaquero-lab")
PEERS = ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
HOST_ADDRESS = "198.18.0.254/24"
HTTP_PORT = 8080
BMC_USER, BMC_PASSWORD = "admin", "Lab-ipmi-Pw-4412"
STAGE_TIMEOUT = 600  # a stage under TCG on a busy 2-core machine takes 20-90 s
MAX_MACHINES = 8
SOL_PORT = 9700  # + the machine's number: its serial port, which its BMC serves as SOL
GIT_ENV = {"GIT_AUTHOR_NAME": "Vaquero lab", "GIT_AUTHOR_EMAIL": "lab@vaquero.invalid",
           "GIT_COMMITTER_NAME": "Vaquero lab", "GIT_COMMITTER_EMAIL": "lab@vaquero.invalid",
           "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}


class LabError(Exception):
    """What stops the lab, with what to do about it."""


def rigs_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab creates network namespaces and taps: run it as root"
    if not (REPO / "tools" / "rigs" / "bmc_guest.py").is_file():
        return f"the lab runs from a checkout (it uses {REPO / 'tools/rigs'}), not found"
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tools.rigs.bmc_guest import unavailable_reason

    return unavailable_reason("bios")


def machine(i: int) -> dict[str, str]:
    return {"name": f"lab-{i:02d}", "mac": f"52:54:00:18:00:{i:02x}",
            "ipv4": f"198.18.0.{10 + i}", "bmc": f"198.18.0.{100 + i}"}


def write_sot(root: Path, machines: list[dict[str, str]], kernel: Path, initrd: Path,
              kernel_sha: str, initrd_sha: str) -> None:
    """The lab site: 3 peers, N machines behind IPMI BMCs, a two-stage workflow (firmware,
    install) of network boots of the test OS, which phones home and stays up."""
    for sub in ("sites/lab", "os", "boot", "workflows"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    from tools.rigs.lab_sot import env_document, host_document, os_document

    (root / "sites/lab/env.yml").write_text(env_document(
        PEERS, ["{id: boot, cidr: 198.18.0.0/24, gateway: 198.18.0.1, "
                      "dns: [198.18.0.1], domain: lab.test}"], HTTP_PORT,
        "{install_new_hosts: true, approval: manual}",
        name="The virtual lab of `vaq-peer lab up`"))
    docs = [host_document(m["name"], "testos", m["mac"], m["ipv4"],
                          bmc=(f"52:54:00:bb:00:{int(m['mac'][-2:], 16):02x}", m["bmc"],
                               m["bmc"], 623))
            for m in machines]
    (root / "sites/lab/cluster-lab.yml").write_text("---\n".join(docs))
    for stage in ("firmware", "install"):
        (root / f"os/testos-{stage}.yml").write_text(os_document(
            f"testos-{stage}", kernel, initrd,
            ['panic: "-1"', f'vaq.stage: "{stage}"', 'vaq.stay: "1"',
             'vaq.phone_home: "{{ urls.phone_home }}"'], kernel_sha, initrd_sha))
        (root / f"boot/testos-{stage}.yml").write_text(
            f"id: testos-{stage}\noperating_system: testos-{stage}\n")
    (root / "workflows/testos.yml").write_text(
        "id: testos\nstages:\n"
        f"  - {{name: firmware, boot: testos-firmware, timeout: {STAGE_TIMEOUT}, retries: 1}}\n"
        f"  - {{name: install, boot: testos-install, timeout: {STAGE_TIMEOUT}, retries: 1}}\n"
        f"rollout: {{max_concurrent: {MAX_MACHINES}, max_fail: 0}}\n")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True, env=GIT_ENV, timeout=60).stdout.strip()


def _push_sot(state: Path, machines: list[dict[str, str]], os_files: Any) -> tuple[Path, str]:
    bare, work = state / "sot.git", state / "sot"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True,
                   env=GIT_ENV, timeout=60, capture_output=True)
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    _git(work, "remote", "add", "origin", str(bare))
    write_sot(work, machines, os_files.kernel, os_files.initrd, os_files.kernel_sha256,
              os_files.initrd_sha256)
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", f"the lab: {len(machines)} machine(s) behind IPMI BMCs")
    _git(work, "push", "-q", "origin", "main")
    return bare, _git(work, "rev-parse", "HEAD")


def _init_peers(state: Path, bare: Path) -> list[Path]:
    from .cli.init import SHARED

    """Each peer's config and secrets, written by `vaq-peer init` as an operator would: the
    first writes the site's shared secrets, which are copied to the others."""
    (state / "bmc.yml").write_text(f"lab-ipmi: {{user: {BMC_USER}, password: "
                                   f"\"{BMC_PASSWORD}\"}}\n")
    (state / "bmc.yml").chmod(0o600)
    configs = []
    for i in range(1, len(PEERS) + 1):
        directory = state / f"peer-{i}"
        if i > 1:
            (directory / "secrets").mkdir(parents=True, mode=0o700)
            for name in SHARED:
                shutil.copy2(state / "peer-1" / "secrets" / name, directory / "secrets" / name)
        out = subprocess.run(
            [sys.executable, "-m", "appliance.cli", "init", "--git", str(bare), "--rev", "main",
             "--site", "lab", "--peer", f"peer-{i}", "--interface", "eth0", "--dir",
             str(directory), "--data-dir", str(directory / "data"), "--follow",
             f"file://{bare}"], capture_output=True, text=True, timeout=120, cwd=REPO)
        if not (directory / "peer.yaml").exists():
            raise LabError(f"vaq-peer init for peer-{i} failed:\n{out.stdout}{out.stderr}")
        with (directory / "peer.yaml").open("a") as config:
            config.write(f"bmc: {{secrets_file: {state / 'bmc.yml'}}}\n"
                         "log_format: console\n")
        configs.append(directory / "peer.yaml")
    return configs


def _host_link(lan: Any, name: str) -> None:
    """This machine on the boot bridge, so the CLI reaches the peers from the shell."""
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", "host0",
                    "netns", lan.name], check=True, capture_output=True, timeout=10)
    lan.run("ip", "link", "set", "host0", "master", "br0")
    lan.run("ip", "link", "set", "host0", "up")
    subprocess.run(["ip", "addr", "add", HOST_ADDRESS, "dev", name], check=True,
                   capture_output=True, timeout=10)
    subprocess.run(["ip", "link", "set", name, "up"], check=True, capture_output=True,
                   timeout=10)


def _api(path: str, token: str, method: str = "GET", body: dict | None = None) -> dict | None:
    import urllib.error
    import urllib.request

    for address in PEERS:
        req = urllib.request.Request(f"http://{address}:{HTTP_PORT}{path}", method=method,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.loads(resp.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError):
            continue
    return None


def _build(state: Path, rig: Any, link: str, machines: list[dict[str, str]],
           procs: list[subprocess.Popen], guests: list[Any], advertiser: list[Any]
           ) -> tuple[str, str]:
    """Everything of the lab, recorded in the lists as it starts (for the teardown)."""
    from tools.rigs.bmc_guest import BmcGuest
    from tools.rigs.qemu_guest import RouterAdvertiser
    from tools.rigs.test_kernel import build_test_os

    os_files = build_test_os()
    bare, sha = _push_sot(state, machines, os_files)
    configs = _init_peers(state, bare)
    token = (state / "peer-1" / "secrets" / "ops.token").read_text().strip()
    lan = rig.netns("lan")
    rig.bridge(lan, "br0", "198.18.0.1/24")
    _host_link(lan, link)
    for i, (address, config) in enumerate(zip(PEERS, configs, strict=True), start=1):
        ns = rig.netns(f"peer{i}")
        rig.veth(lan, ns, bridge="br0", cidr_b=f"{address}/24")
        with (state / f"peer-{i}.log").open("w") as out:
            procs.append(ns.popen([sys.executable, "-m", "appliance.cli", "serve",
                                   "--config", str(config)], stdout=out,
                                  stderr=subprocess.STDOUT, cwd=REPO))
    advertiser.append(RouterAdvertiser(lan, "br0").start())
    for m in machines:
        guest = BmcGuest(lan, "br0", m["mac"], m["bmc"], password=BMC_PASSWORD,
                         user=BMC_USER, workdir=state / "machines" / m["name"],
                         sol_port=SOL_PORT + int(m["name"][-2:]))
        guests.append(guest)
        guest.start()
    return sha, token


def _approve_first(sha: str, token: str, stop: dict[str, bool], state: Path) -> None:
    """What an operator would do after reading the plan: the lab's first revision."""
    deadline = time.monotonic() + 300
    while not stop["now"]:
        rev = _api(f"/v1/revisions/{sha}", token) or {}
        if rev.get("state") == "awaiting_approval":
            _api(f"/v1/revisions/{sha}/approve", token, "POST",
                 {"note": "approved by `vaq-peer lab up`"})
        elif rev.get("state") == "applied":
            # `lab up` says "approved" only once the peer it names answers for the applied
            # revision: the README's next line (`rollout --follow`) reads it there.
            return
        elif rev.get("state") == "rejected":
            raise LabError(f"the peers rejected the lab SoT: {rev.get('reason') or rev}; see "
                           f"{state}/peer-*.log")
        if time.monotonic() > deadline:
            raise LabError(f"the peers did not plan and apply the lab SoT within 300 s "
                           f"(revision {rev.get('state') or 'not seen'}); see "
                           f"{state}/peer-*.log")
        time.sleep(1)


def run(state: Path, count: int) -> int:
    """The supervisor: build everything, approve the first revision, wait for SIGTERM, remove
    everything. Progress and failure go to `state/status.json` for `lab up` to read."""
    from tools.rigs.netns import NetnsRig

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    status_file = state / "status.json"
    link = f"vql{os.getpid()}"[:15]
    machines = [machine(i) for i in range(1, count + 1)]
    status: dict[str, Any] = {"pid": os.getpid(), "phase": "building", "link": link,
                              "machines": machines, "peers": [f"http://{a}:{HTTP_PORT}"
                                                              for a in PEERS]}

    def report(**fields: Any) -> None:
        status.update(fields)
        tmp = status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1))
        os.replace(tmp, status_file)

    report()
    procs: list[subprocess.Popen] = []
    guests: list[Any] = []
    rig = NetnsRig(prefix="vqlab")
    advertiser: list[Any] = []
    try:
        sha, token = _build(state, rig, link, machines, procs, guests, advertiser)
        report(phase="waiting for the peers", revision=sha,
               token_file=str(state / "peer-1" / "secrets" / "ops.token"),
               namespaces=[ns.name for ns in rig.namespaces])
        _approve_first(sha, token, stop, state)
        report(phase="running")
        while not stop["now"]:
            time.sleep(0.5)
        report(phase="stopping")
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure goes to `lab up` via the status file
        report(phase="failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for guest in guests:
            guest.close()
        for ra in advertiser:
            ra.close()
        subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)
        rig.close()
        if status.get("phase") != "failed":
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "run":
    sys.path.insert(0, str(REPO))
    sys.exit(run(Path(sys.argv[2]), int(sys.argv[3])))
