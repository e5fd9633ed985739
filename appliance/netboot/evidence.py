"""Boot evidence: which hosts a peer served a stage's script, told to the group in batches.

Why: a new leader must tell a power action that happened from one that was lost (see
workflow/host_run.py); a peer serving a host its stage script is the proof. That proof is
worth one Raft entry per host, stage, step (script served, kernel loaded) and boot, not one
per request: in a boot storm the per-request write cost a third of the script route's
throughput (commit ec999d1), and a machine that re-fetches its script (iPXE retries) within
seconds proves nothing new. So the route only calls `served()` (dict lookups); evidence is
gathered for `interval` seconds and handed to the outbox as one `hosts.seen` entry per
`MAX_SEEN_BATCH` hosts, and a repeat is held (see BootEvidence). This peer's replica of the
host records only speeds telling up (a new arming or attempt is told at once); it never
suppresses evidence, because it may lag the leader's (a follower cut off from the group).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from appliance.cluster import commands
from appliance.cluster.records import HostRecord


class BootEvidence:
    """`records(host)` gives this peer's replica of the host record (or None); `submit(cmd)`
    queues a command for replication (the outbox's put_command: it never blocks).

    The replica may lag the leader (a follower cut off, or a few ms behind): it never decides
    that evidence is dropped, only that it is told at once. A fetch that repeats what was
    told within `hold` seconds (same host, step, stage, revision, and no new arming or
    attempt in the replica) is held and told when the hold ends, so the group always learns
    of a host's latest fetch within `hold` seconds, and at most once per hold."""

    def __init__(self, records: Callable[[str], HostRecord | None], submit: Callable[[dict], None],
                 interval: float = 0.25, hold: float = 5.0) -> None:
        self.records = records
        self.submit = submit
        self.interval = interval
        self.hold = hold
        # (host, step) -> (what was last told, when): one entry per host and step
        self._last: dict[tuple[str, str], tuple[tuple, float]] = {}
        self._held: dict[tuple[str, str], dict] = {}  # repeats to tell when their hold ends
        self._pending: list[dict] = []
        self._flush_at: asyncio.TimerHandle | None = None
        self.recorded = 0  # evidence items handed to the outbox
        self.entries = 0  # hosts.seen entries they made

    def metrics(self) -> dict[str, float]:
        """Boot evidence told to the group, and in how many Raft entries."""
        return {"evidence_hosts": float(self.recorded), "evidence_entries": float(self.entries)}

    def served(self, host: str, stage: int, revision: str | None,
               step: str = "script") -> None:
        """The host was just served stage `stage`'s script of `revision` (step "script"),
        or told the peer it loaded that stage's kernel and initrds (step "loaded")."""
        record = self.records(host)
        # An arming (armed_seq) and each retry of a stage (attempt) is a new power action
        # whose evidence the leader may need: told at once when the replica shows one.
        key = ((stage, None, None, revision) if record is None else
               (stage, record.get("armed_seq"), record.get("attempt"), revision))
        now = time.monotonic()
        item = {"name": host, "stage": stage, "at": time.time(), "revision": revision,
                "step": step if step != "script" else None}  # the default
        last = self._last.get((host, step))
        if last is not None and last[0] == key and now < last[1] + self.hold:
            self._held[(host, step)] = item  # told when the hold ends (the latest fetch)
        else:
            self._held.pop((host, step), None)
            self._last[(host, step)] = (key, now)
            self._pending.append(item)
        self._schedule(self.interval)

    def _schedule(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if self._flush_at is not None:
            if self._flush_at.when() <= due:
                return
            self._flush_at.cancel()  # a hold's wake-up, later than new evidence may wait
        self._flush_at = loop.call_at(due, self.flush)

    def flush(self) -> None:
        """Queue what was gathered and what was held past its hold (called by the timer;
        call it at shutdown too)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        now = time.monotonic()
        for where, item in list(self._held.items()):
            key, told = self._last[where]
            if now >= told + self.hold:
                del self._held[where]
                self._last[where] = (key, now)
                self._pending.append(item)
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), commands.MAX_SEEN_BATCH):
            chunk = [{k: v for k, v in item.items() if v is not None}
                     for item in pending[i:i + commands.MAX_SEEN_BATCH]]
            self.submit(commands.build("hosts.seen", time.time(), hosts=chunk))
            self.recorded += len(chunk)
            self.entries += 1
        if self._held:  # wake when the earliest hold ends
            soonest = min(self._last[where][1] for where in self._held) + self.hold
            self._schedule(max(self.interval, soonest - now))
