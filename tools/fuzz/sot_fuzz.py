"""Fuzz the SoT pipeline with generated trees: hostile YAML, runaway templates, links.

Each tree is the bundled lab SoT with a few seeded mutations, then compiled the way a peer
compiles a pushed commit (`compile_tree(DirectoryTree)`: load, validate, render every host in
the bounded worker). Mutations:

  yaml       alias bombs of random depth and width, deep nesting, huge numbers, binary junk,
             duplicate keys, merge-key chains, random bytes in a host file
  template   runaway loops, string doubling, huge multiplications and powers, recursion,
             widening filters, includes of missing or linked files
  links      symlinks to a secret outside the tree (file and directory), dangling links,
             FIFOs, links replacing SoT files

Every compile must end with a result (no exception escapes), within a bound, without the
secret anywhere in the problems; RSS of this process before and after is reported.

    .venv/bin/python -m tools.fuzz.sot_fuzz --trees 10000 [--seed 1]

The reduced form runs in tests/sot/test_fuzz_sot.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from appliance.sot.revision import compile_tree
from appliance.sot.tree import DirectoryTree

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "tests" / "sot" / "fixtures" / "flatcar-lab"
SECRET = "FUZZ-SECRET-d3adb33f"
PER_TREE_BOUND_S = 120.0  # one template budget per template, plus the normal work

YAML_TARGETS = ["os/flatcar-stable.yml", "boot/flatcar-install.yml",
                "workflows/flatcar-install.yml", "sites/lab/env.yml", "sites/lab/cluster-lab.yml"]
TEMPLATE = "assets/ignition/install.ign"


def _bomb(rng: random.Random) -> str:
    levels, width = rng.randint(3, 12), rng.randint(2, 12)
    lines = ["id: bomb", "a0: &a0 [x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _yaml(rng: random.Random) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        return _bomb(rng)
    if kind == 1:
        depth = rng.randint(10, 5000)
        return "id: deep\nx: " + "[" * depth + "]" * depth + "\n"
    if kind == 2:
        return f"id: big\nn: {'9' * rng.randint(100, 5000)}\nf: 1e{rng.randint(300, 5000)}\n"
    if kind == 3:
        return "id: dup\nid: dup\n" + "k: 1\n" * rng.randint(2, 50)
    if kind == 4:
        return ("d: &d {a: 1}\n" + "".join(f"m{i}: &m{i} {{<<: [*{'d' if i == 0 else f'm{i-1}'}"
                                           f", *d]}}\n" for i in range(rng.randint(1, 50))))
    if kind == 5:
        return rng.randbytes(rng.randint(1, 4000)).decode("latin-1")
    return "id: [unclosed\n  - {" * rng.randint(1, 20)


RUNAWAY = [
    "{{ ('a' * 3*10**9)|length }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s|length }}",
    "{{ 10 ** 10 ** 8 }}",
    "{% macro m(n) %}{{ m(n) }}{{ m(n) }}{% endmacro %}{{ m(1) }}",
    "{{ 'x'|center(10**10) }}{{ 'x'.ljust(10**10) }}{{ '%*d' % (10**10, 1) }}",
    "{{ ([1] * 10**8)|join(',') }}",
    "{{ range(100000)|list|join(',')|length }}",
    "{% include 'snippets/nope' %}",
    "{% include 'snippets/leak' %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum(10**6) }}",
    "{% for x in host.interfaces * 10**7 %}{% endfor %}",
]


def mutate(root: Path, rng: random.Random, outside: Path, outside_dir: Path) -> list[str]:
    """Apply 1-3 mutations; returns what was done (for the report of a failure)."""
    done = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(3)
        if kind == 0:
            target = root / rng.choice([*YAML_TARGETS, "os/fuzz.yml"])
            target.unlink(missing_ok=True)
            target.write_text(_yaml(rng), errors="replace")
            done.append(f"yaml:{target.relative_to(root)}")
        elif kind == 1:
            tpl = root / TEMPLATE
            snippet = rng.choice(RUNAWAY)
            if tpl.is_file() and not tpl.is_symlink():  # not a FIFO made earlier
                tpl.write_text(snippet + tpl.read_text())
            done.append(f"template:{snippet[:40]}")
        else:
            choice = rng.randrange(5)
            name = rng.choice(["os/link.yml", "assets/ignition/snippets/leak",
                               "sites/lab/cluster-x.yml", "workflows/linked", TEMPLATE])
            target = root / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if choice == 0:
                target.symlink_to(outside)
            elif choice == 1:
                target.symlink_to(outside_dir)
            elif choice == 2:
                target.symlink_to(root / "does-not-exist")
            elif choice == 3:
                os.mkfifo(target)
            else:
                target.symlink_to("../../../../../../../../etc/passwd")
            done.append(f"link{choice}:{name}")
    return done


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(trees: int, seed: int = 1, seconds: float = 36000) -> dict:
    rng = random.Random(seed)
    report: dict = {"trees": 0, "valid": 0, "invalid": 0, "failures": [], "max_s": 0.0,
                    "problem_codes": {}}
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as tmp:
        outside = Path(tmp) / "shadow"
        outside.write_text(f"id: leaked\nsecret: {SECRET}\n")
        outside_dir = Path(tmp) / "secret-dir"
        outside_dir.mkdir()
        (outside_dir / "x.yml").write_text(f"id: {SECRET}\n")
        report["rss_before_mb"] = rss_mb()
        for i in range(trees):
            if time.monotonic() > deadline:
                break
            root = Path(tmp) / f"t{i}"
            shutil.copytree(LAB, root)
            what = mutate(root, rng, outside, outside_dir)
            started = time.monotonic()
            try:
                revision = compile_tree(DirectoryTree(root))
                text = "\n".join(str(p) for p in revision.problems)
                if SECRET in text:
                    report["failures"].append({"tree": i, "what": what, "error": "secret leaked"})
                report["valid" if revision.valid else "invalid"] += 1
                for p in revision.problems:
                    report["problem_codes"][p.code] = report["problem_codes"].get(p.code, 0) + 1
            except Exception as exc:  # noqa: BLE001 - the finding: a compile must end with a result
                report["failures"].append({"tree": i, "what": what,
                                           "error": f"{type(exc).__name__}: {exc}"[:300]})
            took = time.monotonic() - started
            report["max_s"] = max(report["max_s"], round(took, 2))
            if took > PER_TREE_BOUND_S:
                report["failures"].append({"tree": i, "what": what, "error": f"{took:.0f} s"})
            report["trees"] += 1
            shutil.rmtree(root, ignore_errors=True)
        report["rss_after_mb"] = rss_mb()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=36000)
    args = parser.parse_args()
    report = run(args.trees, args.seed, args.seconds)
    print(json.dumps(report, indent=2))
    raise SystemExit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
