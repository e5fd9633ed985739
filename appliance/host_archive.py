"""Every machine's history on this peer's disk, beyond the replicated journal's ring.

The journal in the Raft state keeps the last 10,000 events of the whole site: on a busy site
a host's install of last month is gone from it. The archive follows the journal on each peer
(every peer applies the same events, so every peer's archive holds the same history) and
appends each event that names a host to `<data_dir>/hosts/<host>.jsonl`: armed, served,
phone-home, power intents and their results, health checks, failures, across revisions.
Retention is the config's `history:` (events per host, age); a file is compacted when it
grows a quarter past its limit, so appends stay cheap. If the peer was down while more than
the ring's worth of events went by, the loss is recorded in the history as a `gap` event
instead of being silent.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import structlog

from appliance.cluster import Cluster
from appliance.cluster.records import EventRecord

log = structlog.get_logger("vaquero.history")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_READ = 1000


class HostArchive:
    def __init__(self, directory: Path, max_events: int = 10_000, max_age_days: float = 365.0
                 ) -> None:
        self.root = directory
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_events = max_events
        self.max_age = max_age_days * 86400
        self._seq_file = self.root / "archived.seq"
        self.archived = self._read_seq()
        self._lines: dict[str, int] = {}  # lines per file, counted on first append

    def _read_seq(self) -> int:
        try:
            return int(self._seq_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _write_seq(self) -> None:
        tmp = self._seq_file.with_suffix(".tmp")
        tmp.write_text(f"{self.archived}\n")
        os.replace(tmp, self._seq_file)

    def path(self, host: str) -> Path | None:
        return self.root / f"{host}.jsonl" if SAFE_NAME.match(host) else None

    # --- writing -------------------------------------------------------------------------

    def add(self, events: list[EventRecord]) -> None:
        """Append the events that name a host; remember how far the journal was read."""
        by_host: dict[str, list[str]] = {}
        for event in events:
            host = event.get("host")
            if isinstance(host, str) and self.path(host) is not None:
                by_host.setdefault(host, []).append(json.dumps(event, separators=(",", ":")))
            seq = event.get("seq")
            if isinstance(seq, int) and seq > self.archived:
                self.archived = seq
        for host, lines in by_host.items():
            path = self.path(host)
            assert path is not None
            if host not in self._lines:
                self._lines[host] = _count_lines(path)
            with path.open("a") as out:
                out.write("\n".join(lines) + "\n")
            self._lines[host] += len(lines)
            if self._lines[host] > self.max_events * 5 // 4:
                self._compact(host, path)
        self._write_seq()

    def gap(self, first: int, last: int, hosts: list[str]) -> None:
        """Events first..last left the journal before this peer archived them."""
        event: EventRecord = {"seq": first, "at": time.time(), "kind": "gap",
                 "message": f"events {first}..{last} left the journal before this peer "
                            "archived them (the peer was down or far behind)"}
        self.add([{**event, "host": h} for h in hosts])

    def _compact(self, host: str, path: Path) -> None:
        """Keep the newest `max_events`, none older than `max_age`."""
        oldest = time.time() - self.max_age
        kept = [line for line in path.read_text().splitlines()[-self.max_events:]
                if _at(line) >= oldest]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
        self._lines[host] = len(kept)
        log.info("history.compacted", host=host, kept=len(kept))

    # --- reading -------------------------------------------------------------------------

    def read(self, host: str, after: int = 0, limit: int = 100) -> dict[str, Any] | None:
        """A host's events with seq > after, oldest first; None: no history at all."""
        path = self.path(host)
        if path is None or not path.exists():
            return None
        limit = max(1, min(limit, MAX_READ))
        events: list[dict[str, Any]] = []
        total = 0
        with path.open() as lines:
            for line in lines:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash mid-write
                total += 1
                if event.get("seq", 0) > after and len(events) < limit:
                    events.append(event)
        return {"host": host, "events": events, "total": total,
                "archived_through": self.archived}

    # --- following the journal -----------------------------------------------------------

    async def follow(self, cluster: Cluster, known_hosts: Any) -> None:
        """Archive the journal as it grows, until cancelled. `known_hosts()` names the hosts
        a gap is recorded for."""
        after = self.archived
        last = cluster.events_since(0, 0)["last_seq"]
        if after > last:  # a new Raft state under an old archive: start over
            log.warning("history.journal_reset", archived=after, journal_last=last)
            after = self.archived = 0
        while True:
            page = await cluster.follow_events(after, limit=500, timeout=15)
            if page["first_seq"] > after + 1 and page["events"]:
                self.gap(after + 1, page["first_seq"] - 1, sorted(known_hosts()))
            if page["events"]:
                await asyncio.to_thread(self.add, page["events"])
                after = page["events"][-1]["seq"]


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _at(line: str) -> float:
    try:
        return float(json.loads(line).get("at", 0))
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
        return 0.0
