"""Load a server with wrk and measure what serving it costs: the parts the HTTP benchmarks share.

Why CPU per request: on a shared machine the requests/s a server reaches depend on what else
runs; the CPU time it spends per request hardly does, and the run-queue wait says how much
the machine's other work held it back.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path


def cpu_seconds(pid: int) -> tuple[float, float, float]:
    """(user, system, run-queue wait) seconds of a process (all its threads) and its direct
    children (nginx's worker). System time is the kernel's share (sockets, log writes); the
    wait is how long it was ready to run but other work held the cores."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = wait = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
            for task in Path(f"/proc/{entry}/task").glob("*/schedstat"):
                with contextlib.suppress(OSError, IndexError, ValueError):
                    wait += int(task.read_text().split()[1]) / 1e9
    return user, system, wait


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def run_wrk(url: str, duration: float, threads: int, connections: int,
            lua: Path | None) -> tuple[float, int, float, float, int]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
           "--timeout", "10s"]
    if lua is not None:
        cmd += ["-s", str(lua)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True,
                         timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        errors += sum(int(n) for n in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    return rps, requests, _ms(pct.get("50", "")), _ms(pct.get("99", "")), errors
