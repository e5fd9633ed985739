"""Boot evidence: which hosts a peer served a stage's script, told to the group in batches.

Why: a new leader must tell a power action that happened from one that was lost (see
workflow/host_run.py); a peer serving a host its stage script is the proof. That proof is
worth one Raft entry per host, stage, arming and step (script served, kernel loaded), not
one per request: in a boot storm
the per-request write cost a third of the script route's throughput (commit ec999d1), and a
machine that re-fetches its script (iPXE retries, a reboot loop) proves nothing new. So the
script route only calls `served()` (a dict lookup); new evidence is gathered for `interval`
seconds and handed to the outbox as one `hosts.seen` entry per `MAX_SEEN_BATCH` hosts.

Hosts with no replicated record are skipped: nobody armed them, so nobody waits for their
evidence (the state machine would ignore it anyway).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from appliance.cluster import commands


class BootEvidence:
    """`records(host)` gives the replicated host record (or None); `submit(cmd)` queues a
    command for replication (the outbox's put_command: it never blocks)."""

    def __init__(self, records: Callable[[str], dict | None], submit: Callable[[dict], None],
                 interval: float = 0.25) -> None:
        self.records = records
        self.submit = submit
        self.interval = interval
        self._last: dict[tuple[str, str], tuple] = {}  # (host, step) -> what was last told
        self._pending: list[dict] = []
        self._flush_at: asyncio.TimerHandle | None = None
        self.recorded = 0  # evidence items handed to the outbox
        self.entries = 0  # hosts.seen entries they made

    def served(self, host: str, stage: int, revision: str | None,
               step: str = "script") -> None:
        """The host was just served stage `stage`'s script of `revision` (step "script"),
        or told the peer it loaded that stage's kernel and initrds (step "loaded")."""
        record = self.records(host)
        if record is None:
            self._last.pop((host, step), None)
            return
        # An arming (armed_seq) and each retry of a stage (attempt) is a new power action
        # whose evidence the leader may need; anything else was already told.
        key = (stage, record.get("armed_seq"), record.get("attempt"), revision)
        if self._last.get((host, step)) == key:
            return
        self._last[(host, step)] = key
        self._pending.append({"name": host, "stage": stage, "at": time.time(),
                              "revision": revision,
                              "step": step if step != "script" else None})  # the default
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        """Queue what was gathered (called by the timer; call it at shutdown too)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), commands.MAX_SEEN_BATCH):
            chunk = [{k: v for k, v in item.items() if v is not None}
                     for item in pending[i:i + commands.MAX_SEEN_BATCH]]
            self.submit(commands.build("hosts.seen", time.time(), hosts=chunk))
            self.recorded += len(chunk)
            self.entries += 1
