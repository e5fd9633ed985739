"""Helpers that tests in more than one folder share, imported as `tests.support.<module>`
(the repository root is on pytest's path). A helper used by one folder only stays beside
its tests; rigs that benchmarks use too live in `tools/rigs/`.
"""
