"""HTTP boot benchmark: a real `vaq-peer serve` process against nginx, same bytes, same wrk load.

Why: in a boot storm every host pulls a small per-host iPXE script and then its kernel and
initrds (tens to hundreds of MB) from a peer. The scripts must not be the queue, and big files
must go at close to what the machine can push (sendfile, like nginx).

The SoT is `tools/gen_sot.py OUT --hosts 1000 --sites 1 --seed 1` (the same 1,000 hosts
as the DHCP and TFTP benchmarks' 1,000 reservations), with one initrd (Flatcar's, which most
hosts boot) pointed at a 64 MiB local file so that the peer can serve it; it must pass
`vaq-peer validate`. Each peer is started as an operator starts it (`vaq-peer serve
--config`, loopback, a Raft group of one, DHCP and TFTP off, JSON logs to a file):

(a) per-host scripts: wrk cycles (Lua) over the 1,000 hosts' `GET /ipxe?mac=&uuid=&arch=
    &platform=`, the request iPXE makes after `boot.ipxe`; each answer is that host's rendered
    stage script. Every host is fetched once before anything is timed (the first request
    renders and caches it). nginx serves the very same bytes (fetched from the peer) as 1,000
    static files, mapped from the same URL by `try_files /scripts/$arg_mac`.
(b) the 64 MiB initrd at `/artifacts/<sha256>/<name>`, through the peer's artifact route, and
    nginx (`sendfile on`) serving the same inode.

The peer logs one `boot.script` line per script request (production logging, appliance.log):
that is part of the real cost, so the peer is measured with `log_level: info` (production)
and, for comparison, `log_level: warning` (no line). nginx runs one worker (the peer is one
event loop), without access log (the issue's reference), and a second nginx serves the
scripts with its default access log (a file, the combined format, unbuffered: nginx as
Debian ships it, which logs every request as the peer does); the other core drives wrk.

    .venv/bin/python tools/bench/http_boot.py [--duration 10] [--rounds 3] [--py-spy 10]

Goals (issue 15): per-host scripts with production logging >= 0.3x nginx's static file rate
in the same run; 64 MiB file >= 0.8x nginx. Every server's command line is printed.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path; keep it off, so that no file
# here can shadow a standard library module that aiohttp or urllib import.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent  # vaq-peer and py-spy of this virtualenv

from tools.bench.wrkload import cpu_seconds, run_wrk  # noqa: E402

HOSTS = 1000
INITRD_MB = 64
LEVELS = ("info", "warning")  # the peer's log_level variants; info is production
SCRIPT_LINE = b'"boot.script"'


# -- the SoT and what the hosts ask for ---------------------------------------------------


def make_sot(tmp: Path) -> tuple[Path, Path, str, str]:
    """Generate the 1,000-host SoT; point Flatcar's initrd at a local 64 MiB file.

    Returns (SoT dir, the file, its sha256, its URL path on a peer)."""
    sot = tmp / "sot"
    subprocess.run([sys.executable, str(ROOT / "tools/gen_sot.py"), str(sot), "--hosts",
                    str(HOSTS), "--sites", "1", "--seed", "1"], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)
    data = os.urandom(INITRD_MB << 20)
    sha = hashlib.sha256(data).hexdigest()
    upstream = tmp / "upstream" / "flatcar_production_pxe_image.cpio.gz"
    upstream.parent.mkdir()
    upstream.write_bytes(data)
    os_file = sot / "os" / "flatcar.yml"
    text, n = re.subn(r"(initrd:\n\s+- url: )\S+(\n\s+sha256: )[0-9a-f]{64}",
                      rf"\g<1>file://{upstream}\g<2>{sha}", os_file.read_text())
    if n != 1:
        raise RuntimeError(f"{os_file}: no single initrd entry to point at the test file")
    os_file.write_text(text)
    check = subprocess.run([str(BIN / "vaq-peer"), "validate", str(sot)], capture_output=True,
                           text=True, timeout=120)
    if check.returncode != 0:
        raise RuntimeError(f"vaq-peer validate {sot} failed:\n{check.stdout}{check.stderr}")
    print(check.stdout.strip())
    return sot, upstream, sha, f"/artifacts/{sha}/{upstream.name}"


@dataclass
class Site:
    id: str
    peer: str
    queries: list[tuple[str, str]]  # (boot MAC, the URL iPXE requests), one per host


def site_and_queries(sot: Path) -> Site:
    """The hosts' boot MACs and SMBIOS UUIDs, as the product reads them from the SoT."""
    from appliance.sot.revision import compile_tree
    from appliance.sot.tree import DirectoryTree

    revision = compile_tree(DirectoryTree(sot))
    (site,) = revision.sot.sites.values()
    queries = []
    for entry in revision.sot.hosts.values():
        iface = entry.host.boot_interface()
        if iface is None:
            raise RuntimeError(f"{sot}: a host has no boot interface")
        uuid = f"&uuid={entry.host.uuid}" if entry.host.uuid is not None else ""
        queries.append((iface.mac, f"/ipxe?mac={iface.mac}{uuid}&arch=x86_64&platform=efi"))
    if len(queries) != HOSTS:
        raise RuntimeError(f"{sot}: {len(queries)} hosts, expected {HOSTS}")
    return Site(site.id, site.peers[0].name, queries)


def write_lua(tmp: Path, queries: list[tuple[str, str]]) -> Path:
    """wrk request generator: every connection cycles over all hosts from a random start."""
    lua = tmp / "hosts.lua"
    paths = ",\n".join(f'  "{url}"' for _, url in queries)
    lua.write_text(f"""
local paths = {{
{paths}
}}
local n = math.random(#paths) - 1
request = function()
  n = n % #paths + 1
  return wrk.format("GET", paths[n])
end
""")
    return lua


# -- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peer_config(tmp: Path, site: Site, level: str, sha: str, upstream: Path) -> tuple[Path, int]:
    """A loopback peer config (group of one, no DHCP/TFTP); the initrd already in its cache,
    hard-linked, so the peer and nginx serve one inode from the same page cache."""
    secret, raft_secret = tmp / "token.secret", tmp / "raft.secret"
    if not secret.exists():
        secret.write_text("YmVuY2gtcGhvbmUtaG9tZS10b2tlbi1zZWNyZXQ=\n")
        raft_secret.write_text("YmVuY2gtcmFmdC1ncm91cC1wYXNzd29yZA==\n")
        secret.chmod(0o600)
        raft_secret.chmod(0o600)
    data = tmp / f"peer-{level}"
    (data / "artifacts" / "sha256").mkdir(parents=True)
    os.link(upstream, data / "artifacts" / "sha256" / sha)
    port = free_port()
    config = tmp / f"peer-{level}.yaml"
    config.write_text(f"""
site: {site.id}
peer: {site.peer}
data_dir: {data}
interface: lo
address: 127.0.0.1
sot: {{path: {tmp / 'sot'}}}
token_secret_file: {secret}
http: {{listen: 127.0.0.1, port: {port}}}
tftp: {{enabled: false}}
dhcp: {{enabled: false}}
prefetch_artifacts: false
raft:
  address: "127.0.0.1:{free_port()}"
  password_file: {raft_secret}
log_format: json
log_level: {level}
""")
    return config, port


NGINX_LOGGING = "nginx, access log"


def nginx_conf(tmp: Path, root: Path, port: int, workers: int,
               access_log: Path | None = None) -> Path:
    """`access_log`: nginx's default logging as Debian ships it (`access_log` to a file, the
    combined format, unbuffered), the production counterpart of the peer's boot.script line;
    None: no access log (the issue's reference)."""
    conf = tmp / ("nginx.conf" if access_log is None else "nginx-logging.conf")
    temps = "\n".join(f"    {k}_temp_path {tmp}/{k};" for k in
                      ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""
daemon off;
user root;
worker_processes {workers};
pid {tmp}/{conf.stem}.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log {access_log or "off"};
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
{temps}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /ipxe {{
            default_type "text/plain; charset=utf-8";
            try_files /scripts/$arg_mac =404;
        }}
    }}
}}
""")
    return conf


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()  # loopback only
            return
        except urllib.error.HTTPError:
            return  # answering, if not with 200
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} does not answer after {timeout} s")


@contextlib.contextmanager
def running(cmd: list[str], ready_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    print(f"command: {shlex.join(cmd)}", flush=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_http(ready_url, proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:  # loopback only
        return resp.read()


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Result:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    cpu: float  # server cores used
    sys_share: float  # of which in the kernel
    waited: float  # seconds per second ready to run but without a core
    us_per_req: float  # server CPU per request
    errors: int
    log_lines: int  # boot.script lines the server wrote meanwhile (-1: not counted)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base: str
    log: Path | None = None  # a peer's log, where its boot.script lines are counted
    _offset: int = 0

    def new_script_lines(self) -> int:
        if self.log is None:
            return -1
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        return data.count(SCRIPT_LINE)


def measure(label: str, server: Server, path: str, args: argparse.Namespace,
            lua: Path | None, conns: int) -> Result:
    server.new_script_lines()
    user0, sys0, wait0 = cpu_seconds(server.proc.pid)
    started = time.monotonic()
    rps, requests, p50, p99, errors = run_wrk(server.base + path, args.duration, args.threads,
                                              conns, lua)
    user1, sys1, wait1 = cpu_seconds(server.proc.pid)
    wall = time.monotonic() - started  # wrk's duration and its start and end
    used = user1 - user0 + sys1 - sys0
    cpu = used / wall
    sys_share = (sys1 - sys0) / used if used else 0.0
    result = Result(rps, requests, p50, p99, cpu, sys_share, (wait1 - wait0) / wall,
                    used / requests * 1e6 if requests else float("nan"), errors,
                    server.new_script_lines())
    lines = f"  log lines {result.log_lines}" if lua is not None and server.log else ""
    print(f"  {label:<30} {rps:>9.1f} req/s  p50 {p50:>7.2f} ms  p99 {p99:>7.2f} ms  "
          f"server {cpu:.2f} cores {result.us_per_req:>6.0f} µs/req ({100 * sys_share:.0f}% "
          f"kernel) waited {result.waited:.2f}  errors {errors}{lines}",
          flush=True)
    return result


# -- the run ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds (the machine may be busy: medians are fairer)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=50, help="for the scripts")
    parser.add_argument("--file-connections", type=int, default=8, help="for the 64 MiB file")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--no-file", action="store_true", help="skip the 64 MiB file case")
    parser.add_argument("--py-spy", type=int, default=0, metavar="SECONDS",
                        help="then sample the log_level=info peer with py-spy under the "
                        "scripts load, and print where its CPU time goes")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so that the servers are stopped and the files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install wrk nginx-light)")
    with tempfile.TemporaryDirectory(prefix="vaq-bench-http-") as t:
        run(Path(t), args)


def prepare_nginx_root(tmp: Path, servers: list[Server], queries: list[tuple[str, str]],
                       art_path: str, upstream: Path) -> tuple[Path, int]:
    """Every host's script, fetched once from each peer (rendering and caching it there),
    written as nginx's files; the peers must agree byte for byte. Returns (root, mean size)."""
    root = tmp / "www"
    (root / "scripts").mkdir(parents=True)
    art = root / art_path.lstrip("/")
    art.parent.mkdir(parents=True)
    os.link(upstream, art)
    started = time.monotonic()
    total = 0
    for mac, url in queries:
        answers = {fetch(s.base + url) for s in servers}
        if len(answers) != 1:
            raise RuntimeError(f"the peers answer {url} differently")
        (body,) = answers
        if not body.startswith(b"#!ipxe"):
            raise RuntimeError(f"{url}: not an iPXE script: {body[:80]!r}")
        (root / "scripts" / mac).write_bytes(body)
        total += len(body)
    print(f"warm-up: {HOSTS} scripts fetched from {len(servers)} peer(s) in "
          f"{time.monotonic() - started:.1f} s (first requests render and cache)")
    return root, total // HOSTS


def run(tmp: Path, args: argparse.Namespace) -> None:
    load = os.getloadavg()
    sot, upstream, sha, art_path = make_sot(tmp)
    site = site_and_queries(sot)
    lua = write_lua(tmp, site.queries)
    servers: list[Server] = []
    with contextlib.ExitStack() as stack:
        for level in LEVELS:
            config, port = peer_config(tmp, site, level, sha, upstream)
            log = tmp / f"peer-{level}.log"
            base = f"http://127.0.0.1:{port}"
            proc = stack.enter_context(running(
                [str(BIN / "vaq-peer"), "serve", "--config", str(config)], base + "/healthz",
                log))
            servers.append(Server(f"vaq-peer, log {level}", proc, base, log))
        root, size = prepare_nginx_root(tmp, servers, site.queries, art_path, upstream)
        for name, access_log in (("nginx", None), (NGINX_LOGGING, tmp / "nginx-access.log")):
            port = free_port()
            conf = nginx_conf(tmp, root, port, args.nginx_workers, access_log)
            print(f"nginx config {conf}: {' '.join(conf.read_text().split())}")
            base = f"http://127.0.0.1:{port}"
            proc = stack.enter_context(running(["nginx", "-c", str(conf), "-p", str(tmp)],
                                               base + "/", tmp / f"{conf.stem}.log"))
            servers.insert(0 if access_log is None else 1, Server(name, proc, base))
        for server in servers:  # the same bytes before anything is timed
            for mac, url in site.queries:
                if fetch(server.base + url) != (root / "scripts" / mac).read_bytes():
                    raise RuntimeError(f"{server.name} answers {url} with other bytes")
            if not args.no_file and hashlib.sha256(fetch(server.base + art_path)).hexdigest(
                    ) != sha:
                raise RuntimeError(f"{server.name} serves other bytes at {art_path}")
        print(f"{HOSTS} hosts of site {site.id}, scripts of {size} bytes on average; 64 MiB "
              f"file {art_path}; wrk -t{args.threads} -d{args.duration}s; nginx "
              f"{args.nginx_workers} worker(s); {os.cpu_count()} cores; {args.rounds} "
              f"interleaved rounds; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        cases = [("scripts", "/", lua, args.connections, servers)]
        if not args.no_file:
            cases.append(("64 MiB file", art_path, None, args.file_connections,
                          [servers[0], servers[2]]))
        for _, path, script, conns, group in cases:  # connections, page cache, wrk's Lua
            for server in group:
                run_wrk(server.base + path, 2, args.threads, conns, script)
        results: dict[tuple[str, str], list[Result]] = {}
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}:")
            for case, path, script, conns, group in cases:
                for server in group:
                    results.setdefault((case, server.name), []).append(measure(
                        f"{case}, {server.name}", server, path, args, script, conns))
        report(results, [s.name for s in servers], [c[0] for c in cases])
        if args.py_spy:
            profile(tmp, servers[2], lua, args)
    end = os.getloadavg()
    print(f"load average before {load[0]:.2f}, after {end[0]:.2f} {end[1]:.2f} {end[2]:.2f} "
          "(other work shares the cores: compare µs of server CPU per request, which load "
          "hardly changes)")


def report(results: dict[tuple[str, str], list[Result]], servers: list[str],
           cases: list[str]) -> None:
    print("\nmedians over rounds; ours/nginx = median of the ratios within each round "
          "(paired, as load drifts);\nCPU = server cores used; µs/req = server CPU per request, "
          "kernel = its system-time share;\nwaited = seconds per second the server was ready "
          "to run but other work held the cores;\nper core = 1e6 / µs/req, the rate one whole "
          "core would serve (what a shared machine's load hardly changes)")
    print(f"{'case':<12} {'server':<20} {'req/s':>9} {'MiB/s':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'ours/nginx':>10} {'CPU':>5} {'waited':>6} {'µs/req':>7} {'kernel':>6} "
          f"{'per core':>8} {'log lines/req':>13}")
    for case in cases:
        for name in servers:
            runs = results.get((case, name))
            if not runs:
                continue
            rps = statistics.median(r.rps for r in runs)
            mib = rps * (INITRD_MB if case.startswith("64") else 0)
            ratio = statistics.median(r.rps / n.rps for r, n in zip(
                runs, results[(case, "nginx")], strict=True))
            lines = (f"{sum(r.log_lines for r in runs) / sum(r.requests for r in runs):.2f}"
                     if case == "scripts" and runs[0].log_lines >= 0 else "-")
            us = statistics.median(r.us_per_req for r in runs)
            print(f"{case:<12} {name:<20} {rps:>9.1f} {mib:>6.0f} "
                  f"{statistics.median(r.p50_ms for r in runs):>7.2f} "
                  f"{statistics.median(r.p99_ms for r in runs):>7.2f} {ratio:>9.2f}x "
                  f"{statistics.median(r.cpu for r in runs):>5.2f} "
                  f"{statistics.median(r.waited for r in runs):>6.2f} {us:>7.0f} "
                  f"{100 * statistics.median(r.sys_share for r in runs):>5.0f}% "
                  f"{1e6 / us:>8.0f} {lines:>13}")
    runs = results[("scripts", "vaq-peer, log info")]
    ours = statistics.median(r.rps for r in runs)
    per_core = 1e6 / statistics.median(r.us_per_req for r in runs)
    cores = statistics.median(r.cpu for r in runs)
    quiet = statistics.median(r.us_per_req for r in results[("scripts", "vaq-peer, log warning")])
    print(f"\none boot.script log line: {1e6 / per_core - quiet:.0f} µs of server CPU "
          "(µs/req with log_level info minus warning)")
    ratio = statistics.median(r.rps / n.rps for r, n in zip(
        runs, results[("scripts", "nginx")], strict=True))
    print(f"goal: per-host scripts with production logging >= 0.3x nginx: {ratio:.2f}x "
          f"{'met' if ratio >= 0.3 else 'MISSED'} ({ours:.0f} req/s; the peer got {cores:.2f} "
          f"cores; {per_core:.0f} req/s per core of its CPU)")
    ratio = statistics.median(r.rps / n.rps for r, n in zip(
        runs, results[("scripts", NGINX_LOGGING)], strict=True))
    print(f"the same against nginx with its default access log (both log each request): "
          f"{ratio:.2f}x")
    if ("64 MiB file", "nginx") in results:
        ratio = statistics.median(r.rps / n.rps for r, n in zip(
            results[("64 MiB file", "vaq-peer, log info")], results[("64 MiB file", "nginx")],
            strict=True))
        print(f"goal: 64 MiB file >= 0.8x nginx: {ratio:.2f}x "
              f"{'met' if ratio >= 0.8 else 'MISSED'}")


def profile(tmp: Path, server: Server, lua: Path, args: argparse.Namespace) -> None:
    """py-spy samples the peer while wrk loads the scripts route."""
    from tools.bench.spy_profile import record

    report = record(server.proc.pid, args.py_spy, lambda: run_wrk(
        server.base + "/", args.py_spy, args.threads, args.connections, lua), tmp / "spy.txt")
    print(f"\npy-spy, {server.name}, under the scripts load:\n{report}")


if __name__ == "__main__":
    main()
