"""Unknown and refused traffic from the boot network, reported as digests.

Anyone on the boot network can send a DHCP DISCOVER from a random MAC, ask `/ipxe` for a
machine that does not exist, or phone home with a wrong token, as fast as the wire allows.
Each of those deserves an operator's attention once, not once per packet: the journal is a
ring (10,000 events), and a storm reported packet by packet would push the real events out
of it within minutes, and fill the log disk. So per kind and per interval: the first one is
reported at once (with everything known of it), the next few are logged, and everything
else is counted and reported as one digest event when the interval ends: how many, how
many distinct sources, a sample of them. Memory is bounded whatever the storm.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EventSink = Callable[..., None]

INTERVAL_S = 60.0
LOG_BURST = 5  # individual log lines per kind and interval; the rest is in the digest
SAMPLE = 10  # keys named in a digest
DISTINCT_CAP = 4096  # distinct keys counted exactly per interval; past it, "at least"


@dataclass
class _Interval:
    start: float
    count: int = 0
    keys: set[str] = field(default_factory=set)
    sample: list[str] = field(default_factory=list)


class RefusalDigest:
    """Rate-limited reporting for one boot service. `emit(kind, **fields)` journals (the
    peer's event sink, may be None); `logger` gets the individual lines."""

    def __init__(self, emit: EventSink | None, logger: Any, prefix: str,
                 interval: float = INTERVAL_S, burst: int = LOG_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._emit = emit
        self._log = logger
        self._prefix = prefix
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._open: dict[str, _Interval] = {}
        self.suppressed = 0  # log lines and events not written (a /metrics figure)

    def note(self, kind: str, key: str, **fields: Any) -> None:
        """One refused or unknown request of `kind` from `key` (a MAC, a client address)."""
        now = self._clock()
        current = self._open.get(kind)
        if current is not None and now >= current.start + self.interval:
            self._close(kind, current)
            current = None
        if current is None:
            current = self._open[kind] = _Interval(now)
            self._schedule_close(kind, current)
        current.count += 1
        if len(current.keys) < DISTINCT_CAP:
            current.keys.add(key)
            if len(current.sample) < SAMPLE and key not in current.sample:
                current.sample.append(key)
        if current.count <= self.burst:
            self._log.info(self._name(kind), **fields)
            if current.count == 1:
                self._send(kind, **fields)
        else:
            self.suppressed += 1

    def flush(self) -> None:
        """Close every interval now (at shutdown, and in tests)."""
        for kind, current in list(self._open.items()):
            self._close(kind, current)

    def _schedule_close(self, kind: str, current: _Interval) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop: closed by the next note or flush()
            return
        loop.call_later(self.interval, self._close_if_open, kind, current)

    def _close_if_open(self, kind: str, current: _Interval) -> None:
        if self._open.get(kind) is current:
            self._close(kind, current)

    def _close(self, kind: str, current: _Interval) -> None:
        del self._open[kind]
        if current.count <= 1:
            return  # the one there was is already reported
        distinct = len(current.keys)
        fields = {"count": current.count,
                  "distinct": distinct if distinct < DISTINCT_CAP else f">={DISTINCT_CAP}",
                  "sample": ",".join(current.sample),
                  "interval_s": round(self._clock() - current.start, 1)}
        self._log.warning(f"{self._name(kind)}.digest", **fields)
        self._send(f"{kind}-digest", **fields)

    def _name(self, kind: str) -> str:
        return f"{self._prefix}.{kind.replace('-', '_')}"

    def _send(self, kind: str, **fields: Any) -> None:
        if self._emit is None:
            return
        try:
            self._emit(kind, **fields)
        except Exception:  # noqa: BLE001 - a journal failure must never stop a boot service
            self._log.exception("event_sink_failed", kind=kind)
