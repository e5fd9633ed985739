"""What bounding the renders costs: a revision's render pass in the bounded worker (forked
child, RLIMIT_AS, wall clock) against the same pass in process, on one generated SoT.

Both run the same guarded templates (deadline per loop iteration and call, size checks);
the difference is the fork, the child's copy-on-write faults and pickling the result back.
Wall clock (the child's CPU is not the parent's process time), interleaved, best of N.

    .venv/bin/python tools/bench/render_budget.py [--hosts 10000] [--reps 3]
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from appliance.sot.loader import load_sot  # noqa: E402
from appliance.sot.problems import Problems  # noqa: E402
from appliance.sot.render_budget import DEFAULT_BUDGET  # noqa: E402
from appliance.sot.tree import DirectoryTree  # noqa: E402
from appliance.sot.validate import _render_all, render_all  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sot_dir = Path(tmp) / "sot"
        subprocess.run([sys.executable, str(ROOT / "tools" / "gen_sot.py"), str(sot_dir),
                        "--hosts", str(args.hosts)], check=True, capture_output=True)
        gc.disable()
        sot, _ = load_sot(DirectoryTree(sot_dir))
        gc.freeze()
        best = {"in process": float("inf"), "worker": float("inf")}
        for _ in range(args.reps):
            for name, fn in (("in process", _render_all), ("worker", None)):
                started = time.perf_counter()
                if fn is None:
                    result = render_all(sot, Problems())
                else:
                    result = fn(sot, Problems(), DEFAULT_BUDGET)
                best[name] = min(best[name], time.perf_counter() - started)
                assert not result.problems, result.problems.sorted()[:3]
    ref = best["in process"]
    print(f"render pass, {args.hosts} hosts, {result.renders} renders, best of {args.reps}:")
    for name, seconds in best.items():
        print(f"  {name:<11} {seconds:7.3f} s   ratio to in-process {seconds / ref:5.2f}")


if __name__ == "__main__":
    main()
