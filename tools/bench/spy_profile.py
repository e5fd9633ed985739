"""Where a server process's CPU goes under load: py-spy samples, summarised for a report.

Why py-spy rather than cProfile: it attaches to the real, unmodified process (a `vaq-peer
serve` started as an operator starts it), so the profile is of the process the benchmark
measured. It pauses the process for each sample (a few µs, 100 times a second): without
that (--nonblocking) it reads stacks while they change, and a good share of the samples
came out empty or with frames of different stacks mixed.
Only the event loop's thread is summarised: it serves every request, and py-spy counts the
other threads (Raft's ticker, the thread pool) as busy while they wait on a lock or a
timeout. Samples of the loop waiting in epoll are left out; what remains is its busy time,
including system calls (a socket send on loopback runs the receiving side's TCP work too).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

PY_SPY = Path(sys.executable).parent / "py-spy"

# A sample belongs to the innermost frame (leaf first) that matches one of these, in this
# order, so that the areas add up to 100%; the rest is aiohttp and asyncio themselves.
AREAS = (
    ("log line (structlog: render, write)", "(structlog/"),
    ("socket send (system call; loopback TCP)", "_SelectorSocketTransport.write "),
    ("boot handler (boot_http.py, its aiohttp Response)", "(appliance/netboot/boot_http.py"),
    ("API middlewares (appliance/api: request id, auth, errors)", "(appliance/api/"),
    ("Raft, on the event loop (pysyncobj)", "(pysyncobj/"),
)
LOOP = "BaseEventLoop.run_forever "  # a frame of the event loop thread's stacks
OTHER = "aiohttp + asyncio (HTTP parsing, request objects, response writing, event loop)"
_PREFIX = re.compile(r" \(/.*/(site-packages|lib/python3\.\d+)/")


def area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in AREAS:
            if pattern in frame:
                return name
    return OTHER


def record(pid: int, seconds: int, load: Callable[[], object], out: Path) -> str:
    """Sample `pid` for `seconds` while `load()` runs; return the report (or why none)."""
    if not PY_SPY.exists():
        return (f"no profile: {PY_SPY} is not installed (.venv/bin/pip install py-spy); the "
                "figures above stand without it")
    spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--duration",
                            str(seconds), "--rate", "100", "--format", "raw",
                            "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1)  # py-spy attaches
        load()
        _, err = spy.communicate(timeout=seconds + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait(5)
    if not out.exists():
        return f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"
    return summarise(out.read_text())


def summarise(raw: str, top: int = 20) -> str:
    """py-spy's raw format: one `frame;frame;...;leaf count` line per distinct stack."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = others = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_PREFIX.sub(" (", f) for f in stack.split(";")]
        n = int(count)
        if not any(LOOP in f for f in frames):
            others += n
            continue
        total += n
        own[frames[-1]] += n
        areas[area(frames)] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "py-spy took no sample of the busy event loop"
    lines = [f"{total} samples of the busy event loop thread ({others} of other threads, "
             "mostly waiting, left out); by area (innermost match):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in areas.most_common()]
    for title, counter in (("own time", own), ("inclusive time", inclusive)):
        lines.append(f"top {top} by {title}:")
        lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(lines)
