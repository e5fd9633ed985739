"""DHCP benchmark: our server against Kea and dnsmasq, same 1,000 reservations, perfdhcp load.

Why: the data plane must not be the weak part of a boot storm. Every server gets the same
static reservations and the same boot network (a bridge in a namespace, 198.18.0.0/20), and
perfdhcp (relayed DORA from a second namespace, MACs drawn from the reserved list) offers
increasing rates for a fixed period each. A step is drop-free when every DISCOVER got its
OFFER and every REQUEST its ACK; the best drop-free step is the server's figure. A step that
drops is run once more (the machine may have been busy), then the series stops, so the run is
bounded (servers x steps x 2 x period). The server's CPU time per completed DORA at a low rate
that all manage (--cpu-rate) is printed too: it depends far less on the machine's load.

The references are configured as their users run them for static reservations: dnsmasq with
`--leasefile-ro` (otherwise it rewrites and fsyncs its whole lease file on every ACK, and the
figure measures the disk: ~250/s), Kea with its memfile lease database on tmpfs and logging
at WARN. Every server's exact command line (and Kea's configuration) is printed.

    sudo .venv/bin/python tools/bench/dhcp.py [--hosts 1000] [--period 5] [--rates 1000,2000]

perfdhcp itself runs out of CPU somewhere around a few thousand DORA/s on 2 cores: a server
that reaches the top step is faster than this harness can tell.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from appliance.netboot import dhcp_table as t  # noqa: E402
from tools.rigs.netns import Netns, NetnsRig  # noqa: E402

SERVER_IP = "198.18.0.1"
LOAD_IP = "198.18.0.2"
CIDR = "198.18.0.0/20"
FIRST = 300  # host i gets 198.18.i/256.i%256, from 198.18.1.44 up
DEFAULT_RATES = (250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000)


def host(i: int) -> tuple[str, str, str]:
    return (f"52:54:00:12:{i >> 8:02x}:{i & 0xFF:02x}", f"198.18.{i >> 8}.{i & 0xFF}", f"node{i}")


def hosts(n: int) -> list[tuple[str, str, str]]:
    return [host(i) for i in range(FIRST, FIRST + n)]


def make_spec(n: int) -> t.TableSpec:
    subnet = t.SubnetSpec(
        cidr=CIDR,
        gateway=SERVER_IP,
        dns=("198.18.0.53",),
        domain="lab.example",
        ntp=("198.18.0.123",),
        lease_time=3600,
    )
    boot = t.BootFiles(ipxe_script_url=f"http://{SERVER_IP}/boot.ipxe")
    return t.TableSpec(
        subnets=(subnet,),
        reservations=tuple(
            t.ReservationSpec(mac, ip, f"{name}.lab.example", CIDR, boot)
            for mac, ip, name in hosts(n)
        ),
        server=t.ServerIdentity({"br0": SERVER_IP}, next_server=SERVER_IP),
    )


# -- the three servers ---------------------------------------------------------------------


def serve_ours(n: int) -> None:
    """Entry point of the child process (run inside the server namespace)."""
    from appliance.netboot.dhcp_server import DhcpServer

    table = t.compile_table(make_spec(n), "br0")

    async def main() -> None:
        server = DhcpServer(lambda: table, "br0", server_ip=SERVER_IP)
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        print(json.dumps(dict(server.counters)), flush=True)
        await server.close()

    asyncio.run(main())


def show_command(name: str, argv: list[str], note: str = "") -> None:
    """Print a server's exact command line, so that anyone can check how it was configured."""
    print(f"  {name} command: {shlex.join(argv)}" + (f"\n  {name} {note}" if note else ""))


def start_ours(ns: Netns, n: int, tmp: Path) -> subprocess.Popen:
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-ours", str(n)]
    show_command("ours", argv)
    log = open(tmp / "ours.log", "w")  # noqa: SIM115 -- lives as long as the process
    return ns.popen(argv, stdout=log, stderr=subprocess.STDOUT)


def start_kea(ns: Netns, n: int, tmp: Path) -> subprocess.Popen:
    reservations = [
        {"hw-address": mac, "ip-address": ip, "hostname": name} for mac, ip, name in hosts(n)
    ]
    conf = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": ["br0"], "dhcp-socket-type": "udp"},
            "lease-database": {  # on tmpfs: the run measures Kea, not the disk
                "type": "memfile",
                "persist": True,
                "name": str(tmp / "kea-leases4.csv"),
                "lfc-interval": 0,
            },
            "valid-lifetime": 3600,
            "host-reservation-identifiers": ["hw-address"],
            "subnet4": [
                {
                    "id": 1,
                    "subnet": CIDR,
                    "option-data": [
                        {"name": "routers", "data": SERVER_IP},
                        {"name": "domain-name-servers", "data": "198.18.0.53"},
                        {"name": "domain-name", "data": "lab.example"},
                        {"name": "ntp-servers", "data": "198.18.0.123"},
                    ],
                    "reservations": reservations,
                }
            ],
            "loggers": [
                {
                    "name": "kea-dhcp4",
                    "output_options": [{"output": str(tmp / "kea.log")}],
                    "severity": "WARN",
                }
            ],
        }
    }
    path = tmp / "kea-dhcp4.json"
    path.write_text(json.dumps(conf))
    env = dict(os.environ, KEA_PIDFILE_DIR=str(tmp), KEA_LOCKFILE_DIR=str(tmp))
    argv = ["kea-dhcp4", "-c", str(path)]
    shown = json.loads(json.dumps(conf))
    shown["Dhcp4"]["subnet4"][0]["reservations"] = f"<the same {n} reservations>"
    show_command("kea", argv, f"config {path}: {json.dumps(shown)}")
    log = open(tmp / "kea.out", "w")  # noqa: SIM115
    return ns.popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_dnsmasq(ns: Netns, n: int, tmp: Path) -> subprocess.Popen:
    hostsfile = tmp / "dnsmasq.hosts"
    hostsfile.write_text("".join(f"{mac},{ip},{name}\n" for mac, ip, name in hosts(n)))
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--port=0",
        "--interface=br0",
        "--quiet-dhcp",
        "--log-facility=-",
        "--dhcp-authoritative",
        f"--dhcp-range={CIDR.split('/')[0]},static,255.255.240.0,1h",
        f"--dhcp-hostsfile={hostsfile}",
        "--leasefile-ro",  # static reservations need no lease database
        f"--pid-file={tmp / 'dnsmasq.pid'}",
        f"--dhcp-option=3,{SERVER_IP}",
        "--dhcp-option=6,198.18.0.53",
        "--dhcp-option=15,lab.example",
        "--dhcp-option=42,198.18.0.123",
    ]
    show_command("dnsmasq", argv)
    log = open(tmp / "dnsmasq.out", "w")  # noqa: SIM115
    return ns.popen(argv, stdout=log, stderr=subprocess.STDOUT)


SERVERS = {"ours": start_ours, "kea": start_kea, "dnsmasq": start_dnsmasq}

# -- perfdhcp --------------------------------------------------------------------------------

_BLOCK = re.compile(r"Statistics for: ([A-Z-]+)\*+\s*\n(.*?)(?=\*\*\*|\Z)", re.S)
_FIELD = re.compile(r"^(sent packets|received packets|avg delay|max delay): ([\d.]+)", re.M)
_TIMES = re.compile(r"Timestamps for packets: ([A-Z-]+)\*+\s*\n(.*?)(?=\*\*\*|\Z)", re.S)
_SENT_RECEIVED = re.compile(r"sent / received: ([\d.]+) / ([\d.]+)")


def p99_ms(delays_s: list[float]) -> float | None:
    """The 99th percentile (nearest rank) of one exchange's delays, in ms."""
    if not delays_s:
        return None
    ranked = sorted(delays_s)
    return ranked[max(0, -(-99 * len(ranked) // 100) - 1)] * 1e3


def perfdhcp_argv(macs: Path, rate: int, period: float) -> list[str]:
    # -x t: every answered exchange's send and receive times, printed at the end (p99)
    argv = ["perfdhcp", "-4", "-x", "t", "-l", LOAD_IP, "-r", str(rate), "-p", f"{period:g}"]
    return [*argv, "-W", "500000", "-M", str(macs), SERVER_IP]  # 0.5 s for late answers


def perfdhcp(load: Netns, macs: Path, rate: int, period: float) -> dict[str, dict[str, float]]:
    """One bounded run; returns {"DISCOVER-OFFER": {"sent packets": .., "received packets":
    .., "avg delay": ms, "max delay": ms, "p99 delay": ms}, "REQUEST-ACK": ...}. perfdhcp
    prints no percentiles; the p99 comes from the timestamps of every exchange it prints."""
    out = load.run(*perfdhcp_argv(macs, rate, period), check=False, timeout=period + 30).stdout
    stats = {m[1]: {k: float(v) for k, v in _FIELD.findall(m[2])} for m in _BLOCK.finditer(out)}
    for m in _TIMES.finditer(out):
        p99 = p99_ms([float(b) - float(a) for a, b in _SENT_RECEIVED.findall(m[2])])
        if p99 is not None and m[1] in stats:
            stats[m[1]]["p99 delay"] = p99
    return stats


def _pair(stats: dict[str, dict[str, float]], exchange: str) -> tuple[int, int]:
    got = stats.get(exchange, {})
    return int(got.get("sent packets", 0)), int(got.get("received packets", 0))


def wait_ready(load: Netns, macs: Path, proc: subprocess.Popen, deadline_s: float = 20) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        stats = perfdhcp(load, macs, 10, 2)
        if _pair(stats, "REQUEST-ACK")[1] > 0:
            return
    raise RuntimeError("server did not answer within the deadline")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step(load: Netns, macs: Path, proc: subprocess.Popen, rate: int, period: float) -> dict:
    cpu0 = cpu_seconds(proc.pid)
    stats = perfdhcp(load, macs, rate, period)
    cpu = cpu_seconds(proc.pid) - cpu0
    do, ra = _pair(stats, "DISCOVER-OFFER"), _pair(stats, "REQUEST-ACK")
    delays = [stats.get(x, {}) for x in ("DISCOVER-OFFER", "REQUEST-ACK")]
    return {
        "rate": rate,
        "sent": do[0],
        "drops": (do[0] - do[1]) + (ra[0] - ra[1]),
        "dora_per_s": ra[1] / period,
        "cpu_us_per_dora": cpu / ra[1] * 1e6 if ra[1] else None,
        # per exchange (DISCOVER-OFFER, REQUEST-ACK), in ms
        "avg_delay_ms": max(d.get("avg delay", 0.0) for d in delays),
        "max_delay_ms": max(d.get("max delay", 0.0) for d in delays),
        "p99_delay_ms": max(d.get("p99 delay", 0.0) for d in delays),
    }


def measure(name: str, srv: Netns, load: Netns, args: argparse.Namespace, tmp: Path) -> dict:
    """Raise the offered rate until a step drops (retried once: the machine may be busy)."""
    macs = tmp / "macs.txt"
    proc = SERVERS[name](srv, args.hosts, tmp)
    best: dict = {"server": name, "best_rate": 0, "dora_per_s": 0.0, "cpu_us_per_dora": None,
                  "avg_delay_ms": None, "max_delay_ms": None, "p99_delay_ms": None}
    best["steps"] = []
    try:
        try:
            wait_ready(load, macs, proc)
        except RuntimeError as exc:
            logs = "".join(p.read_text()[-2000:] for p in [*tmp.glob("*.out"), *tmp.glob("*.log")])
            print(f"  {name}: {exc}\n{logs}")
            return best
        for rate in args.rates:
            for _attempt in range(1 + args.retries):
                result = step(load, macs, proc, rate, args.period)
                best["steps"].append(result)
                cpu = result["cpu_us_per_dora"]
                print(
                    f"  {name:8} offered {rate:6}/s  DORA done {result['dora_per_s']:8.0f}/s"
                    f"  drops {result['drops']:5}  CPU {cpu or 0:6.0f} us/DORA  delay avg "
                    f"{result['avg_delay_ms']:.2f} p99 {result['p99_delay_ms']:.2f} max "
                    f"{result['max_delay_ms']:.2f} ms"
                )
                if result["sent"] and not result["drops"]:
                    break
            if not result["sent"] or result["drops"]:
                break
            best["best_rate"], best["dora_per_s"] = rate, result["dora_per_s"]
            best["avg_delay_ms"] = result["avg_delay_ms"]
            best["max_delay_ms"] = result["max_delay_ms"]
            best["p99_delay_ms"] = result["p99_delay_ms"]
            if rate == args.cpu_rate:
                best["cpu_us_per_dora"] = result["cpu_us_per_dora"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--period", type=float, default=4.0, help="seconds per rate step")
    ap.add_argument(
        "--rates", type=lambda s: [int(x) for x in s.split(",")], default=list(DEFAULT_RATES)
    )
    ap.add_argument("--servers", default="ours,kea,dnsmasq")
    ap.add_argument("--retries", type=int, default=1, help="re-runs of a step that dropped")
    ap.add_argument(
        "--cpu-rate", type=int, default=250, help="step whose server CPU per DORA is reported"
    )
    ap.add_argument("--serve-ours", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_ours:
        serve_ours(args.serve_ours)
        return 0
    for tool in ("perfdhcp", "kea-dhcp4", "dnsmasq"):
        if shutil.which(tool) is None:
            print(f"missing {tool}", file=sys.stderr)
            return 2
    results = []
    # tmpfs: Kea's memfile and every server's files stay off the disk
    tmpfs = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="vq-bench-dhcp-", dir=tmpfs) as tmpdir, \
            NetnsRig("vqb") as rig:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)  # dnsmasq reads its hosts file after dropping to "nobody"
        (tmp / "macs.txt").write_text("".join(f"{mac}\n" for mac, _, _ in hosts(args.hosts)))
        srv = rig.netns("srv")
        rig.bridge(srv, "br0", f"{SERVER_IP}/20")
        load = rig.netns("load")
        rig.veth(srv, load, bridge="br0", cidr_b=f"{LOAD_IP}/20")
        for name in args.servers.split(","):
            sub = tmp / name
            sub.mkdir()
            (sub / "macs.txt").write_bytes((tmp / "macs.txt").read_bytes())
            print(f"{name}: {args.hosts} reservations, {args.period:g} s per step")
            results.append(measure(name, srv, load, args, sub))
    by = {r["server"]: r for r in results}
    print()
    print(f"load average now: {os.getloadavg()[0]:.1f} (figures fall when the machine is busy)")
    # delays compare at one offered rate: the highest that every server passed drop-free
    common = min((r["best_rate"] for r in results), default=0)

    def at_common(r: dict) -> dict:
        passed = [s for s in r["steps"] if s["rate"] == common and s["sent"] and not s["drops"]]
        return passed[-1] if passed else {}

    print(f"{'server':10} {'best drop-free rate':>20} {'DORA/s done':>12} {'CPU us/DORA':>12}"
          f" {f'avg delay ms @{common}/s':>22} {f'p99 delay ms @{common}/s':>22}"
          f" {f'max delay ms @{common}/s':>22}")
    for r in results:
        cpu = f"{r['cpu_us_per_dora']:.0f}" if r["cpu_us_per_dora"] else "-"
        step_c = at_common(r)
        print(f"{r['server']:10} {r['best_rate']:>20} {r['dora_per_s']:>12.0f} {cpu:>12}"
              f" {step_c.get('avg_delay_ms', float('nan')):>22.2f}"
              f" {step_c.get('p99_delay_ms', float('nan')):>22.2f}"
              f" {step_c.get('max_delay_ms', float('nan')):>22.2f}")
    ours = by.get("ours")
    for ref in ("kea", "dnsmasq"):
        if not ours or ref not in by:
            continue
        if by[ref]["dora_per_s"]:
            ratio = ours["dora_per_s"] / by[ref]["dora_per_s"]
            print(f"ratio ours/{ref}, drop-free DORA/s: {ratio:.2f} (goal >= 1.5)")
        if ours["cpu_us_per_dora"] and by[ref]["cpu_us_per_dora"]:
            ratio = ours["cpu_us_per_dora"] / by[ref]["cpu_us_per_dora"]
            print(f"ratio ours/{ref}, server CPU per DORA at {args.cpu_rate}/s: {ratio:.2f}"
                  " (lower is better)")
        mine, theirs = at_common(ours), at_common(by[ref])
        if mine.get("p99_delay_ms") and theirs.get("p99_delay_ms"):
            print(f"ratio ours/{ref}, p99 delay at {common}/s: "
                  f"{mine['p99_delay_ms'] / theirs['p99_delay_ms']:.2f} (goal <= 1); avg "
                  f"{mine['avg_delay_ms'] / theirs['avg_delay_ms']:.2f}, max "
                  f"{mine['max_delay_ms'] / theirs['max_delay_ms']:.2f}")
    print(f"load command: {shlex.join(perfdhcp_argv(Path('macs.txt'), 1000, args.period))} "
          "(-r: each step's rate)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
