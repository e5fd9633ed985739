"""What one boot log line costs a loaded aiohttp server: our pipeline against structlog's stock one.

Why: the per-host script route logs a line per request (production logging), so the line is
part of the route's cost. Three identical aiohttp servers answer `GET /ipxe` with 681 bytes
and differ only in logging: "reference" (structlog's stock JSON pipeline: TimeStamper iso,
JSONRenderer, WriteLogger writing and flushing each line: what appliance.log used before),
"ours" (appliance.log.configure_logging) and "none" (log_level warning: no line). wrk loads
each in interleaved rounds; the figure is server CPU per request (what the machine's other
load changes least), and a line's cost is a server's figure minus "none"'s.

    .venv/bin/python tools/bench/log_line.py [--rounds 3] [--duration 4]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench.wrkload import cpu_seconds, run_wrk  # noqa: E402

MODES = ("reference", "ours", "none")


def serve(mode: str, port: int) -> None:
    """The server process: one route, one log line per request (none for "none")."""
    import logging

    import structlog
    from aiohttp import web

    from appliance.log import configure_logging

    configure_logging("json", "warning" if mode == "none" else "info")
    if mode == "reference":
        p = structlog.processors
        structlog.configure(
            processors=[structlog.contextvars.merge_contextvars, p.add_log_level,
                        p.TimeStamper(fmt="iso", utc=True), p.StackInfoRenderer(),
                        p.format_exc_info, p.JSONRenderer()],
            logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            cache_logger_on_first_use=True)
    log = structlog.get_logger("vaquero.netboot.boot")
    body = b"#!ipxe\n" + b"x" * 674

    async def script(request: web.Request) -> web.Response:
        log.info("boot.script", host="node-0001", stage=1, stages=2, revision="abcdef012345",
                 arch=request.query.get("arch"), platform="efi", client=request.remote)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/ipxe", script)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()  # loopback only
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    args = ap.parse_args()
    from tools.rigs.peer_proc import free_tcp_ports

    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vq-bench-log-") as tmp:
        try:
            for mode, port in zip(MODES, free_tcp_ports(len(MODES)), strict=True):
                argv = [sys.executable, str(Path(__file__).resolve()), "--serve", mode,
                        str(port)]
                print(f"{mode}: {shlex.join(argv)}", flush=True)
                with open(Path(tmp) / f"{mode}.log", "wb") as out:
                    procs[mode] = (subprocess.Popen(argv, stdout=out), port)
            for _, port in procs.values():
                wait_up(f"http://127.0.0.1:{port}/ipxe")
            print(f"wrk -t2 -c50 -d{args.duration}s, {args.rounds} interleaved rounds; load "
                  f"average {load[0]:.2f}", flush=True)
            for _ in range(args.rounds):
                for mode, (proc, port) in procs.items():
                    u0, s0, _ = cpu_seconds(proc.pid)
                    _, n, *_ = run_wrk(f"http://127.0.0.1:{port}/ipxe?arch=x86_64",
                                       args.duration, 2, 50, None)
                    u1, s1, _ = cpu_seconds(proc.pid)
                    cpu[mode].append((u1 - u0 + s1 - s0) / n * 1e6)
                print("  " + "  ".join(f"{m} {cpu[m][-1]:.0f}" for m in MODES)
                      + " µs CPU/request", flush=True)
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(10)
    med = {m: statistics.median(v) for m, v in cpu.items()}
    line = {m: med[m] - med["none"] for m in ("reference", "ours")}
    print(f"medians, µs of server CPU per request: reference {med['reference']:.0f}, ours "
          f"{med['ours']:.0f}, no line {med['none']:.0f}; one line: reference "
          f"{line['reference']:.0f} µs, ours {line['ours']:.0f} µs; ours/reference "
          f"{line['ours'] / line['reference']:.2f}x (lower is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
