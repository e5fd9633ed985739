"""A peer dying in the middle of a machine's boot chain does not strand the machine.

Three `vaq-peer serve` processes, each in its own network namespace on one boot bridge, each
serving the same SoT (each its own group of one: this is the data plane alone); a BIOS QEMU
guest netboots the test OS. The peer serving the guest is killed (SIGKILL) at one step of
its chain; the guest's scripts fall back to the site's other peers for every later fetch
(sot.render.ipxe_try_peers) and the test OS phones home through another peer. Nobody
touches the guest: one QEMU start, no reboot (QEMU runs with -no-reboot, so a reboot would
end it), and the phone-home lands on a live peer.

Kill points: as the peer serves the stage script (the kernel fetch follows at once), as it
finishes sending the kernel (the initrd is next), as the guest's GET of the initrd reaches
it (seen on the boot bridge by tools/rigs/wire_watch.py: no peer logs a request in flight),
and as the guest reports its kernel and initrds loaded (the phone-home is next). Why the
initrd kill lands on the GET and not later, in the answer's bytes: a process killed after
its answer is queued in its kernel's socket buffer does not cut the transfer (the kernel
sends what was queued, then FIN), and with iPXE's keep-alive connection grown by the 8 MB
kernel the whole 1.2 MB initrd fits in that buffer (seen: killed 64 KiB into it, the guest
still got all of it from the dead peer). A kill right after DHCP, before any
script, leaves nothing to fall back from: that machine is the engine's to rescue through its
BMC (tests/workflow/test_host_runner.py; with a QEMU machine: test_peer_death_e2e.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tools.rigs.netns import NetnsRig
from tools.rigs.netns import unavailable_reason as netns_unavailable
from tools.rigs.qemu_guest import QemuGuest, RouterAdvertiser
from tools.rigs.qemu_guest import unavailable_reason as qemu_unavailable
from tools.rigs.test_kernel import GuestOS, build_test_os
from tools.rigs.wire_watch import Packet, WireWatch

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).parent / "vaq-peer")
PEERS = ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
HOST, MAC, IP = "fb-01", "52:54:00:fb:00:01", "198.18.0.31"


def write_sot(root: Path, guest_os: GuestOS) -> None:
    for sub in ("sites/fb", "os", "boot", "workflows"):
        (root / sub).mkdir(parents=True)
    peers = "\n".join(f"  - {{name: peer-{i}, address: {a}}}" for i, a in enumerate(PEERS, 1))
    (root / "sites/fb/env.yml").write_text(f"""
id: fb
subnets:
  - {{id: boot, cidr: 198.18.0.0/24, gateway: 198.18.0.1, dns: [198.18.0.1], domain: fb.test}}
peers:
{peers}
netboot: {{http_port: 8080}}
""")
    (root / "sites/fb/cluster-guests.yml").write_text(
        f"name: {HOST}\nworkflow: testos\ninterfaces:\n"
        f"  - {{type: physical, mac: \"{MAC}\", subnet: boot, ipv4: {IP}}}\n")
    (root / "os/testos.yml").write_text(guest_os.sot_os(peers_fallback=True))
    (root / "boot/testos.yml").write_text("id: testos\noperating_system: testos\n")
    (root / "workflows/testos.yml").write_text(
        "id: testos\nstages:\n  - {name: boot, boot: testos, timeout: 300}\n")


def log_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@pytest.fixture(scope="module")
def guest_os():
    return build_test_os()


class InitrdAsked:
    """On the bridge: the guest's GET of the initrd; `kill(index of the peer it went to)` at
    once. Then counts what that connection brings the guest from the dead peer (its kernel
    flushing what the process had queued before it died)."""

    def __init__(self, initrd_sha: str, kill: Callable[[int], None]) -> None:
        self.sha, self.kill = initrd_sha.encode(), kill
        self.flow: tuple[str, int] | None = None  # (peer address, guest port)
        self.after_kill = 0
        self.killed: int | None = None

    def __call__(self, pkt: Packet) -> bool:
        if pkt.proto != "tcp":
            return False
        if self.killed is None and pkt.src == IP and pkt.dport == 8080 \
                and pkt.payload.startswith(b"GET ") and self.sha in pkt.payload:
            self.killed, self.flow = PEERS.index(pkt.dst), (pkt.dst, pkt.sport)
            self.kill(self.killed)
        elif self.flow == (pkt.src, pkt.dport) and pkt.sport == 8080 and pkt.dst == IP:
            self.after_kill += len(pkt.payload)
        return False


@pytest.mark.parametrize("kill_at", ["script", "kernel", "initrd", "loaded"])
def test_the_guest_finishes_through_another_peer_when_its_peer_dies(
        guest_os, tmp_path: Path, kill_at: str) -> None:
    reason = netns_unavailable() or qemu_unavailable("bios")
    if reason:
        pytest.skip(reason)
    sot = tmp_path / "sot"
    write_sot(sot, guest_os)
    secret = tmp_path / "secret"
    secret.write_text("ZmFsbGJhY2stdGVzdC1zZWNyZXQta2V5LTAxMjM0NQ==\n")
    raft_secret = tmp_path / "raft.secret"
    raft_secret.write_text("ZmFsbGJhY2stcmFmdA==\n")
    raft_secret.chmod(0o600)
    trigger = {  # the log event, on the serving peer, at which it is killed
        "script": lambda e: e["event"] == "boot.script" and e.get("host") == HOST,
        "kernel": lambda e: (e["event"] == "artifact.request"
                             and e.get("sha256") == guest_os.kernel_sha256
                             and e.get("client") == IP and e.get("status") == 200),
        "initrd": lambda e: False,  # on the wire: InitrdAsked
        "loaded": lambda e: e["event"] == "boot.loaded" and e.get("host") == HOST,
    }[kill_at]
    with NetnsRig() as rig:
        lan = rig.netns("lan")
        rig.bridge(lan, "br0", "198.18.0.1/24")
        procs, logs = [], []
        for i, address in enumerate(PEERS):
            ns = rig.netns(f"peer{i + 1}")
            rig.veth(lan, ns, bridge="br0", cidr_b=f"{address}/24")
            config = tmp_path / f"peer{i + 1}.yaml"
            config.write_text(
                f"site: fb\npeer: peer-{i + 1}\ndata_dir: {tmp_path / f'data{i + 1}'}\n"
                f"interface: eth0\nsot: {{path: {sot}}}\ntoken_secret_file: {secret}\n"
                f"http: {{port: 8080}}\ntftp: {{enabled: false}}\n"
                f"raft: {{address: '{address}:7960', password_file: {raft_secret}}}\n")
            logs.append(tmp_path / f"peer{i + 1}.log")
            with logs[-1].open("w") as out:
                procs.append(ns.popen([EXE, "serve", "--config", str(config)], stdout=out,
                                      stderr=subprocess.STDOUT))
        advertiser = RouterAdvertiser(lan, "br0")
        advertiser.start()
        guest = QemuGuest(lan, "br0", mac=MAC, firmware="bios", name=HOST)
        killed = None
        cut = InitrdAsked(guest_os.initrd_sha256, lambda i: procs[i].send_signal(signal.SIGKILL))
        watch = WireWatch(lan, "br0", cut)
        if kill_at == "initrd":
            watch.start()
        try:
            deadline = time.monotonic() + 60
            while not all('"revision.serving"' in p.read_text() for p in logs):
                assert time.monotonic() < deadline, "\n".join(p.read_text() for p in logs)
                time.sleep(0.2)
            guest.start()
            deadline = time.monotonic() + 240
            home = None
            while home is None:
                assert time.monotonic() < deadline, (
                    f"no phone-home (killed peer {killed})\n{guest.console_tail(60)}")
                if killed is None and cut.killed is not None:
                    killed = cut.killed
                    procs[killed].wait(timeout=10)
                    print(f"\nkilled peer {killed + 1} as the guest asked it for the initrd, "
                          f"{guest.elapsed:.1f} s after the guest started")
                for i, path in enumerate(logs):
                    events = log_lines(path)
                    if killed is None and any(trigger(e) for e in events):
                        procs[i].send_signal(signal.SIGKILL)
                        procs[i].wait(timeout=10)
                        killed = i
                        print(f"\nkilled peer {i + 1} at '{kill_at}' "
                              f"{guest.elapsed:.1f} s after the guest started")
                    if any(e["event"] == "boot.phone_home" and e.get("host") == HOST
                           for e in events):
                        home = i
                assert guest.running or home is not None, guest.console_tail(60)
                time.sleep(0.1)
            print(f"phoned home through peer {home + 1} {guest.elapsed:.1f} s after start")
            console = guest.console_text()
        finally:
            watch.close()
            advertiser.close()
            guest.close()
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert killed is not None, f"the trigger never fired\n{console}"
    assert home != killed
    # one boot, untouched: one iPXE start, one kernel, one phone-home
    assert console.count("iPXE initialising devices") == 1, console
    assert console.count("PHONED-HOME") == 1, console
    served = {i: [e["event"] for e in log_lines(p) if e.get("host") == HOST]
              for i, p in enumerate(logs)}
    print({f"peer{i + 1}": sorted(set(v)) for i, v in served.items()})
    if kill_at == "initrd":
        _check_the_initrd_came_again(logs, killed, cut, guest_os, served)


def _check_the_initrd_came_again(logs: list[Path], killed: int, cut, guest_os,
                                 served: dict) -> None:
    """The initrd's fetch failed with its peer: the guest fetched it again, whole, from a
    live peer."""
    print(f"after the kill, {cut.after_kill} bytes of an answer crossed the bridge")
    again = [i for i, p in enumerate(logs) if i != killed and any(
        e["event"] == "artifact.request" and e.get("sha256") == guest_os.initrd_sha256
        and e.get("client") == IP and e.get("status") == 200 for e in log_lines(p))]
    if not again and cut.after_kill > 0:
        # The peer had already handed its whole answer to the kernel when the kill landed
        # (a loaded host: the watch saw the GET late). A killed process's queued bytes are
        # still sent, so the guest got its initrd from the dead peer and nothing fell back:
        # the case this parameter exists for did not happen in this run.
        pytest.skip(f"the kill landed after the dead peer's answer was queued "
                    f"({cut.after_kill} bytes crossed after it); nothing to fall back from")
    assert again, served
