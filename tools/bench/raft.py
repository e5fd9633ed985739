"""Benchmark of the peer group's Raft (appliance.cluster): 3 rig processes on loopback.

Figures per profile: commit latency p50/p99 (measured inside the node, from submit to
"committed and applied here"), on the leader and on a follower (which forwards), sequential
and concurrent throughput, and failover time over N leader kills (kill -9 the leader, time
until a survivor acknowledges a write; the killed node is restarted each round).

Profiles, run in the same invocation, each labelled by whether its journal is durable:
"durable tuned" (our timing; the journal msynced before any send and term/vote fsynced: what
a peer runs), "NON-DURABLE tuned" (same timing, journal left to the page cache: shows what
durability costs; no peer runs this) and the reference "durable pysyncobj-default" (its
default timing and batching, the same durable journal). The columns "tuned/ref" say how many
times better "durable tuned" does than the reference (reference/tuned for times,
tuned/reference for rates), "durable/non-durable" what durability costs. Each profile's
node command line is printed.

    .venv/bin/python tools/bench/raft.py            # full run, a few minutes
    .venv/bin/python tools/bench/raft.py --quick    # smaller counts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rigs"))

from raft_node import RigNode, find_leader, free_ports, stop_all_signal


@dataclass
class Profile:
    name: str
    timing: str
    durable: bool
    writes: int
    kills: int


@dataclass
class Result:
    profile: str
    figures: dict[str, float] = field(default_factory=dict)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def sequential(node: RigNode, n: int, tag: str) -> tuple[list[float], float]:
    ms = []
    t0 = time.perf_counter()
    for i in range(n):
        r = await node.call("event", message=f"{tag}{i}", timeout=10)
        if not r["ok"]:
            raise RuntimeError(r)
        ms.append(r["commit_ms"])
    return ms, n / (time.perf_counter() - t0)


async def concurrent(node: RigNode, n: int, window: int) -> tuple[list[float], float]:
    ms: list[float] = []
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            r = await node.call("event", message=f"c{i}", timeout=20)
            if not r["ok"]:
                raise RuntimeError(r)
            ms.append(r["commit_ms"])

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(window))), 300)
    return ms, n / (time.perf_counter() - t0)


async def full_mesh(nodes: list[RigNode], timeout: float = 30.0) -> None:
    """Wait until every node has a live connection to every other one: a kill must find
    a healthy group, not one still reconnecting to the node restarted last round."""
    deadline = time.monotonic() + timeout
    while True:
        sts = await asyncio.gather(*(n.call("status") for n in nodes))
        if all(len(s["connected"]) == len(nodes) - 1 for s in sts):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"group not fully connected: {sts}")
        await asyncio.sleep(0.05)


async def failover_rounds(nodes: list[RigNode], kills: int, budget: float) -> list[float]:
    times = []
    stop_at = time.monotonic() + budget
    for k in range(kills):
        if time.monotonic() > stop_at:
            print(f"  failover: time budget spent after {k} kills", file=sys.stderr)
            break
        leader = await find_leader(nodes, timeout=30)
        await full_mesh(nodes)
        survivor = next(n for n in nodes if n is not leader)
        t_kill = time.perf_counter()
        await leader.kill()
        r = await survivor.call("event", message=f"failover-{k}", timeout=15, wait=20)
        if not r["ok"]:
            raise RuntimeError(f"no commit after kill {k}: {r}")
        times.append(time.perf_counter() - t_kill)
        await leader.start()
        caught = await leader.call("wait_seq", seq=r["seq"], timeout=30, wait=35)
        if not caught["ok"]:
            raise RuntimeError(f"restarted node did not catch up: {caught}")
    return times


async def run_profile(p: Profile, root: Path, password: Path, window: int,
                      budget: float) -> Result:
    addrs = [f"127.0.0.1:{port}" for port in free_ports(3)]
    nodes = [RigNode(a, addrs, root / p.name.replace(" ", "-") / str(i), password, timing=p.timing,
                     durable=p.durable) for i, a in enumerate(addrs)]
    res = Result(p.name)
    f = res.figures
    try:
        print(f"  {p.name}: node command {shlex.join(nodes[0].command())}", file=sys.stderr)
        await asyncio.gather(*(n.start() for n in nodes))
        leader = await find_leader(nodes, timeout=30)
        follower = next(n for n in nodes if n is not leader)
        await sequential(leader, 10, "warm")
        ms, rate = await sequential(leader, p.writes, "s")
        f.update(leader_p50_ms=pct(ms, 50), leader_p99_ms=pct(ms, 99), seq_writes_per_s=rate)
        ms, _ = await sequential(follower, max(p.writes // 2, 20), "f")
        f.update(follower_p50_ms=pct(ms, 50), follower_p99_ms=pct(ms, 99))
        ms, rate = await concurrent(leader, p.writes * 4, window)
        f.update(conc_p50_ms=pct(ms, 50), conc_p99_ms=pct(ms, 99), conc_writes_per_s=rate)
        if p.kills:
            times = await failover_rounds(nodes, p.kills, budget)
            f.update(failover_kills=len(times), failover_median_s=statistics.median(times),
                     failover_max_s=max(times), failover_min_s=min(times))
    finally:
        for n in nodes:
            await n.stop()
        stop_all_signal(nodes)
    return res


ROWS = [
    ("leader_p50_ms", "commit p50, leader (ms)"),
    ("leader_p99_ms", "commit p99, leader (ms)"),
    ("follower_p50_ms", "commit p50, via follower (ms)"),
    ("follower_p99_ms", "commit p99, via follower (ms)"),
    ("seq_writes_per_s", "sequential writes/s"),
    ("conc_writes_per_s", "concurrent writes/s"),
    ("conc_p50_ms", "concurrent commit p50 (ms)"),
    ("conc_p99_ms", "concurrent commit p99 (ms)"),
    ("failover_kills", "leader kills"),
    ("failover_median_s", "failover median (s)"),
    ("failover_max_s", "failover max (s)"),
]


DURABLE, NON_DURABLE, REFERENCE = ("durable tuned", "NON-DURABLE tuned",
                                   "durable pysyncobj-default")


def _gain(key: str, better: float | None, worse: float | None) -> str:
    if not better or not worse or key == "failover_kills":
        return f"{'-':>12}"
    return f"{(better / worse if key.endswith('per_s') else worse / better):>12.2f}"


def report(results: list[Result], window: int) -> None:
    names = [r.profile for r in results]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nRaft on loopback, 3 peers, concurrency {window}; load average {load} on "
          f"{os.cpu_count()} CPUs (other load skews every column)")
    print(f"{'figure':32}" + "".join(f"{n:>27}" for n in names)
          + f"{'tuned/ref':>12}{'durable/non':>12}")
    by = {r.profile: r.figures for r in results}
    for key, label in ROWS:
        vals = [by[n].get(key) for n in names]
        if all(v is None for v in vals):
            continue
        cells = "".join(f"{v:>27.2f}" if v is not None else f"{'-':>27}" for v in vals)
        tuned = by.get(DURABLE, {}).get(key)
        ref, fast = by.get(REFERENCE, {}).get(key), by.get(NON_DURABLE, {}).get(key)
        # durable/non-durable: how many times slower durability makes it (>= 1)
        print(f"{label:32}{cells}{_gain(key, tuned, ref)}{_gain(key, fast, tuned)}")
    tuned = by.get(DURABLE, {})
    if "leader_p99_ms" in tuned:
        print(f"goal: durable commit p99 < 10 ms on the leader: {tuned['leader_p99_ms']:.2f} ms "
              f"({'met' if tuned['leader_p99_ms'] < 10 else 'MISSED'})")
    print(json.dumps({r.profile: r.figures for r in results}))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=500)
    ap.add_argument("--default-writes", type=int, default=100,
                    help="writes for the reference (each takes ~100-200 ms)")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--failover-budget", type=float, default=240.0,
                    help="seconds allowed for the kill rounds of one profile")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.writes, a.default_writes, a.kills = 100, 30, 3
    profiles = [
        Profile(DURABLE, "tuned", True, a.writes, a.kills),
        Profile(NON_DURABLE, "tuned", False, a.writes, 0),
        Profile(REFERENCE, "default", True, a.default_writes, a.kills),
    ]
    with tempfile.TemporaryDirectory(prefix="vq-raft-bench-") as tmp:
        root = Path(tmp)
        password = root / "password"
        password.write_text(secrets.token_urlsafe(24))
        password.chmod(0o600)
        results = []
        for p in profiles:
            t0 = time.monotonic()
            results.append(await run_profile(p, root, password, a.concurrency,
                                             a.failover_budget))
            print(f"  {p.name}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    report(results, a.concurrency)


if __name__ == "__main__":
    asyncio.run(main())
