"""The fleet benchmark's figures (tools/bench/fleet.py), from what the site, the machines, their
BMCs and the sniffer recorded. A module of its own so the harness stays readable.

Two ideals are printed. The goal's: ceil(N / 20) batches x a machine's two boots as the
client measures them (its process started, DHCP to phone-home), the time no engine can beat.
And, to show where the rest goes, the same batches x a machine's two boots from its BMC's
power command (the `power` line its chassis program logs) to its phone-home: that adds what
the simulated hardware takes, which no engine can save either: the sim's chassis program (a
Python process per BMC command), its power cycle (it polls about once a second for "off"
before powering on), and the machine's process start.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter
from pathlib import Path

MAX_CONCURRENT = 20  # the SoT's rollout.max_concurrent (fleet.write_sot)


def most_at_once(spans: list[list[float]]) -> int:
    """The most intervals [first, last] open at one time."""
    marks = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans],
                   key=lambda m: (m[0], -m[1]))
    most = now = 0
    for _, step in marks:
        now += step
        most = max(most, now)
    return most


def from_power(bmc_dirs: list[Path], macs: list[str], boots: list[dict]) -> list[float]:
    """Per machine that phoned home twice: the sum over its two boots of (phone-home time
    minus the BMC's power command before it). A boot's power command is the first `power`
    line of its chassis log after the previous boot's phone-home: `power 1` for an on, `power
    0` for a cycle (whose `power 1` follows once the sim saw the machine off)."""
    done: dict[str, list[float]] = {}
    for b in boots:
        if b["seconds"] is not None and b.get("at") is not None:
            done.setdefault(b["mac"], []).append(b["at"] + b["seconds"])
    out = []
    for work, mac in zip(bmc_dirs, macs, strict=True):
        ends = sorted(done.get(mac, []))
        try:
            lines = (work / "chassis.log").read_text().splitlines()
        except FileNotFoundError:
            continue
        powers = [float(t) for t, name, _ in (ln.split() for ln in lines if ln.count(" ") == 2)
                  if name == "power"]
        if len(ends) != 2:
            continue
        total, after = 0.0, 0.0
        for end in ends:
            start = next((t for t in powers if after < t < end), None)
            if start is None:
                break
            total, after = total + end - start, end
        else:
            out.append(total)
    return out


def summarise(seen: dict, records: Path, sniffed: Path, bmc_dirs: list[Path],
              macs: list[str]) -> dict:
    """The run's figures from what the site, the machines and the sniffer recorded."""
    n = seen["n"]
    spans: dict[str, list[list[float]]] = {}
    for key, span in json.loads(sniffed.read_text()).items():
        spans.setdefault(key.split("/")[0], []).append(span)
    boots = [json.loads(line) for line in records.read_text().splitlines()]
    per_host: dict[str, list[float]] = {}
    for b in boots:
        if b["seconds"] is not None:
            per_host.setdefault(b["mac"], []).append(b["seconds"])
    both = [sum(v) for v in per_host.values() if len(v) == 2]
    machine_s = statistics.median(both) if both else float("nan")
    powered = from_power(bmc_dirs, macs, boots)
    power_s = statistics.median(powered) if powered else float("nan")
    steps = Counter((e["host"], e["revision"], e["data"].get("stage"))
                    for e in seen["journal"] if e["kind"] == "intent.recorded"
                    and e.get("message") == "power.boot")
    batches = math.ceil(n / MAX_CONCURRENT)
    ideal = batches * machine_s
    durations = sorted(b - a for v in spans.values() for a, b in v)
    return {
        "hosts": n, "state": seen["state"], "wall_s": round(seen["wall"], 2),
        "machine_boot_s_p50": round(machine_s, 3), "batches": batches,
        "ideal_s": round(ideal, 2), "ratio": round(seen["wall"] / ideal, 2) if both else None,
        "machine_from_power_s_p50": round(power_s, 3),
        "ratio_from_power": round(seen["wall"] / (batches * power_s), 2) if powered else None,
        "hosts_done": sum(1 for h in seen["hosts"] if h.get("state") == "done"),
        "phoned_home": sum(1 for v in per_host.values() if len(v) >= 2),
        "boot_failures": Counter(b["failed"] for b in boots if b["failed"]),
        "power_ons": sum(seen["power_ons"]),
        "power_ons_max_per_machine": max(seen["power_ons"]),
        "steps_twice": sum(1 for c in steps.values() if c > 1), "boot_steps": len(steps),
        "bmc_sessions": sum(len(v) for v in spans.values()),
        "bmc_session_s_p50": round(statistics.median(durations), 3) if durations else None,
        "bmc_sessions_max_per_bmc": max((most_at_once(v) for v in spans.values()), default=0),
        "bmc_sessions_max_in_all": most_at_once([s for v in spans.values() for s in v]),
        "raft_entries_per_host": round(seen["raft_entries"] / n, 1),
        "events_per_host": round(len(seen["journal"]) / n, 1),
        "leader_cpu_s": round(seen["cpu"], 2),
        "killed": seen.get("killed"),
    }


def report(r: dict) -> None:
    """The figures as the issue asks for them, one run."""
    print(f"N={r['hosts']}: rollout {r['state']} in {r['wall_s']} s; ideal {r['batches']} "
          f"batches x {r['machine_boot_s_p50']} s (a machine's two boots, p50, by the client) "
          f"= {r['ideal_s']} s; ratio {r['ratio']}x (goal <= 1.2)")
    print(f"  from the BMC's power command to phone-home, two boots p50 "
          f"{r['machine_from_power_s_p50']} s: ratio {r['ratio_from_power']}x against that")
    if r.get("killed"):
        k = r["killed"]
        print(f"  leader peer-{k['peer'] + 1} SIGKILLed {k['at_s']} s in, with {k['done']} "
              f"hosts done; its CPU until then {k['cpu_s']} s (goal with a kill: <= 1.3x)")
    print(f"  hosts done {r['hosts_done']}/{r['hosts']}, phoned home twice "
          f"{r['phoned_home']}, client failures {dict(r['boot_failures']) or 'none'}; "
          f"power-ons {r['power_ons']} (at most {r['power_ons_max_per_machine']} a machine)")
    print(f"  boot steps {r['boot_steps']}, run twice {r['steps_twice']} (must be 0); BMC "
          f"sessions {r['bmc_sessions']} (p50 {r['bmc_session_s_p50']} s), open at once at "
          f"most: {r['bmc_sessions_max_per_bmc']} per BMC, {r['bmc_sessions_max_in_all']} in "
          "all (RMCP+ session IDs on the wire, first to last packet)")
    print(f"  Raft entries per host {r['raft_entries_per_host']}, journal events per host "
          f"{r['events_per_host']}; leader CPU {r['leader_cpu_s']} s; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
