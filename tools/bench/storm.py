"""Boot storm, end to end: N machines boot through our peer(s) and through a reference chain.

Why: the figure that matters to an operator is how long a rack takes to come up, not any one
protocol's rate. N machines (tools/bench/storm_client.py, one process in a client network
namespace) each do DHCP DORA as a PXE ROM, TFTP of undionly.kpxe, DHCP again as iPXE, the
HTTP chain script and their own script, kernel and initrd by HTTP, and a phone-home, all
over a bridged boot network of network namespaces (198.18.0.0/20). In the same run:

  ours       `vaq-peer serve` (DHCP, TFTP, HTTP, a Raft group of one) with a SoT of N hosts;
             with --peers 3, three peers in three namespaces share the load (each answers
             DHCP; a machine boots from the first that offers)
  reference  dnsmasq (DHCP with --leasefile-ro, TFTP) and nginx (the same scripts, fetched
             from our peer, as static files; the same kernel and initrd; a minimal
             phone-home endpoint: `return 200`), each command line printed

The same client and the same machines load both. Reported per chain: time until all N have
phoned home, p50/p99 per machine (power-on to phone-home), failures by phase, and the ratio
ours/reference of the time until all phoned home (goal: <= 1.0, no failures).

    sudo .venv/bin/python tools/bench/storm.py --hosts 100,500,1000 [--peers 1] [--json]

The kernel and initrd are random files of --kernel-kb and --initrd-kb (small by default:
the storm is about the chain, not about pushing gigabytes through veths on a 2-core box).
Our peers keep their data on disk (--peer-data), so each phone-home pays its journal fsync
and Raft write as in production; the reference's phone-home endpoint records nothing.
Each size runs --rounds paired storms with fresh peers, alternating which chain goes first.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from tools.bench.wrkload import cpu_seconds  # noqa: E402
from tools.rigs.netns import Netns, NetnsRig  # noqa: E402

PEER_IPS = ("198.18.0.2", "198.18.0.3", "198.18.0.4")
CLIENT_IP = "198.18.15.254"
PREFIX = 20
HTTP_PORT = 8080
KPXE = Path("/usr/lib/ipxe/undionly.kpxe")


def host(i: int) -> tuple[str, str, str, str]:
    """(name, MAC, IPv4, SMBIOS UUID) of machine i: addresses from 198.18.1.1 up."""
    n = 256 + i + 1
    return (f"m{i:04d}", f"52:54:01:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}",
            f"198.18.{n >> 8}.{n & 0xFF}", f"00000000-0000-4000-8000-{i:012x}")


def write_sot(root: Path, n: int, peers: int, kernel: Path, initrd: Path) -> None:
    (root / "sites/storm").mkdir(parents=True)
    for d in ("os", "boot", "workflows"):
        (root / d).mkdir()
    peer_list = "\n".join(f"  - {{name: peer-{k + 1}, address: {PEER_IPS[k]}}}"
                          for k in range(peers))
    (root / "sites/storm/env.yml").write_text(f"""
id: storm
subnets:
  - {{id: boot, cidr: 198.18.0.0/{PREFIX}, gateway: 198.18.0.1, dns: [198.18.0.1],
     domain: storm.test}}
peers:
{peer_list}
netboot: {{http_port: {HTTP_PORT}}}
""")
    docs = [f"name: {name}\nworkflow: testos\nuuid: {uuid}\ninterfaces:\n"
            f"  - {{type: physical, mac: \"{mac}\", subnet: boot, ipv4: {ip}}}\n"
            for name, mac, ip, uuid in map(host, range(n))]
    (root / "sites/storm/cluster-storm.yml").write_text("---\n".join(docs))
    ksha = hashlib.sha256(kernel.read_bytes()).hexdigest()
    isha = hashlib.sha256(initrd.read_bytes()).hexdigest()
    (root / "os/testos.yml").write_text(f"""
id: testos
os_family: busybox
major_version: "1"
boot:
  kernel: {{url: "file://{kernel}", sha256: {ksha}, name: vmlinuz}}
  initrd:
    - {{url: "file://{initrd}", sha256: {isha}, name: initrd.img}}
cmdline:
  - console: ttyS0
  - vaq.phone_home: "{{{{ urls.phone_home }}}}"
""")
    (root / "boot/testos.yml").write_text("id: testos\noperating_system: testos\n")
    (root / "workflows/testos.yml").write_text(
        "id: testos\nstages:\n  - {name: boot, boot: testos, timeout: 600}\n"
        "rollout: {max_concurrent: 20}\n")


class Lab:
    """The boot network: a bridge in its own namespace, the peers' and the client's ends."""

    def __init__(self, rig: NetnsRig, peers: int) -> None:
        self.rig = rig
        lan = rig.netns("lan")
        rig.bridge(lan, "br0")
        self.peers: list[Netns] = []
        for k in range(peers):
            ns = rig.netns(f"p{k + 1}")
            rig.veth(lan, ns, bridge="br0", cidr_b=f"{PEER_IPS[k]}/{PREFIX}")
            self.peers.append(ns)
        self.client = rig.netns("cli")
        rig.veth(lan, self.client, bridge="br0", cidr_b=f"{CLIENT_IP}/{PREFIX}")

    def add_machine_addresses(self, n: int) -> None:
        """Every machine's leased address on the client's interface, so that each machine
        talks TFTP and HTTP from its own address (servers cap what one address may take)."""
        batch = "".join(f"address add {host(i)[2]}/32 dev eth0\n" for i in range(n))
        subprocess.run(self.client.cmd("ip", "-batch", "-"), input=batch, text=True,
                       check=True, timeout=120)


NEIGH = Path("/proc/sys/net/ipv4/neigh/default")


@contextlib.contextmanager
def neighbour_room(n: int) -> Iterator[None]:
    """The kernel's ARP table is one for all namespaces (its limits exist only in the
    initial one): a peer talking to N machines needs room for N entries, past the default
    1,024 at which the kernel drops packets ("neighbour table overflow"). Raised for the
    run where lower, and put back."""
    want = {"gc_thresh1": n + 128, "gc_thresh2": 2 * n + 512, "gc_thresh3": 4 * n + 1024}
    before = {k: int((NEIGH / k).read_text()) for k in want}
    changed = {k: v for k, v in want.items() if v > before[k]}
    for k in ("gc_thresh3", "gc_thresh2", "gc_thresh1"):  # thresh1 <= thresh2 <= thresh3
        if k in changed:
            (NEIGH / k).write_text(str(changed[k]))
    if changed:
        print(f"neighbour table limits raised for the run: {changed} (were {before})",
              flush=True)
    try:
        yield
    finally:
        for k in ("gc_thresh1", "gc_thresh2", "gc_thresh3"):
            if k in changed:
                (NEIGH / k).write_text(str(before[k]))


def client_argv(mode: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--client", mode, *args]


def run_client(lab: Lab, args: list[str], timeout: float) -> dict:
    out = lab.client.run(*client_argv(*args), timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_storm_clients(lab: Lab, n: int, args: argparse.Namespace) -> dict:
    """--client-procs processes, each booting every k-th machine, all from one start time."""
    from tools.bench.storm_client import summarise

    k = args.client_procs
    start_at = time.time() + 1.0 + 0.2 * k  # every process is up and its socket bound
    procs = [subprocess.Popen(lab.client.cmd(*client_argv(
        "storm", "--hosts", str(n), "--slice", f"{i}/{k}", "--start-at", f"{start_at:.3f}",
        "--ramp", str(args.ramp), "--timeout", str(args.timeout))), stdout=subprocess.PIPE,
        text=True) for i in range(k)]
    parts = []
    for p in procs:
        out, _ = p.communicate(timeout=args.timeout + 90)
        if p.returncode != 0:
            raise RuntimeError(f"a storm client failed ({p.returncode})")
        parts.append(json.loads(out.strip().splitlines()[-1]))
    return summarise(parts)


def process_tree_cpu(procs: list[subprocess.Popen]) -> tuple[float, float]:
    """(CPU seconds, seconds ready to run but without a core) of the servers: on a loaded
    machine the second says how much of a storm the servers spent waiting for the CPU."""
    total = waited = 0.0
    for p in procs:
        user, system, wait = cpu_seconds(p.pid)
        total += user + system
        waited += wait
    return total, waited


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


# -- ours -----------------------------------------------------------------------------------


def start_peers(lab: Lab, tmp: Path, sot: Path, n_peers: int, kernel: Path, initrd: Path,
                data_root: Path | None) -> list[subprocess.Popen]:
    """`data_root`: where the peers keep their data (Raft journal, phone-home journal,
    artifact cache); on disk, each phone-home's fsyncs cost what they cost in production."""
    secret, raft_secret = tmp / "token.secret", tmp / "raft.secret"
    secret.write_text("c3Rvcm0tcGhvbmUtaG9tZS10b2tlbi1zZWNyZXQ=\n")
    raft_secret.write_text("c3Rvcm0tcmFmdC1ncm91cC1wYXNzd29yZA==\n")
    for f in (secret, raft_secret):
        f.chmod(0o600)
    raft = [f"{PEER_IPS[k]}:7950" for k in range(n_peers)]
    procs = []
    for k, ns in enumerate(lab.peers[:n_peers]):
        # unique per size, round and prefetch run (.../n500/ours-1/prefetch): one name per
        # round without the size made the second size's prefetch peer find the first's dir
        data = (data_root / f"{'-'.join(tmp.parts[-3:])}-peer-{k + 1}" if data_root
                else tmp / f"peer-{k + 1}")
        cache = data / "artifacts" / "sha256"
        cache.mkdir(parents=True)
        for f in (kernel, initrd):  # in the cache already: the storm is not about the mirror
            shutil.copyfile(f, cache / hashlib.sha256(f.read_bytes()).hexdigest())
        config = tmp / f"peer-{k + 1}.yaml"
        config.write_text(f"""
site: storm
peer: peer-{k + 1}
data_dir: {data}
interface: eth0
address: {PEER_IPS[k]}
sot: {{path: {sot}}}
token_secret_file: {secret}
prefetch_artifacts: false
raft: {{address: "{raft[k]}", peers: {json.dumps(raft)}, password_file: {raft_secret}}}
log_format: json
log_level: info
""")
        argv = [str(BIN / "vaq-peer"), "serve", "--config", str(config)]
        print(f"  ours: {shlex.join(argv)}  (in {ns.name}; config {config}:"
              f" {' '.join(config.read_text().split())})", flush=True)
        with open(tmp / f"peer-{k + 1}.log", "wb") as log:
            procs.append(ns.popen(argv, stdout=log, stderr=subprocess.STDOUT))
    return procs


# -- the reference chain ---------------------------------------------------------------------


def start_reference(lab: Lab, tmp: Path, n: int, www: Path) -> list[subprocess.Popen]:
    ns, ip = lab.peers[0], PEER_IPS[0]
    tftp_root = tmp / "tftp"
    tftp_root.mkdir()
    shutil.copy(KPXE, tftp_root / "undionly.kpxe")
    hostsfile = tmp / "dnsmasq.hosts"
    hostsfile.write_text("".join(f"{mac},{addr},{name}\n"
                                 for name, mac, addr, _ in map(host, range(n))))
    for p in (tmp, tftp_root, tftp_root / "undionly.kpxe", hostsfile):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dnsmasq = [
        "dnsmasq", "--keep-in-foreground", "--port=0", "--interface=eth0", "--bind-interfaces",
        "--log-facility=-", "--quiet-dhcp", "--quiet-tftp", "--dhcp-authoritative",
        "--leasefile-ro", f"--pid-file={tmp / 'dnsmasq.pid'}",
        "--dhcp-range=198.18.0.0,static,255.255.240.0,1h", f"--dhcp-hostsfile={hostsfile}",
        "--dhcp-option=3,198.18.0.1", "--dhcp-userclass=set:ipxe,iPXE",
        "--dhcp-boot=tag:!ipxe,undionly.kpxe",
        f"--dhcp-boot=tag:ipxe,http://{ip}:{HTTP_PORT}/boot.ipxe",
        "--enable-tftp", f"--tftp-root={tftp_root}", f"--tftp-max={max(n, 50)}",
    ]
    conf = tmp / "nginx.conf"
    temps = "\n".join(f"    {k}_temp_path {tmp}/{k};" for k in
                      ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""
daemon off;
user root;
worker_processes auto;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
{temps}
    server {{
        listen {ip}:{HTTP_PORT};
        root {www};
        location = /ipxe {{
            default_type "text/plain; charset=utf-8";
            try_files /scripts/$arg_mac =404;
        }}
        location /phone-home/ {{
            default_type application/json;
            return 200 '{{"ok": true}}';
        }}
    }}
}}
""")
    nginx = ["nginx", "-c", str(conf), "-p", str(tmp)]
    print(f"  reference: {shlex.join(dnsmasq)}\n  reference: {shlex.join(nginx)}  (config "
          f"{conf}: {' '.join(conf.read_text().split())})", flush=True)
    procs = []
    for argv, name in ((dnsmasq, "dnsmasq"), (nginx, "nginx")):
        with open(tmp / f"{name}.log", "wb") as log:
            procs.append(ns.popen(argv, stdout=log, stderr=subprocess.STDOUT))
    return procs


def reference_www(tmp: Path, scripts: Path, kernel: Path, initrd: Path) -> Path:
    """nginx's root: our peer's chain script and every host's script, byte for byte (their
    URLs name the address nginx listens on), and the same kernel and initrd."""
    www = tmp / "www"
    (www / "scripts").mkdir(parents=True)
    os.link(tmp / "boot.ipxe", www / "boot.ipxe")
    for f in scripts.iterdir():
        os.link(f, www / "scripts" / f.name)
    for f, name in ((kernel, "vmlinuz"), (initrd, "initrd.img")):
        d = www / "artifacts" / hashlib.sha256(f.read_bytes()).hexdigest()
        d.mkdir(parents=True)
        os.link(f, d / name)
    for p in www.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    www.chmod(0o755)
    return www


# -- one run ----------------------------------------------------------------------------------


def check_running(procs: list[subprocess.Popen], logs: list[Path]) -> None:
    for p, log in zip(procs, logs, strict=True):
        if p.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with {p.returncode}:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")


def storm_once(lab: Lab, label: str, procs: list[subprocess.Popen], n: int, args,
               profile: Path | None = None) -> dict:
    """One storm of n machines; with `profile`, py-spy samples procs[0] meanwhile."""
    cpu0, wait0 = process_tree_cpu(procs)
    t0 = time.monotonic()
    box: list[dict] = []

    def load() -> None:
        box.append(run_storm_clients(lab, n, args))

    report = None
    if profile is not None:
        from tools.bench.spy_profile import record

        report = record(procs[0].pid, args.py_spy, load, profile)
    else:
        load()
    result = box[0]
    cpu1, wait1 = process_tree_cpu(procs)
    result["server_cpu_s"], result["server_waited_s"] = cpu1 - cpu0, wait1 - wait0
    result["wall_s"] = time.monotonic() - t0
    failures = ", ".join(f"{k} {v}" for k, v in result["failures"].items()) or "none"
    done = result["all_done_s"]
    print(f"  {label:10} N={n}: {result['phoned_home']}/{n} phoned home, all in "
          f"{done if done is None else round(done, 2)} s, per machine p50 "
          f"{result['p50_s']:.2f} s p99 {result['p99_s']:.2f} s, failures: {failures}; "
          f"server CPU {result['server_cpu_s']:.1f} s (waited for a core "
          f"{result['server_waited_s']:.1f} s), client CPU {result['client_cpu_s']:.1f} s "
          f"in {result['client_processes']} processes;"
          f" phases p50 {result['phase_p50_s']}",
          flush=True)
    if report:
        print(f"py-spy, {label} peer 1, during the storm:\n{report}", flush=True)
    return result


def ours_round(lab: Lab, n: int, args: argparse.Namespace, tmp: Path, sot: Path,
               files: tuple[Path, Path], first: bool) -> dict:
    """Fresh peers (new data dirs: no host has phoned home yet), one storm. The first round
    first saves what peers serve, for the reference, from peers of their own: a stage's
    script is served only while it is the host's current stage (it carries that stage's
    phone-home token), so it cannot be fetched after the storm, and fetching it from the
    storm's peers beforehand would warm their caches."""
    tmp.mkdir()
    tmp.chmod(0o755)
    if first:
        (tmp / "prefetch").mkdir()
        procs = start_peers(lab, tmp / "prefetch", sot, 1, *files, args.data_root)
        try:
            run_client(lab, ["ready", f"http://{PEER_IPS[0]}:{HTTP_PORT}/boot.ipxe"],
                       timeout=200)
            scripts = tmp.parent / "scripts"
            scripts.mkdir()
            run_client(lab, ["scripts", "--hosts", str(n), "--out", str(scripts), "--chain",
                             str(tmp.parent / "boot.ipxe")], timeout=300)
        finally:
            stop(procs)
    procs = start_peers(lab, tmp, sot, args.peers, *files, args.data_root)
    try:
        for ip in PEER_IPS[:args.peers]:
            run_client(lab, ["ready", f"http://{ip}:{HTTP_PORT}/boot.ipxe"], timeout=200)
        label = "ours" if args.peers == 1 else f"ours x{args.peers}"
        return storm_once(lab, label, procs, n, args,
                          tmp / "spy.txt" if args.py_spy and first else None)
    finally:
        stop(procs)


def reference_round(lab: Lab, n: int, args: argparse.Namespace, tmp: Path, www: Path) -> dict:
    tmp.mkdir()
    tmp.chmod(0o755)
    procs = start_reference(lab, tmp, n, www)
    try:
        run_client(lab, ["ready", f"http://{PEER_IPS[0]}:{HTTP_PORT}/boot.ipxe"], timeout=60)
        check_running(procs, [tmp / "dnsmasq.log", tmp / "nginx.log"])
        return storm_once(lab, "reference", procs, n, args)
    finally:
        stop(procs)


def run_size(n: int, args: argparse.Namespace, tmp: Path) -> dict[str, list[dict]]:
    """--rounds paired storms of each chain, alternating which goes first (the machine's
    other load drifts); the ratio is the median of the per-round ratios."""
    tmp.mkdir()
    tmp.chmod(0o755)
    files = (tmp / "vmlinuz", tmp / "initrd.img")
    files[0].write_bytes(os.urandom(args.kernel_kb << 10))
    files[1].write_bytes(os.urandom(args.initrd_kb << 10))
    sot = tmp / "sot"
    write_sot(sot, n, args.peers, *files)
    check = subprocess.run([str(BIN / "vaq-peer"), "validate", str(sot)], capture_output=True,
                           text=True, timeout=300)
    if check.returncode != 0:
        raise RuntimeError(f"the generated SoT is not valid:\n{check.stdout}{check.stderr}")
    out: dict[str, list[dict]] = {"ours": [], "reference": []}
    www: Path | None = None
    with NetnsRig("vqs") as rig, neighbour_room(n):
        lab = Lab(rig, args.peers)
        lab.add_machine_addresses(n)
        for r in range(args.rounds):
            for chain in (("ours", "reference") if r % 2 == 0 else ("reference", "ours")):
                where = tmp / f"{chain}-{r + 1}"
                if chain == "ours":
                    out["ours"].append(ours_round(lab, n, args, where, sot, files, r == 0))
                else:
                    www = www or reference_www(tmp, tmp / "scripts", *files)
                    out["reference"].append(reference_round(lab, n, args, where, www))
    report_size(n, out)
    return out


def report_size(n: int, out: dict[str, list[dict]]) -> None:
    pairs = [(o, r) for o, r in zip(out["ours"], out["reference"], strict=True)]
    failures = sum(n - o["phoned_home"] for o, _ in pairs)
    ratios = [o["all_done_s"] / r["all_done_s"] for o, r in pairs
              if o["all_done_s"] and r["all_done_s"]]
    if len(ratios) != len(pairs):
        print(f"N={n}: a storm ended with no machine phoned home: no ratio (goal MISSED)")
        return
    ratio = statistics.median(ratios)
    done = {k: statistics.median(x["all_done_s"] for x in v) for k, v in out.items()}
    cpu_ratios = [o["server_cpu_s"] / r["server_cpu_s"] for o, r in pairs
                  if r["server_cpu_s"]]  # a tiny storm can cost the reference under 0.05 s
    cpu_text = (f"{statistics.median(cpu_ratios):.2f}x" if cpu_ratios
                else "n/a (the reference's CPU time rounded to 0)")
    print(f"N={n}: all phoned home in (median of {len(pairs)} round(s)) ours "
          f"{done['ours']:.2f} s, reference {done['reference']:.2f} s; ours/reference "
          f"{ratio:.2f}x (per round: {', '.join(f'{x:.2f}' for x in ratios)}); machines that "
          f"did not phone home through ours: {failures} (goal <= 1.0x with none: "
          f"{'met' if ratio <= 1.0 and not failures else 'MISSED'}); server CPU ours/reference "
          f"{cpu_text} (what the machine's other load changes least)", flush=True)


# -- the client process (runs inside the client namespace) ------------------------------------


def client_main(argv: list[str]) -> None:
    from tools.bench import storm_client as sc

    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("storm", "scripts", "ready"))
    ap.add_argument("url", nargs="?")
    ap.add_argument("--hosts", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--chain", help="where the scripts mode saves the chain script")
    ap.add_argument("--ramp", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--slice", default="0/1", help="i/k: boot machines i, i+k, i+2k ...")
    ap.add_argument("--start-at", type=float, default=0.0, help="wall-clock power-on time")
    a = ap.parse_args(argv)
    hosts = [host(i) for i in range(a.hosts)]
    if a.mode == "ready":
        asyncio.run(sc.wait_ready(a.url, 180))
        print(json.dumps({"ready": a.url}))
    elif a.mode == "scripts":
        files = asyncio.run(sc.fetch_scripts(f"http://{PEER_IPS[0]}:{HTTP_PORT}",
                                             [(name, mac) for name, mac, _, _ in hosts], a.out,
                                             a.chain))
        for path, body in files.items():
            Path(path).write_bytes(body)
        print(json.dumps({"scripts": len(hosts)}))
    else:
        rng = random.Random(1)  # the same power-on schedule whatever the slicing
        delays = [rng.uniform(0, a.ramp) for _ in hosts]
        i, k = (int(x) for x in a.slice.split("/"))
        mine = range(i, len(hosts), k)
        machines = [sc.Machine(hosts[j][1], hosts[j][3]) for j in mine]
        print(json.dumps(asyncio.run(sc.storm(machines, [delays[j] for j in mine], "eth0",
                                              a.start_at or time.time(), a.timeout))))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", default="100,500,1000", help="machine counts, comma-separated")
    ap.add_argument("--peers", type=int, default=1, choices=(1, 3))
    ap.add_argument("--kernel-kb", type=int, default=512)
    ap.add_argument("--initrd-kb", type=int, default=2048)
    ap.add_argument("--ramp", type=float, default=1.0,
                    help="machines power on spread over this many seconds")
    ap.add_argument("--peer-data", choices=("disk", "tmpfs"), default="disk",
                    help="where our peers keep their journals (disk: fsyncs cost as in "
                    "production; the reference records no phone-home at all)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="paired storms per size, alternating which chain goes first")
    ap.add_argument("--timeout", type=float, default=300, help="per storm, seconds")
    ap.add_argument("--client-procs", type=int, default=2,
                    help="client processes sharing the machines (the client must not be "
                    "the limit)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    ap.add_argument("--py-spy", type=int, default=0, metavar="SECONDS",
                    help="sample our (first) peer with py-spy for SECONDS of each storm")
    args = ap.parse_args()
    missing = [t for t in ("dnsmasq", "nginx", "ip") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing or not KPXE.exists():
        print(f"needs root, dnsmasq, nginx, iproute2 and {KPXE} (missing: {missing})",
              file=sys.stderr)
        return 2
    load = os.getloadavg()
    print(f"boot storm: {args.peers} peer(s); kernel {args.kernel_kb} KiB, initrd "
          f"{args.initrd_kb} KiB; power-on ramp {args.ramp} s; {os.cpu_count()} cores; load "
          f"average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\nclient: "
          f"{shlex.join(client_argv('storm', '--hosts', 'N', '--slice', 'i/K'))} x "
          f"{args.client_procs} processes (in the client namespace)",
          flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="vq-bench-storm-", dir="/dev/shm") as t, \
            tempfile.TemporaryDirectory(prefix="vq-bench-storm-data-", dir="/var/tmp") as d:
        Path(t).chmod(0o755)  # dnsmasq serves TFTP and reads its hosts as nobody
        args.data_root = Path(d) if args.peer_data == "disk" else None
        print(f"peer data dirs (Raft and phone-home journals): "
              f"{args.data_root or 'tmpfs'}", flush=True)
        for n in (int(x) for x in args.hosts.split(",")):
            results[n] = run_size(n, args, Path(t) / f"n{n}")
    end = os.getloadavg()
    print(f"load average after: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
