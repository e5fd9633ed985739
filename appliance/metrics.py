"""Counters as /metrics values: each part of the peer reports its own (`metrics()`), and most
keep them as a dataclass or a dict of ints."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["counter_values"]


def counter_values(counters: Any) -> dict[str, float]:
    """The numeric fields of a counters dataclass, or every value of a mapping, as floats."""
    if dataclasses.is_dataclass(counters) and not isinstance(counters, type):
        return {k: float(v) for k, v in dataclasses.asdict(counters).items()
                if isinstance(v, int | float)}
    assert isinstance(counters, Mapping)
    return {k: float(v) for k, v in counters.items()}
