"""The clocks the workflow engine reads, as an object it is given.

Why: a decision that compares two peers' clocks breaks when they drift (a stage deadline
set on one leader's wall clock and enforced on the next's). The engine measures every
duration on the leader's own monotonic clock, from when that leader started watching
(a new leader starts over), and orders what machines and leaders did by Raft order (event
seq), never by timestamps. Wall time is only written into records for people to read.
Tests hand the engine a clock they drive.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that only moves forward, meaningful on this peer only."""

    def wall(self) -> float:
        """Seconds since the epoch, for records people read; never compared across peers."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()


def offset_wall_clock(seconds: float) -> None:
    """Make every wall-clock read of this process (time.time, time.time_ns) run `seconds`
    ahead (or behind), as a drifted system clock would: the `clock_offset_s` test setting.
    Time namespaces cannot do this (they shift only the monotonic and boot-time clocks),
    and libfaketime breaks time.sleep in Python's threads (EINVAL from clock_nanosleep)."""
    real_time, real_ns = _REAL_TIME
    time.time = lambda: real_time() + seconds
    time.time_ns = lambda: real_ns() + int(seconds * 1e9)


_REAL_TIME = (time.time, time.time_ns)
