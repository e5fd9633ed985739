"""The SoT fuzz harness (tools/fuzz/sot_fuzz.py) in a reduced form: generated trees with
hostile YAML, runaway templates and links all compile to a result, within a bound, with the
secret outside the tree nowhere in the problems. `python -m tools.fuzz.sot_fuzz` runs it long.
"""

from __future__ import annotations

from tools.fuzz import sot_fuzz


def test_reduced_sot_fuzz() -> None:
    report = sot_fuzz.run(trees=30, seed=11, seconds=300)
    assert report["trees"] == 30
    assert report["failures"] == []
    assert report["max_s"] < sot_fuzz.PER_TREE_BOUND_S
