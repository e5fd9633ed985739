"""A rollout at fleet scale: N machines behind N IPMI BMCs, rolled out by the real workflow
engine of a 3-peer site, no QEMU.

Why: the storm (storm.py) measures the boot chain alone; an operator waits for the whole
rollout: approval, Raft, the engine's batches of `max_concurrent`, IPMI power through each
BMC, two network boots per machine, phone-homes. Here each machine is an OpenIPMI `ipmi_sim`
(in a `cli` namespace on the boot bridge, one UDP port each) whose chassis_control program
(tools/rigs/bmc_guest.py's) starts, on power on, `fleet.py --machine ...`: the storm client's
`boot()` (tools/bench/storm_client.py: DHCP, TFTP, DHCP as iPXE, /ipxe, kernel and initrd,
phone-home) as that machine, which then stays up (an idle process) like an installed
machine until the BMC powers it off or cycles it. The site is tests/workflow/wf_site.py's
(3 `vaq-peer serve`, a git SoT they follow, an ops namespace for the API); the SoT: one
cluster of N hosts, a workflow of two network-boot stages, `max_concurrent` 20.

Reported: the rollout's wall time (approval to `done`) against the ideal, ceil(N / 20)
batches x the machines' own boot time (median over hosts of both stages' boot, power-on to
phone-home, as the client measured it); BMC sessions open at most, per BMC and in all
(sampled from the sims' own session log lines); Raft entries (commit index growth) and
journal events per host; the leader's CPU seconds; steps (boot power actions per host,
revision and stage) run twice, which must be 0.

    sudo .venv/bin/python tools/bench/fleet.py --hosts 20 [--json] [--keep]
        [--kill-leader-at 0.5] [--evidence-window 10] [--bmc-sessions 20]

`--kill-leader-at F` SIGKILLs the leader peer once a fraction F of the hosts is done: the
rollout must go on under the next leader (goal: within 1.3x the ideal, no step twice). A
machine whose DHCP answer came from the killed peer (its TFTP then fails and it goes
silent, as a PXE ROM does) is power-cycled into PXE once the peers' evidence window passes:
600 s by default, longer than the stage timeout (180 s, no retries, max_fail 0), so such a
run fails unless `--evidence-window` is shorter. `--bmc-sessions` sets the peers'
`bmc.max_sessions` (default 8: the 20 machines of a batch queue for 8 sessions).
tools/bench/fleet_report.py computes and prints the figures, also a second ideal counted
from each BMC's power command (see there why).

Measured 2026-12-02 (2-core VM), N=200: 77.6 s and 72.8 s (ratio ~25x the client's ideal,
~2.5x the ideal from each BMC's power command); it was 155-160 s (18.7-19.3x) with three
BMC logins per boot step and a 1.5 s pause between batches. Per batch (~7 s) the critical
path is now the simulated hardware and the session queue: power step p50 ~1.9 s (20
machines for 8 sessions, each ~0.85 s on the wire: the sim spawns a Python chassis program
per command), boot ~0.7 s, power cycle step ~1.8 s, cycle-to-phone-home ~2 s (the sim
polls for "off" once a second); batch to batch ~0.05 s.

The sims offer no serial-over-LAN, so the peers run with `console: {enabled: false}` unless
--consoles (then every console session is refused and retried).

Every N=200 run failed until 2026-12-02 with "no answer within 20 s" from the leader's BMC
calls, and --consoles at N=20 once did the same. Cause (py-spy on the leader): pyghmi takes
its two session-table locks in opposite orders when it sends and when it retransmits a lost
datagram, and all 8 IPMI worker threads deadlocked for good. appliance/power/ipmi.py makes
them one lock; the first N=200 run after it finished 200/200.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench.fleet_report import MAX_CONCURRENT, report, summarise  # noqa: E402

CLIENT_IP = "198.18.0.249"  # the machines' namespace; every BMC listens here, one port each
BMC_PORT0 = 20000
MAX_HOSTS = 200  # host addresses 198.18.0.10-209 in the site's /24


def host(i: int) -> tuple[str, str, str, str]:
    """(name, MAC, IPv4, SMBIOS UUID) of machine i."""
    return (f"f{i:03d}", f"52:54:02:00:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}",
            f"198.18.0.{10 + i}", f"00000000-0000-4000-8002-{i:012x}")


def write_sot(root: Path, n: int, kernel: Path, initrd: Path, stage_timeout: int) -> None:
    """One site `lab` (the wf_site peers), one cluster of n hosts, each with an IPMI BMC on
    CLIENT_IP:BMC_PORT0+i; a workflow of two network-boot stages, max_concurrent 20."""
    from tests.workflow.wf_site import PEERS
    from tools.rigs.lab_sot import env_document, host_document, os_document

    for sub in ("sites/lab", "os", "boot", "workflows"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sites/lab/env.yml").write_text(env_document(
        PEERS, ["{id: boot, cidr: 198.18.0.0/24, gateway: 198.18.0.1, dns: [198.18.0.1], "
                "domain: lab.test}", "{id: bmc, cidr: 198.18.4.0/22}"], 8080,
        "{install_new_hosts: true}"))
    docs = []
    for i in range(n):
        name, mac, ip, uuid = host(i)
        docs.append(host_document(
            name, "fleet", mac, ip, head=f"uuid: {uuid}\n", bmc_subnet="bmc",
            bmc=(f"52:54:02:bb:{i >> 8:02x}:{i & 0xFF:02x}",
                 f"198.18.{4 + (i + 1 >> 8)}.{i + 1 & 0xFF}", CLIENT_IP, BMC_PORT0 + i)))
    (root / "sites/lab/cluster-fleet.yml").write_text("---\n".join(docs))
    for stage in ("firmware", "install"):
        (root / f"os/fleet-{stage}.yml").write_text(os_document(
            f"fleet-{stage}", kernel, initrd,
            [f'vaq.stage: "{stage}"', 'vaq.phone_home: "{{ urls.phone_home }}"']))
        (root / f"boot/fleet-{stage}.yml").write_text(
            f"id: fleet-{stage}\noperating_system: fleet-{stage}\n")
    (root / "workflows/fleet.yml").write_text(
        "id: fleet\nstages:\n"
        f"  - {{name: firmware, boot: fleet-firmware, timeout: {stage_timeout}, retries: 0}}\n"
        f"  - {{name: install, boot: fleet-install, timeout: {stage_timeout}, retries: 0}}\n"
        f"rollout: {{max_concurrent: {MAX_CONCURRENT}, max_fail: 0}}\n")


# -- the machines: one ipmi_sim each, whose power on starts the storm client -------------------


class Bmc:
    """One `ipmi_sim` in the machines' namespace; its chassis_control program (bmc_guest's)
    runs `power-on.sh` on power on, which execs this file's --machine mode as the machine."""

    def __init__(self, cli, work: Path, i: int, password: str, records: Path) -> None:
        from tools.rigs.bmc_guest import CHASSIS_PROGRAM

        self.i, self.work, self.port = i, work, BMC_PORT0 + i
        self.marker = f"vaqfleet-{os.getpid()}-{i}"
        work.mkdir(parents=True)
        (work / "state").mkdir()
        _, mac, _, uuid = host(i)
        machine = [sys.executable, str(Path(__file__).resolve()), "--machine", mac, uuid,
                   str(records), "-name", self.marker]
        self.script = work / "power-on.sh"
        self.script.write_text(f"#!/bin/sh\necho \"power-on $(date +%s.%N)\" >> "
                               f"{shlex.quote(str(work / 'boots.log'))}\n"
                               f"exec {shlex.join(machine)} </dev/null "
                               f">>{shlex.quote(str(work / 'machine.log'))} 2>&1\n")
        (work / "chassis.py").write_text(CHASSIS_PROGRAM)
        (work / "chassis.json").write_text(json.dumps(
            {"marker": self.marker, "script": str(self.script), "qmp": None}))
        (work / "lan.conf").write_text(f"""\
name "{self.marker}"
set_working_mc 0x20
  startlan 1
    addr {CLIENT_IP} {self.port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid {os.urandom(16).hex()}
  endlan
  chassis_control "{sys.executable} -I -S {work / 'chassis.py'}"
  user 2 true "admin" "{password}" admin 10 none md2 md5 straight
""")
        (work / "lan.conf").chmod(0o600)
        (work / "emu.cmds").write_text(
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 "
            "persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n")
        self.log = work / "sim.log"
        self.argv = ["ipmi_sim", "-c", str(work / "lan.conf"), "-f", str(work / "emu.cmds"),
                     "-n", "-s", str(work / "state")]
        self.proc = None
        self.cli = cli

    def start(self) -> None:
        from tools.rigs.bmc_guest import _SUBREAPER_EXEC

        with open(self.log, "ab") as out:
            self.proc = self.cli.popen([sys.executable, "-I", "-S", "-c", _SUBREAPER_EXEC,
                                        *self.argv], stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"ipmi_sim {self.i} exited: {self.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            return f":{self.port:04X} " in Path(f"/proc/{self.proc.pid}/net/udp").read_text()
        return False

    def power_ons(self) -> int:
        with contextlib.suppress(FileNotFoundError):
            return len((self.work / "boots.log").read_text().splitlines())
        return 0

    def close(self) -> None:
        from tools.rigs.bmc_guest import _PROGRAM

        def kill_machine() -> None:
            for _ in range(50):
                pids = _PROGRAM["machine_pids"](self.marker, str(self.script))
                if not pids:
                    return
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)

        kill_machine()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        kill_machine()


def machine_main(mac: str, uuid: str, records: str, marker: str) -> int:
    """One machine's boot (power-on to phone-home), appended to `records` as a JSON line;
    then the machine stays up, an idle process that still carries its marker."""
    from tools.bench import storm_client as sc

    async def run() -> sc.Machine:
        machine = sc.Machine(mac, uuid)
        dhcp = sc.DhcpClients("eth0")
        try:
            machine.started = time.monotonic()
            await sc.boot(machine, dhcp, deadline=machine.started + 120)
        finally:
            dhcp.close()
        return machine

    wall = time.time()
    m = asyncio.run(run())
    seconds = None if m.finished is None else m.finished - m.started
    line = json.dumps({"mac": mac, "at": wall, "seconds": seconds, "failed": m.failed,
                       "phases": m.phases})
    with open(records, "a") as f:  # one short write per line: O_APPEND keeps lines whole
        f.write(line + "\n")
    if m.failed is not None:
        return 1
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-c",
                              "import signal\nsignal.pause()", "-name", marker])
    return 0


# -- the run -------------------------------------------------------------------------------------


def sniff_main(out: str, low: int, high: int) -> int:
    """Every RMCP+ session seen on the wire to a BMC port in [low, high]: (port, session ID)
    -> [first, last] packet time, written as JSON to `out` on SIGTERM. Why the wire: the sim
    logs no RMCP+ session, and pyghmi's sockets are not connected (no 4-tuple to count)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    sock.bind(("eth0", 0))
    sock.settimeout(0.5)
    seen: dict[str, list[float]] = {}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("sniffing", flush=True)
    while not stop:
        try:
            frame = sock.recv(2048)
        except (TimeoutError, InterruptedError):
            continue
        ip = frame[14:]
        if len(ip) < 20 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4:]
        port = struct.unpack("!H", udp[2:4])[0]
        rmcp = udp[8:]
        # RMCP (4 bytes), then IPMI 2.0: auth type 6, payload type, session ID (LE), seq
        if not low <= port <= high or len(rmcp) < 10 or rmcp[4] != 0x06:
            continue
        sid = struct.unpack("<I", rmcp[6:10])[0]
        if sid:
            span = seen.setdefault(f"{port}/{sid:08x}", [time.time(), 0.0])
            span[1] = time.time()
    Path(out).write_text(json.dumps(seen))
    return 0


def kill_leader(site, started: float, done: int, cpu0: dict[int, float]) -> dict:
    """SIGKILL the leader peer mid-rollout (--kill-leader-at): its figures until then."""
    from tools.bench.wrkload import cpu_seconds

    leader = site.leader()
    assert leader is not None, "no leader to kill"
    cpu = sum(cpu_seconds(site.procs[leader].pid)[:2]) - cpu0[leader]
    site.kill(leader)
    at = round(time.monotonic() - started, 2)
    print(f"  killed the leader, peer-{leader + 1}, {at} s in ({done} hosts done)", flush=True)
    return {"peer": leader, "at_s": at, "done": done, "cpu_s": round(cpu, 2)}


def wait_leader(site, timeout: float) -> int:
    """The leader's index, once the site has one."""
    deadline = time.monotonic() + timeout
    while (leader := site.leader()) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no leader in {timeout:.0f} s:\n" + site.tails())
        time.sleep(0.2)
    return leader


def follow(site, sha: str, n: int, args: argparse.Namespace, started: float,
           cpu0: dict[int, float]) -> tuple[str | None, dict | None]:
    """Poll the rollout until it ends or --timeout: (its last state, the kill's figures if
    --kill-leader-at killed the leader on the way)."""
    state, killed = None, None
    for _ in range(int(args.timeout / 0.2) + 1):  # bounded in count and in time
        data = site.try_api(f"/v1/rollouts/{sha}") or {}
        if (state := data.get("state")) in ("done", "failed", "halted") or \
                time.monotonic() > started + args.timeout:
            break
        done = (data.get("counts") or {}).get("done", 0)
        if args.kill_leader_at is not None and killed is None and \
                done >= args.kill_leader_at * n:
            killed = kill_leader(site, started, done, cpu0)
        time.sleep(0.2)
    return state, killed


def run(n: int, args: argparse.Namespace) -> dict:
    from tests.workflow.wf_site import BMC_PASSWORD, Site, approve, events
    from tests.workflow.wf_sot import init_repo, push
    from tools.bench.wrkload import cpu_seconds
    from tools.rigs.netns import NetnsRig

    tmp = Path(tempfile.mkdtemp(prefix=f"fleet-{n}-"))
    kernel, initrd = tmp / "vmlinuz", tmp / "initrd.img"
    kernel.write_bytes(os.urandom(args.kernel_kb * 1024))
    initrd.write_bytes(os.urandom(args.initrd_kb * 1024))
    records = tmp / "boots.jsonl"
    records.touch()
    records.chmod(0o666)
    work, bare = init_repo(tmp)
    write_sot(work, n, kernel, initrd, args.stage_timeout)
    sha = push(work, f"a fleet of {n}")
    bmcs: list[Bmc] = []
    site = sniffer = None
    with NetnsRig() as rig:
        try:
            site = Site(rig, tmp, bare, extra_config=(
                ("" if args.consoles else "console: {enabled: false}\n")
                + (f"workflow: {{evidence_window: {args.evidence_window}}}\n"
                   if args.evidence_window else "")), bmc_max_sessions=args.bmc_sessions)
            for i, p in site.procs.items():
                print(f"  peer {i + 1}: {shlex.join(p.args)}", flush=True)
            cli = rig.netns("cli")
            rig.veth(site.lan, cli, bridge="br0", cidr_b=f"{CLIENT_IP}/24")
            batch = "".join(f"address add {host(i)[2]}/32 dev eth0\n" for i in range(n))
            subprocess.run(cli.cmd("ip", "-batch", "-"), input=batch, text=True, check=True,
                           timeout=60)
            for i in range(n):
                bmc = Bmc(cli, tmp / "bmc" / f"{i:03d}", i, BMC_PASSWORD, records)
                bmcs.append(bmc)
                bmc.start()
            print(f"  {n} BMCs, each: {shlex.join(bmcs[0].argv)} (in {cli.name}; chassis "
                  f"program starts {bmcs[0].script}: "
                  f"{bmcs[0].script.read_text().splitlines()[-1]})", flush=True)
            deadline = time.monotonic() + 60
            while not all(b.ready() for b in bmcs):
                if time.monotonic() > deadline:
                    raise RuntimeError("the BMCs did not bind their ports in 60 s")
                time.sleep(0.1)
            leader = wait_leader(site, 120)
            index0 = site.api("/v1/status", peer=leader)["raft"]["commit_index"]
            events0 = len(events(site))
            cpu0 = {i: sum(cpu_seconds(p.pid)[:2]) for i, p in site.procs.items()}
            sniffer = cli.popen([sys.executable, str(Path(__file__).resolve()), "--sniff",
                                 str(tmp / "sessions.json"), str(BMC_PORT0),
                                 str(BMC_PORT0 + n - 1)], stdout=subprocess.PIPE, text=True)
            print(f"  sniffer: {shlex.join(sniffer.args)}", flush=True)
            assert sniffer.stdout is not None and sniffer.stdout.readline()
            approve(site, sha)
            started = time.monotonic()
            state, killed = follow(site, sha, n, args, started, cpu0)
            wall = time.monotonic() - started
            if killed is not None:  # the new leader, for its figures
                leader = wait_leader(site, 60)
            sniffer.terminate()
            sniffer.wait(timeout=10)
            cpu = sum(cpu_seconds(site.procs[leader].pid)[:2]) - cpu0[leader]
            index = site.api("/v1/status", peer=leader)["raft"]["commit_index"]
            journal = events(site)
            hosts = site.api("/v1/hosts")["hosts"]
            power_ons = [b.power_ons() for b in bmcs]
        except BaseException:
            if site is not None:
                print(site.tails(), file=sys.stderr)
            raise
        finally:
            if sniffer is not None and sniffer.poll() is None:
                sniffer.kill()
                sniffer.wait(timeout=10)
            for b in bmcs:
                b.close()
            if site is not None:
                site.close()
    seen = {"n": n, "state": state, "wall": wall, "journal": journal[events0:],
            "hosts": hosts, "power_ons": power_ons, "raft_entries": index - index0, "cpu": cpu,
            "killed": killed}
    try:
        return summarise(seen, tmp / "boots.jsonl", tmp / "sessions.json",
                         [b.work for b in bmcs], [host(b.i)[1] for b in bmcs])
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--sniff":
        return sniff_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    if len(sys.argv) > 1 and sys.argv[1] == "--machine":
        mac, uuid, records, flag, marker = sys.argv[2:7]
        assert flag == "-name"
        return machine_main(mac, uuid, records, marker)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", default="20", help="machine counts, comma-separated (<= 200)")
    ap.add_argument("--kernel-kb", type=int, default=256)
    ap.add_argument("--initrd-kb", type=int, default=1024)
    ap.add_argument("--stage-timeout", type=int, default=180)
    ap.add_argument("--timeout", type=float, default=1200, help="per rollout, seconds")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory (logs)")
    ap.add_argument("--kill-leader-at", type=float, default=None, metavar="FRACTION",
                    help="SIGKILL the leader peer once this fraction of the hosts is done")
    ap.add_argument("--evidence-window", type=float, default=None, metavar="S",
                    help="the peers' workflow.evidence_window (default 600 s): how soon a "
                    "machine whose boot a killed peer lost is power-cycled into PXE again")
    ap.add_argument("--bmc-sessions", type=int, default=None,
                    help="the peers' bmc.max_sessions (default: the peer's own default)")
    ap.add_argument("--consoles", action="store_true",
                    help="let the leader record SOL consoles (the sims offer no SOL)")
    args = ap.parse_args()
    print(f"fleet: {shlex.join([sys.executable, *sys.argv])}", flush=True)
    results = []
    for n in (int(x) for x in args.hosts.split(",")):
        if not 1 <= n <= MAX_HOSTS:
            ap.error(f"--hosts: 1..{MAX_HOSTS} each")
        r = run(n, args)
        report(r)
        results.append(r)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
