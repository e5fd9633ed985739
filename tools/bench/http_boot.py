"""HTTP boot benchmark: our aiohttp serving against nginx, same files, same wrk load, loopback.

Why: in a boot storm every host pulls its kernel and initrds (tens to hundreds of MB) and a
small per-host iPXE script from a peer. Big files must go at close to what the machine can
push (sendfile, like nginx), and the small dynamic answers must not be the queue.

(a) a 64 MiB initrd: nginx (`sendfile on`) serving it from a temp root, against our server
    process with `ArtifactCache.handler` serving it from its cache directory.
(b) per-host scripts: nginx serving 1,000 small static files, against our server process
    building a ~600-byte iPXE script per request from a dict of 1,000 hosts keyed by a URL
    path segment (the integrator's real route is measured elsewhere); wrk cycles over the
    1,000 paths with a Lua script.

Our server runs in its own process, as in production, with one event loop (so nginx gets one
worker by default: the same CPU for both, the other core drives wrk). Our server is measured
with no access log, with aiohttp's access log to a file, and with our structured (JSON,
appliance.log) line per request to a file, because a log line per request costs a lot.

    .venv/bin/python tools/bench/http_boot.py [--duration 10] [--connections 8] [--nginx-workers 1]

Goals: 64 MiB file >= 0.8x nginx; per-host scripts above 5,000 requests/s.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# standard library's `http` package (which aiohttp and urllib import).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOSTS = 1000
INITRD_MB = 64
INITRD_NAME = "initrd.img"
# Our server's variants. none: no log line; access: aiohttp's access log (stdlib logging,
# through appliance.log's formatter); structlog: our JSON line per request through
# appliance.log's production pipeline (structlog -> stdlib -> ProcessorFormatter); direct:
# the same JSON line with structlog writing straight to the file (no stdlib logging);
# uvloop: no log, uvloop's event loop (only when it happens to be installed).
VARIANTS = ("none", "access", "structlog", "direct")
# One log line per 64 MiB does not matter: the file case runs with these only.
FILE_VARIANTS = ("nginx", "none", "structlog", "uvloop")
SCRIPT = """#!ipxe
# {name} ({mac}), revision {revision}, stage 1 of 2: install
set base-url http://198.18.0.1:8080
kernel ${{base-url}}/artifacts/{kernel_sha}/vmlinuz initrd=initrd.img \\
  ip={ip}::198.18.0.1:255.255.240.0:{name}:eth0:none console=ttyS0,115200n8 \\
  ignition.config.url=${{base-url}}/boot/{name}/1/config ignition.platform.id=metal
initrd ${{base-url}}/artifacts/{initrd_sha}/initrd.img
boot || goto failed
:failed
echo Boot failed for {name}; retrying in 10 s
sleep 10
chain ${{base-url}}/boot/{name}/1/script.ipxe
"""


def host_records() -> dict[str, dict[str, str]]:
    """The per-host data the scripts are built from (what a boot table holds per host)."""
    kernel = hashlib.sha256(b"kernel").hexdigest()
    initrd = hashlib.sha256(b"initrd").hexdigest()
    return {
        f"node{i}": {
            "name": f"node{i}", "mac": f"52:54:00:12:{i >> 8:02x}:{i & 0xFF:02x}",
            "ip": f"198.18.{4 + (i >> 8)}.{i & 0xFF}", "revision": "9f3c2e1d" * 5,
            "kernel_sha": kernel, "initrd_sha": initrd,
        }
        for i in range(HOSTS)
    }


def script_path(name: str) -> str:
    return f"/boot/{name}/1/script.ipxe"


# -- our server (child process) -------------------------------------------------------------


def serve_ours(port: int, cache_dir: Path, initrd_sha: str, log: str) -> None:
    """Entry point of the child process: one aiohttp app with both routes."""
    import logging

    from aiohttp import web

    from appliance.log import configure_logging
    from appliance.netboot.artifacts import ROUTE, ArtifactCache
    from appliance.sot.models import Artifact

    configure_logging("json")  # production's pipeline; stdout is a file in the temp dir
    if log == "direct":
        import structlog

        structlog.configure(
            processors=[structlog.contextvars.merge_contextvars,
                        structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso", utc=True),
                        structlog.processors.JSONRenderer()],
            logger_factory=structlog.WriteLoggerFactory(sys.stdout),
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            cache_logger_on_first_use=True)
    if log == "uvloop":
        import uvloop

        uvloop.install()
    access_log = None
    if log == "access":
        access_log = logging.getLogger("aiohttp.access")
        access_log.setLevel(logging.INFO)
    per_request = log in ("structlog", "direct")
    cache = ArtifactCache(cache_dir, log_requests=per_request)
    cache.register([Artifact(url="file:///nonexistent", sha256=initrd_sha, name=INITRD_NAME)])
    hosts = host_records()
    import structlog

    blog = structlog.get_logger("vaquero.netboot.boot")

    async def script(request: web.Request) -> web.Response:
        record = hosts.get(request.match_info["host"])
        if record is None:
            raise web.HTTPNotFound()
        text = SCRIPT.format(**record)
        if per_request:
            blog.info("boot.script", client=request.remote, host=record["name"], stage=1,
                      bytes=len(text))
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get(ROUTE, cache.handler)
    app.router.add_get("/boot/{host}/{stage}/script.ipxe", script)
    profile = os.environ.get("VAQ_BENCH_PROFILE")
    if not profile:
        web.run_app(app, host="127.0.0.1", port=port, access_log=access_log, print=None)
        return
    import cProfile

    # CPU time, not wall time: on a busy machine wall time mostly measures waiting for a core.
    with cProfile.Profile(time.process_time) as prof:  # SIGTERM -> GracefulExit -> returns
        web.run_app(app, host="127.0.0.1", port=port, access_log=access_log, print=None)
    prof.dump_stats(profile)


def log_cost(pipeline: str, path: Path, lines: int = 20000) -> float:
    """CPU µs for one per-request JSON line (child process: logging setup is global)."""
    import logging

    import structlog

    from appliance.log import configure_logging

    out = open(path, "w")  # noqa: SIM115 (the process ends right after)
    sys.stdout = out
    configure_logging("json")
    if pipeline == "direct":
        structlog.configure(
            processors=[structlog.contextvars.merge_contextvars,
                        structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso", utc=True),
                        structlog.processors.JSONRenderer()],
            logger_factory=structlog.WriteLoggerFactory(out),
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            cache_logger_on_first_use=True)
    blog = structlog.get_logger("vaquero.netboot.boot")
    structlog.contextvars.bind_contextvars(peer="peer-1", site="dc1")
    started = time.process_time()
    for i in range(lines):
        blog.info("boot.script", client="198.18.4.7", host=f"node{i % 1000}", stage=1,
                  bytes=661)
    return (time.process_time() - started) / lines * 1e6


# -- the harness ----------------------------------------------------------------------------


@dataclass
class Result:
    rps: float
    mib_s: float
    latency: str
    errors: int


def uvloop_available() -> bool:
    """uvloop is not a project dependency: measured only if it happens to be installed."""
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def running(cmd: list[str], port: int, log: Path,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its direct children (nginx workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def run_wrk(url: str, size: int, args: argparse.Namespace, lua: Path | None,
            threads: int, connections: int) -> Result:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{args.duration}s", "--timeout", "10s"]
    if lua is not None:
        cmd += ["-s", str(lua)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True,
                         timeout=args.duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = re.search(r"Latency\s+([\d.]+\w+)", out)
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        errors += sum(int(n) for n in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    return Result(rps, rps * size / 2**20, lat.group(1) if lat else "?", errors)


def measure(label: str, proc: subprocess.Popen[bytes], url: str, size: int,
            args: argparse.Namespace, lua: Path | None, conns: int,
            warm: bool) -> tuple[Result, float]:
    if warm:
        run_wrk(url, size, argparse.Namespace(duration=1), lua, 1, 2)
    before = cpu_seconds(proc.pid)
    result = run_wrk(url, size, args, lua, args.threads, conns)
    cpu = (cpu_seconds(proc.pid) - before) / args.duration
    print(f"  {label:<34} {result.rps:>9.1f} req/s {result.mib_s:>7.1f} MiB/s "
          f"lat {result.latency:>8}  server CPU {cpu:.2f} cores  errors {result.errors}",
          flush=True)
    return result, cpu


def nginx_conf(tmp: Path, root: Path, port: int, workers: int) -> Path:
    conf = tmp / "nginx.conf"
    temps = "\n".join(f"    {k}_temp_path {tmp}/{k};" for k in
                      ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""
daemon off;
user root;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    types {{ text/plain ipxe; application/octet-stream img; }}
    default_type application/octet-stream;
{temps}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
""")
    return conf


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        return resp.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=8, help="for the 64 MiB file")
    parser.add_argument("--script-connections", type=int, default=50, help="for the scripts")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile our log=none server and print where its time goes")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds (the machine may be busy: medians are fairer)")
    parser.add_argument("--log-cost", nargs=2, metavar=("PIPELINE", "FILE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--serve-ours", nargs=4, metavar=("PORT", "DIR", "SHA", "LOG"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.log_cost:
        us = log_cost(args.log_cost[0], Path(args.log_cost[1]))
        print(f"{us:.1f}", file=sys.stderr)
        return
    if args.serve_ours:
        port, directory, sha, log = args.serve_ours
        serve_ours(int(port), Path(directory), sha, log)
        return
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install wrk nginx-light)")
    print("uvloop: installed, measured as a variant" if uvloop_available() else
          "uvloop: not installed, asyncio's default loop only")

    with tempfile.TemporaryDirectory(prefix="vaq-bench-http-") as t:
        run(Path(t), args)


def prepare_root(tmp: Path) -> tuple[Path, Path, str, int, Path]:
    """The same bytes for both servers: nginx's web root and our cache directory."""
    root = tmp / "www"
    data = os.urandom(INITRD_MB << 20)
    sha = hashlib.sha256(data).hexdigest()
    cache_dir = tmp / "cache"
    (cache_dir / "sha256").mkdir(parents=True)
    (cache_dir / "sha256" / sha).write_bytes(data)
    art = root / "artifacts" / sha / INITRD_NAME
    art.parent.mkdir(parents=True)
    os.link(cache_dir / "sha256" / sha, art)  # one inode: both serve from the same page cache
    hosts = host_records()
    for name, record in hosts.items():
        p = root / script_path(name).lstrip("/")
        p.parent.mkdir(parents=True)
        p.write_text(SCRIPT.format(**record))
    script_size = sum(len(SCRIPT.format(**r)) for r in hosts.values()) // len(hosts)
    lua = tmp / "paths.lua"
    lua.write_text(f"""
local paths = {{}}
for i = 0, {HOSTS - 1} do paths[i + 1] = "/boot/node" .. i .. "/1/script.ipxe" end
local n = math.random({HOSTS}) - 1
request = function()
  n = n % {HOSTS} + 1
  return wrk.format("GET", paths[n])
end
""")
    return root, cache_dir, sha, script_size, lua


def run(tmp: Path, args: argparse.Namespace) -> None:
    root, cache_dir, sha, script_size, lua = prepare_root(tmp)
    art_path = f"/artifacts/{sha}/{INITRD_NAME}"
    print(f"{INITRD_MB} MiB file; {HOSTS} scripts of ~{script_size} bytes; wrk -t{args.threads} "
          f"-d{args.duration}s; nginx {args.nginx_workers} worker(s); {os.cpu_count()} cores; "
          f"{args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f}")
    servers: list[tuple[str, str, subprocess.Popen[bytes], str]] = []  # name, variant, ...
    with contextlib.ExitStack() as stack:
        port = free_port()
        conf = nginx_conf(tmp, root, port, args.nginx_workers)
        proc = stack.enter_context(running(["nginx", "-c", str(conf), "-p", str(tmp)], port,
                                           tmp / "nginx.log"))
        servers.append(("nginx", "nginx", proc, f"http://127.0.0.1:{port}"))
        variants = list(VARIANTS)
        if uvloop_available():
            variants.append("uvloop")
        for log in variants:
            port = free_port()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-ours", str(port),
                   str(cache_dir), sha, log]
            env = dict(os.environ)
            if args.profile and log == "none":
                env["VAQ_BENCH_PROFILE"] = str(tmp / "ours.prof")
            proc = stack.enter_context(running(cmd, port, tmp / f"ours-{log}.log", env))
            servers.append((f"ours, log={log}", log, proc, f"http://127.0.0.1:{port}"))
        sample = script_path("node7")
        for _, _, _, base in servers:  # all answer the same bytes before anything is timed
            assert hashlib.sha256(fetch(base + art_path)).hexdigest() == sha
            assert fetch(base + sample) == (root / sample.lstrip("/")).read_bytes()
        cases = (("64 MiB file", art_path, INITRD_MB << 20, None, args.connections),
                 ("scripts", "/", script_size, lua, args.script_connections))
        results: dict[tuple[str, str], list[tuple[Result, float]]] = {}
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}:")
            for case, path, size, script, conns in cases:
                for name, variant, proc, base in servers:
                    if case.startswith("64") and variant not in FILE_VARIANTS:
                        continue
                    results.setdefault((case, name), []).append(measure(
                        f"{case}, {name}", proc, base + path, size, args, script, conns,
                        warm=rnd == 0))
    for log in variants:
        lines = (tmp / f"ours-{log}.log").read_bytes().count(b"\n")
        print(f"ours, log={log}: {lines} log lines written")
    report(results, [name for name, *_ in servers], [c[0] for c in cases])
    for pipeline, what in (("structlog", "appliance.log pipeline (structlog -> stdlib)"),
                           ("direct", "structlog straight to the file")):
        cost = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--log-cost",
                               pipeline, str(tmp / f"cost-{pipeline}.log")],
                              capture_output=True, text=True, check=True, timeout=120)
        print(f"one JSON log line, {what}: {float(cost.stderr.split()[-1]):.0f} µs CPU")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other work on this machine "
          "shares the cores: compare CPU µs per request, which load hardly changes)")
    if args.profile:
        import pstats

        print("\nours, log=none, whole run (both cases), top functions by own time:")
        pstats.Stats(str(tmp / "ours.prof")).sort_stats("tottime").print_stats(25)


def report(results: dict[tuple[str, str], list[tuple[Result, float]]], servers: list[str],
           cases: list[str]) -> None:
    print("\nmedian of rounds (best in brackets); ours/nginx = median over rounds of the "
          "ratio within a round;\nCPU = server cores used; µs/req = server CPU per request")
    print(f"{'case':<12} {'server':<22} {'req/s':>18} {'MiB/s':>9} {'ours/nginx':>10} "
          f"{'CPU':>5} {'µs/req':>7} {'req/s per core':>14}")
    ratios: dict[tuple[str, str], float] = {}
    for case in cases:
        for name in servers:
            runs = results.get((case, name))
            if not runs:
                continue
            med = statistics.median(r.rps for r, _ in runs)
            best = max(r.rps for r, _ in runs)
            mib = statistics.median(r.mib_s for r, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            # Paired: ours against nginx of the same round, a few seconds apart, so load
            # that comes and goes on the machine weighs on both sides of each ratio.
            ratio = statistics.median(r.rps / n.rps for (r, _), (n, _) in zip(
                runs, results[(case, "nginx")], strict=True))
            ratios[(case, name)] = ratio
            us = statistics.median(c / r.rps * 1e6 for r, c in runs if r.rps)
            print(f"{case:<12} {name:<22} {med:>9.1f} [{best:>7.1f}] {mib:>9.1f} "
                  f"{ratio:>9.2f}x {cpu:>5.2f} {us:>7.0f} {1e6 / us:>14.0f}")
    file_ratio = ratios[("64 MiB file", "ours, log=none")]
    script_rps = statistics.median(r.rps for r, _ in results[("scripts", "ours, log=none")])
    print(f"\ngoals: 64 MiB file >= 0.8x nginx: {file_ratio:.2f}x "
          f"{'met' if file_ratio >= 0.8 else 'MISSED'}; scripts > 5000 req/s: "
          f"{script_rps:.0f} {'met' if script_rps > 5000 else 'MISSED'}")


if __name__ == "__main__":
    main()
