"""A site power cut, for real: three peers in QEMU guests booted from the appliance image,
every QEMU SIGKILLed at once in the middle of a stream of acknowledged writes.

Why not kill -9 of `vaq-peer`: a killed process leaves its writes in the kernel's page cache,
which survives it. Here the kernel dies too, and so does the disk's write cache:

- **Guest page cache: lost.** It lives in the guest's RAM, which dies with QEMU.
- **The disk's volatile write cache: lost.** Each guest's disk is a virtio-blk device whose
  backend is nbdkit serving a raw file through its cache filter in `cache=writeback` mode:
  every write the guest sends is held in nbdkit's cache and reaches the file only when the
  guest flushes (ext4's journal commits, fsync, fdatasync, msync: a FLUSH, or FUA writes).
  QEMU runs the drive with `cache=writeback`, so it announces a write cache to the guest and
  passes each guest flush on to nbdkit as an NBD flush. nbdkit is SIGKILLed with QEMU, and its
  cache (an unlinked temporary file) goes with it: after the cut, the file holds exactly what
  the guest had flushed, like a disk that loses its write cache when the power goes.
  (QEMU's own `cache=` modes cannot show that: whatever QEMU has handed to the host before a
  SIGKILL stays in the host's page cache, flushed or not.)
- **The cut:** all three QEMUs are SIGSTOPped (the guests freeze within a millisecond of
  each other), then the three nbdkits and the three QEMUs are SIGKILLed. A flush that
  nbdkit was writing back when it died is left half done, which the guest allows: it had
  not been told that flush completed.
- **Not covered:** a disk that acknowledges a flush it did not do, torn sectors inside one
  write, and writes inside one unflushed epoch reaching the medium in part or out of order
  (here an unflushed epoch is always dropped whole).

Booting three guests under TCG takes 10-20 minutes on a loaded 2-core machine, so the group
is booted once (the *baseline*: the guests up, a leader elected, a few writes committed),
then stopped and saved: each guest's RAM and device state by QEMU migration to a file, and
its disk as it was at that instant. Every repeat restores the three guests from that
baseline (fresh copies of the disks, `-incoming` from the state files), resumes them
together, writes from the host to all three peers' APIs (`POST /v1/events`, answered only
after the event is committed by the Raft group: applied on a majority's durable journal),
and at a random moment kills nbdkit and QEMU of all three. Then the check, as a reboot would
see the disks: each disk's state partition is copied out, `e2fsck -fy` replays its ext4
journal (what mounting it at boot does), and `debugfs rdump` takes the peer's data directory
out without mounting; three real `vaq-peer` processes then start from those data
directories, in a namespace with the guests' addresses, and every acknowledged write must be
on every peer at the sequence number it was acknowledged with. They run the image's own
code (its venv, taken from the disk's system squashfs, on this host's Python 3.11): the
journals are replayed by the code that wrote them. `cold_boot_check` instead
boots the three guests from the post-cut disks (slow: the full boot).

Runner: `python -m tests.image.power_cut --repeats 20` (as root; reuses the baseline in
`--work`, booting it first when missing). The slow test `test_power_cut.py` runs one repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.image.image_vm import IMAGE_DIR, ImageGuest, disk_with_config
from tools.rigs.netns import Netns, NetnsRig

SITE = "pc"
PEERS = [(f"peer-{i}", f"198.18.0.1{i}", f"52:54:00:e2:01:1{i}") for i in (1, 2, 3)]
HOST_ADDRESS = "198.18.0.1"
BRIDGE_MAC = "52:54:00:e2:01:01"
HTTP_PORT = 8080
RAFT_PORT = 7650
TOKEN = "cG93ZXItY3V0LXRlc3QtYWRtaW4tdG9rZW4="  # a test-only secret, on the test's disks only
STATE_PART = "vaq-state"
DATA_IN_STATE = "peer"  # data_dir /var/lib/vaquero/peer; the partition is /var/lib/vaquero
BOOT_TIMEOUT = 1800.0  # s: three TCG guests on a shared 2-core machine


# ---- the site's config partitions ---------------------------------------------------------

def write_site(root: Path) -> list[Path]:
    """One config directory per peer (docs/install.md): a three-peer site serving a fixed SoT,
    no DHCP or TFTP (nothing to boot here), an admin API token, a static address."""
    sot = root / "sot"
    (sot / f"sites/{SITE}").mkdir(parents=True, exist_ok=True)
    peers = "\n".join(f"  - {{name: {name}, address: {ip}}}" for name, ip, _ in PEERS)
    (sot / f"sites/{SITE}/env.yml").write_text(f"""id: {SITE}
subnets:
  - {{id: boot, cidr: 198.18.0.0/24, gateway: {HOST_ADDRESS}, dns: [{HOST_ADDRESS}],
     domain: pc.test}}
peers:
{peers}
netboot: {{http_port: {HTTP_PORT}}}
""")
    raft_peers = ", ".join(f"'{ip}:{RAFT_PORT}'" for _, ip, _ in PEERS)
    dirs = []
    for name, ip, _ in PEERS:
        cfg = root / name
        for sub in ("secrets", "network"):
            (cfg / sub).mkdir(parents=True, exist_ok=True)
        shutil.copytree(sot, cfg / "sot", dirs_exist_ok=True)
        (cfg / "secrets/phone-home.key").write_text("cG93ZXItY3V0LXBob25lLWhvbWU=\n")
        (cfg / "secrets/raft.key").write_text("cG93ZXItY3V0LXJhZnQ=\n")
        (cfg / "secrets/ops.token").write_text(TOKEN + "\n")
        (cfg / "peer.yaml").write_text(f"""\
site: {SITE}
peer: {name}
data_dir: /var/lib/vaquero/peer
interface: ens5
sot: {{path: sot}}
token_secret_file: secrets/phone-home.key
raft: {{address: '{ip}:{RAFT_PORT}', peers: [{raft_peers}], password_file: secrets/raft.key}}
api:
  tokens: [{{name: ops, role: admin, file: secrets/ops.token}}]
http: {{listen: {ip}}}
tftp: {{enabled: false}}
dhcp: {{enabled: false}}
prefetch_artifacts: false
""")
        (cfg / "network/10-boot.network").write_text(
            f"[Match]\nName=ens5\n\n[Network]\nAddress={ip}/24\n")
        dirs.append(cfg)
    return dirs


# ---- a guest with a monitor, a swappable disk backend and a saved state ---------------------

class PeerVM(ImageGuest):
    """An image guest (legacy BIOS: no firmware variables to save) with an HMP monitor on a
    socket, its disk on `drive` (a raw file, or an NBD socket), optionally resuming from a
    saved state file instead of powering on."""

    def __init__(self, ns: Netns, bridge: str, mac: str, disk: Path, *, name: str,
                 workdir: Path, nbd: Path | None = None, incoming: Path | None = None) -> None:
        super().__init__(ns, bridge, mac, disk, "bios", name=name, workdir=workdir)
        self.monitor_path = workdir / f"{name}.monitor"
        self.nbd, self.incoming = nbd, incoming

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("-monitor") + 1] = f"unix:{self.monitor_path},server=on,wait=off"
        drive = argv.index("if=none,id=d0,format=raw,file=" + str(self.disk))
        if self.nbd is not None:  # cache=writeback: guest flushes become NBD flushes
            argv[drive] = f"if=none,id=d0,format=raw,cache=writeback,file=nbd:unix:{self.nbd}"
        else:
            argv[drive] += ",cache=writeback"
        if self.incoming is not None:
            argv += ["-incoming", f"exec:cat {self.incoming}"]
        return argv

    def hmp(self, command: str, timeout: float = 60) -> str:
        """One human-monitor command; its output."""
        deadline = time.monotonic() + timeout
        while not self.monitor_path.exists():
            if time.monotonic() > deadline or not self.running:
                raise RuntimeError(f"{self.name}: no monitor socket")
            time.sleep(0.2)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.monitor_path))
            _read_prompt(sock)
            sock.sendall(command.encode() + b"\n")
            out = _read_prompt(sock)
        return out.replace("\r", "").split("\n", 1)[-1].rsplit("(qemu)", 1)[0].strip()

    def kill(self) -> None:
        """The power cut: SIGKILL, no shutdown of anything."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def _read_prompt(sock: socket.socket) -> str:
    data = b""
    while not data.rstrip().endswith(b"(qemu)"):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("monitor closed")
        data += chunk
    return data.decode(errors="replace")


class Nbd:
    """nbdkit serving `disk` through a writeback cache: the disk's volatile write cache."""

    def __init__(self, disk: Path, sock: Path, log: Path) -> None:
        self.sock = sock
        sock.unlink(missing_ok=True)
        with log.open("wb") as out:  # a Unix socket: no network, no namespace needed
            self.proc = subprocess.Popen(["nbdkit", "-f", "-U", str(sock), "--filter=cache", "file",
                                  str(disk), "cache=writeback"],
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                 env={**os.environ, "TMPDIR": str(sock.parent)})
        deadline = time.monotonic() + 30
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nbdkit did not start: {log.read_text()}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def nbdkit_unavailable() -> str | None:
    if shutil.which("nbdkit") is None:
        return "nbdkit is missing (tools/install.sh; apt: nbdkit)"
    for tool in ("debugfs", "e2fsck", "sfdisk"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    return None


# ---- talking to the peers -------------------------------------------------------------------

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def get_json(session: aiohttp.ClientSession, ip: str, path: str) -> dict | None:
    try:
        async with session.get(f"http://{ip}:{HTTP_PORT}{path}", headers=HEADERS,
                               timeout=aiohttp.ClientTimeout(total=5)) as r:
            return await r.json() if r.status == 200 else None
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None


async def wait_leader(timeout: float) -> str:
    """Until every peer answers and names the same leader; that leader."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            seen = [await get_json(session, ip, "/v1/leader") for _, ip, _ in PEERS]
            names = {json.dumps(s.get("leader"), sort_keys=True) if s else None for s in seen}
            if None not in names and len(names) == 1 and seen[0] and seen[0].get("leader"):
                return str(seen[0]["leader"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no common leader within {timeout:.0f} s: {seen}")
            await asyncio.sleep(2)


@dataclass
class Writes:
    """Writers, one per peer, each sending its next event once the last one is answered."""

    tag: str
    acked: dict[str, int] = field(default_factory=dict)  # message -> seq
    refused: int = 0
    errors: list[str] = field(default_factory=list)  # the first few refusals, for the report
    first_ack: float | None = None
    stop: bool = False

    async def run(self, ip: str, i: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        k = 0
        async with aiohttp.ClientSession() as session:
            while not self.stop and time.monotonic() < deadline:
                k += 1
                msg = f"{self.tag}-{i}-{k}"
                try:
                    async with session.post(f"http://{ip}:{HTTP_PORT}/v1/events",
                                            json={"message": msg}, headers=HEADERS,
                                            timeout=aiohttp.ClientTimeout(total=15)) as r:
                        body = await r.json() if r.status == 201 else None
                        why = f"{ip}: {r.status} {(await r.text())[:200]}"
                except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                    body, why = None, f"{ip}: {exc!r}"
                if body is not None:  # even after the cut: the guest sent it before
                    self.acked[msg] = int(body["seq"])
                    self.first_ack = self.first_ack or time.monotonic()
                else:
                    self.refused += 1
                    if len(self.errors) < 10:
                        self.errors.append(why)
                    await asyncio.sleep(0.2)


async def read_events(ip: str, timeout: float, top: int) -> dict[str, int]:
    """Every event message this peer holds -> its seq, once it has applied `top` (bounded)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            found: dict[str, int] = {}
            after, last = 0, 0
            for _ in range(1000):
                page = await get_json(session, ip, f"/v1/events?after={after}&limit=1000")
                if page is None:
                    break
                last = page.get("last_seq", 0)
                for event in page["events"]:
                    found[event.get("message") or ""] = event["seq"]
                    after = event["seq"]
                if not page["events"] or after >= last:
                    break
            if last >= top or time.monotonic() > deadline:
                return found
            await asyncio.sleep(1)


# ---- the baseline: three guests booted once, saved ------------------------------------------

def in_ns(ns: Netns, coro_fn, *args, timeout: float = 120):
    """Run an aiohttp coroutine from inside the namespace (where the guests are reachable)."""
    with ns.loop_thread() as loop:
        return loop.run(coro_fn(*args), timeout=timeout)


def make_network(rig: NetnsRig) -> Netns:
    """The guests' link. The bridge's MAC is fixed (a bridge otherwise takes its ports', which
    change with every tap); restored guests whose ARP caches still name another one are
    corrected by the host's first ARP request, as on a real network."""
    ns = rig.netns("pcut")
    rig.bridge(ns, "br0", f"{HOST_ADDRESS}/24")
    ns.run("ip", "link", "set", "br0", "address", BRIDGE_MAC)
    return ns


def build_baseline(work: Path, log=print) -> Path:
    """Boot the three guests, wait for a leader and a few committed writes, stop them together
    and save each one's RAM and devices (migration to a file) and its disk at that instant."""
    base = work / "baseline"
    if (base / "done.json").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    dirs = write_site(work / "config")
    t0 = time.monotonic()
    with NetnsRig("pcb") as rig:
        ns = make_network(rig)
        vms = []
        try:
            for (name, _, mac), cfg in zip(PEERS, dirs, strict=True):
                disk = disk_with_config(IMAGE_DIR / "vaquero.img", cfg, base / f"{name}.raw")
                vms.append(PeerVM(ns, "br0", mac, disk, name=name, workdir=base).start())
            leader = in_ns(ns, wait_leader, BOOT_TIMEOUT, timeout=BOOT_TIMEOUT + 30)
            log(f"baseline: leader {leader} {time.monotonic() - t0:.0f} s after power on")
            writes = Writes("baseline")
            in_ns(ns, writes.run, PEERS[0][1], 0, 20, timeout=60)
            if not writes.acked:
                raise RuntimeError("no write acknowledged by the booted group")
            for vm in vms:  # all three paused before any is saved: one instant for the site
                vm.hmp("stop")
            for vm in vms:
                state = base / f"{vm.name}.state"
                vm.hmp(f'migrate "exec:cat > {state}"', timeout=600)
                deadline = time.monotonic() + 600
                while "Migration status: completed" not in (info := vm.hmp("info migrate")):
                    if "failed" in info or time.monotonic() > deadline:
                        raise RuntimeError(f"{vm.name}: saving failed: {info}")
                    time.sleep(1)
            for vm in vms:
                with contextlib.suppress(RuntimeError, OSError):  # QEMU exits: no prompt
                    vm.hmp("quit")
                vm.wait_exit(60)
        finally:
            for vm in vms:
                vm.close()
    (base / "done.json").write_text(json.dumps({
        "boot_s": round(time.monotonic() - t0), "leader": leader,
        "writes": len(writes.acked), "top_seq": max(writes.acked.values())}))
    log(f"baseline saved in {base} ({time.monotonic() - t0:.0f} s)")
    return base


# ---- one repeat: restore, write, cut ---------------------------------------------------------

@dataclass
class Cut:
    """What one repeat did and found."""

    repeat: int
    acked: int = 0
    refused: int = 0
    top_seq: int = 0
    cut_after_s: float = 0.0  # from the first acknowledged write
    missing: dict[str, list[str]] = field(default_factory=dict)  # peer -> lost messages
    fsck: dict[str, int] = field(default_factory=dict)  # peer -> e2fsck's exit status
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.acked > 0 and not any(self.missing.values())


def restore(ns: Netns, base: Path, rdir: Path) -> tuple[list[PeerVM], list[Nbd]]:
    """The three guests resumed from the baseline, each disk behind its own write cache."""
    vms, nbds = [], []
    copies = [subprocess.Popen(["cp", "--sparse=always", "--reflink=auto",  # side by side
                                str(base / f"{name}.raw"), str(rdir / f"{name}.raw")])
              for name, _, _ in PEERS]
    if any(cp.wait(timeout=300) for cp in copies):
        raise RuntimeError("copying the baseline's disks failed")
    for name, _, mac in PEERS:
        disk = rdir / f"{name}.raw"
        nbds.append(Nbd(disk, rdir / f"{name}.nbd", rdir / f"{name}.nbdkit.log"))
        vms.append(PeerVM(ns, "br0", mac, disk, name=name, workdir=rdir, nbd=nbds[-1].sock,
                          incoming=base / f"{name}.state").start())
    for vm in vms:
        deadline = time.monotonic() + 600
        while "inmigrate" in (status := vm.hmp("info status")):
            if time.monotonic() > deadline or not vm.running:
                raise RuntimeError(f"{vm.name}: not restored: {status}\n{vm.console_tail()}")
            time.sleep(0.5)
    for vm in vms:
        vm.hmp("cont")
    for vm in vms:  # the guest's driver negotiated a write cache: writes wait for a flush
        block = vm.hmp("info block d0")
        if "Cache mode:       writeback" not in block:
            raise RuntimeError(f"{vm.name}: the disk is not in writeback mode: {block}")
    return vms, nbds


def power_cut(vms: list[PeerVM], nbds: list[Nbd]) -> None:
    """Every guest frozen at once, then the disks' caches and the guests killed."""
    for vm in vms:
        if vm.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(vm.proc.pid, signal.SIGSTOP)
    for nbd in nbds:
        nbd.kill()
    for vm in vms:
        vm.kill()


async def write_until_cut(writes: Writes, cut_after: float, cut, timeout: float) -> float:
    """Write to every peer; `cut_after` s after the first acknowledgement, cut the power."""
    tasks = [asyncio.create_task(writes.run(ip, i, timeout)) for i, (_, ip, _) in
             enumerate(PEERS)]
    deadline = time.monotonic() + timeout
    while writes.first_ack is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if writes.first_ack is None:
        writes.stop = True
        await asyncio.gather(*tasks)
        raise RuntimeError(f"no write acknowledged within {timeout:.0f} s of the restore")
    await asyncio.sleep(max(0.0, writes.first_ack + cut_after - time.monotonic()))
    cut()
    at = time.monotonic() - writes.first_ack
    await asyncio.sleep(1)  # answers the guests sent before the cut, still in the host's buffers
    writes.stop = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return at


# ---- the check: the disks as the next boot finds them -----------------------------------------

def data_dir_from_disk(disk: Path, out: Path) -> int:
    """The peer's data directory from a disk after the cut: the state partition copied out,
    its ext4 journal replayed by `e2fsck -fy` (as at boot), the directory dumped by debugfs
    (no mount). e2fsck's exit status (0 clean, 1 fixed); anything worse raises."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True,
                                      text=True, check=True, timeout=30).stdout)
    part = next(p for p in table["partitiontable"]["partitions"] if p.get("name") == STATE_PART)
    fs = out.with_suffix(".ext4")
    with disk.open("rb") as src, fs.open("wb") as dst:
        src.seek(part["start"] * 512)
        left = part["size"] * 512
        while left:
            chunk = src.read(min(left, 1 << 22))
            if not chunk:
                break
            dst.write(chunk)
            left -= len(chunk)
    fsck = subprocess.run(["e2fsck", "-fy", str(fs)], capture_output=True, text=True,
                          timeout=300)
    if fsck.returncode not in (0, 1):
        raise RuntimeError(f"e2fsck {disk.name}: exit {fsck.returncode}\n{fsck.stdout}")
    out.mkdir(parents=True)
    subprocess.run(["debugfs", "-R", f"rdump /{DATA_IN_STATE} {out}", str(fs)],
                   capture_output=True, check=True, timeout=300)
    if not (out / DATA_IN_STATE).is_dir():
        raise RuntimeError(f"{disk.name}: no /{DATA_IN_STATE} on the state partition")
    return fsck.returncode


def image_vaq_peer(work: Path) -> list[str]:
    """The image's own `vaq-peer` (its venv's packages, from the system squashfs of the disk)
    run by this host's Python 3.11: the check must replay the journal with the code that
    wrote it (the worktree's may number events differently, e.g. after a fix)."""
    site = work / "image-venv/opt/vaquero/venv/lib/python3.11/site-packages"
    if not site.is_dir():
        table = json.loads(subprocess.run(["sfdisk", "--json", str(IMAGE_DIR / "vaquero.img")],
                                          capture_output=True, text=True, check=True,
                                          timeout=30).stdout)
        part = next(p for p in table["partitiontable"]["partitions"]
                    if p.get("name") == "vaq-root-a")
        shutil.rmtree(work / "image-venv", ignore_errors=True)
        subprocess.run(["unsquashfs", "-q", "-n", "-o", str(part["start"] * 512), "-d",
                        str(work / "image-venv"), str(IMAGE_DIR / "vaquero.img"),
                        "opt/vaquero/venv/lib"], check=True, timeout=600, capture_output=True)
    return ["/usr/bin/python3", "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); "
            "from appliance.cli import main; sys.exit(main())"]


def start_host_peers(rig: NetnsRig, work: Path, rdir: Path) -> Netns:
    """`vaq-peer serve` for each peer from its data directory, with its own config (data_dir
    changed), in a namespace whose `ens5` has the three guests' addresses."""
    ns = rig.netns("pchk")
    ns.run("ip", "link", "add", "ens5", "type", "veth", "peer", "name", "ens5x")  # no dummy
    for _, ip, _ in PEERS:
        ns.run("ip", "addr", "add", f"{ip}/24", "dev", "ens5")
    for link in ("ens5", "ens5x"):
        ns.run("ip", "link", "set", link, "up")
    vaq_peer = image_vaq_peer(work)
    for name, _, _ in PEERS:
        cfg = rdir / f"host-{name}"
        shutil.copytree(work / "config" / name, cfg)
        text = (cfg / "peer.yaml").read_text().replace(
            "data_dir: /var/lib/vaquero/peer", f"data_dir: {rdir / f'{name}.data' / DATA_IN_STATE}")
        (cfg / "peer.yaml").write_text(text)
        for secret in (cfg / "secrets").iterdir():
            secret.chmod(0o600)
        with (rdir / f"host-{name}.log").open("wb") as out:
            ns.popen([*vaq_peer, "serve", "--config", str(cfg / "peer.yaml")], stdout=out,
                     stderr=subprocess.STDOUT)
    return ns


def check_after_cut(work: Path, rdir: Path, cut: Cut, acked: dict[str, int]) -> None:
    for name, _, _ in PEERS:
        cut.fsck[name] = data_dir_from_disk(rdir / f"{name}.raw", rdir / f"{name}.data")
    with NetnsRig("pcc") as rig:
        ns = start_host_peers(rig, work, rdir)
        in_ns(ns, wait_leader, 300, timeout=330)
        for name, ip, _ in PEERS:
            found = in_ns(ns, read_events, ip, 120, cut.top_seq, timeout=150)
            cut.missing[name] = sorted(m for m, seq in acked.items() if found.get(m) != seq)


def cold_boot_check(work: Path, n: int) -> dict[str, list[str]]:
    """The slow, whole check of repeat `n` (run with `--keep`): the three guests power on
    from their post-cut disks (the guest kernel replays ext4's journal itself, the image's own
    `vaq-peer` reads its Raft journal) and every acknowledged write must be on every peer."""
    rdir = work / f"repeat-{n:02d}"
    acked = json.loads((rdir / "result.json").read_text())["acked_writes"]
    top = max(acked.values())
    bdir = rdir / "cold-boot"
    bdir.mkdir(exist_ok=True)
    missing = {}
    with NetnsRig("pcw") as rig:
        ns = make_network(rig)
        vms = []
        try:
            for name, _, mac in PEERS:
                vms.append(PeerVM(ns, "br0", mac, rdir / f"{name}.raw", name=name,
                                  workdir=bdir).start())
            in_ns(ns, wait_leader, BOOT_TIMEOUT, timeout=BOOT_TIMEOUT + 30)
            for name, ip, _ in PEERS:
                found = in_ns(ns, read_events, ip, 300, top, timeout=330)
                missing[name] = sorted(m for m, seq in acked.items() if found.get(m) != seq)
        finally:
            for vm in vms:
                vm.close()
    return missing


def run_repeat(work: Path, base: Path, n: int, rng: random.Random,
               cut_window: tuple[float, float] = (2.0, 15.0)) -> Cut:
    """One power cut from the baseline; the check of every acknowledged write."""
    t0 = time.monotonic()
    rdir = work / f"repeat-{n:02d}"
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    cut = Cut(n)
    writes = Writes(f"r{n}")
    with NetnsRig("pcr") as rig:
        ns = make_network(rig)
        vms: list[PeerVM] = []
        nbds: list[Nbd] = []
        try:
            vms, nbds = restore(ns, base, rdir)
            cut.cut_after_s = in_ns(ns, write_until_cut, writes, rng.uniform(*cut_window),
                                    lambda: power_cut(vms, nbds), 300, timeout=400)
        finally:
            for nbd in nbds:
                nbd.kill()
            for vm in vms:
                vm.close()
    cut.acked, cut.refused = len(writes.acked), writes.refused
    cut.top_seq = max(writes.acked.values(), default=0)
    if writes.acked:
        check_after_cut(work, rdir, cut, writes.acked)
    cut.seconds = time.monotonic() - t0
    (rdir / "result.json").write_text(json.dumps(
        {**cut.__dict__, "ok": cut.ok, "acked_writes": writes.acked,
         "refusals": writes.errors}, indent=1))
    return cut


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.image.power_cut", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path(__file__).parents[2] / "build/power-cut",
                    help="the baseline (kept and reused) and each repeat's disks and logs")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true",
                    help="keep every repeat's disks (the last one's are always kept)")
    ap.add_argument("--cold-boot", type=int, metavar="N",
                    help="only boot the guests from repeat N's kept disks and check them")
    args = ap.parse_args(argv)
    if args.cold_boot is not None:
        t0 = time.monotonic()
        missing = cold_boot_check(args.work, args.cold_boot)
        lost = sum(len(m) for m in missing.values())
        print(f"cold boot of repeat {args.cold_boot}: "
              f"{'every acknowledged write on every peer' if not lost else f'LOST {missing}'}"
              f" ({time.monotonic() - t0:.0f} s)", flush=True)
        return 1 if lost else 0
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    base = build_baseline(args.work)
    print(f"seed {seed}; baseline {json.loads((base / 'done.json').read_text())}", flush=True)
    cuts = []
    for n in range(1, args.repeats + 1):
        cut = run_repeat(args.work, base, n, rng)
        cuts.append(cut)
        lost = sum(len(m) for m in cut.missing.values())
        print(f"repeat {n:2d}: {cut.acked:4d} writes acknowledged (top seq {cut.top_seq}), "
              f"cut {cut.cut_after_s:5.1f} s after the first, {cut.refused} refused; "
              f"{'all present on every peer' if cut.ok else f'LOST {lost}'}; e2fsck "
              f"{sorted(cut.fsck.values())}; {cut.seconds:.0f} s", flush=True)
        if not args.keep and n < args.repeats:
            for disk in (args.work / f"repeat-{n:02d}").glob("*.raw"):
                disk.unlink()
    good = sum(c.ok for c in cuts)
    print(f"{good}/{len(cuts)} repeats kept every acknowledged write; "
          f"{sum(c.acked for c in cuts)} writes acknowledged in all; "
          f"{sum(c.seconds for c in cuts) / max(1, len(cuts)):.0f} s per repeat", flush=True)
    return 0 if good == len(cuts) else 1


if __name__ == "__main__":
    sys.exit(main())
