"""Which stage each host is at: what decides the iPXE script a peer serves it.

DESIGN: no install loops. A host gets stage 1, then each phone-home moves it on; after its
last stage it boots its local disk until it is re-armed. The replicated host records (Raft)
decide, so every peer serves the same thing (`ReplicatedProgress`). A phone-home is also kept
in `LocalProgress`, an append-only journal in the peer's data dir, until it is replicated: a
peer cut off from the majority still moves a host on instead of installing it again.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from appliance.cluster.records import HostRecord as ReplicatedHost

log = structlog.get_logger("vaquero.netboot.progress")


class OutOfOrder(ValueError):
    """A phone-home for a stage that is not the next one: a stage 2 report before stage 1
    would otherwise mark the workflow done and boot the disk, skipping the install."""


def check_order(host: str, stage: int, done: int) -> bool:
    """True when `stage` is the next one, False for a replay (already done: idempotent);
    raises OutOfOrder for a stage past the next."""
    if stage <= done:
        return False
    if stage != done + 1:
        raise OutOfOrder(f"host {host}: stage {stage} reported while stage {done + 1} "
                         f"is the one in progress")
    return True


@dataclass(frozen=True)
class HostRecord:
    done: int  # stages completed (0: none yet)
    revision: str
    updated: float


class HostProgress(Protocol):
    def stage_to_serve(self, host: str, stages: int, fresh: bool = True) -> int | None:
        """The 1-based stage to serve, or None when the workflow is done (boot the disk).
        `fresh`: whether a host with no record at all is served stage 1 (the site's
        install_new_hosts policy)."""
        ...

    def record(self, host: str) -> HostRecord | None: ...

    def arming(self, host: str) -> str:
        """The identity of the host's current arming: phone-home tokens are derived from
        it, so a report made for an earlier arming (a reinstall since) is refused by
        identity, never by comparing clocks."""
        ...

    def stage_done(self, host: str, stage: int, revision: str) -> HostRecord:
        """Record `stage` done. Only the next stage counts: an earlier one is a replay
        (returned unchanged), a later one raises OutOfOrder."""
        ...

    def rearm(self, host: str, revision: str) -> None: ...

    async def sync(self) -> None:
        """Return once every stage_done so far is on disk (acknowledge a phone-home after)."""
        ...


class LocalProgress:
    """Host records in memory, journaled to `<data_dir>/progress.jsonl` (one line a change)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "progress.jsonl"
        self._records: dict[str, HostRecord] = {}
        if self.path.exists():
            for n, line in enumerate(self.path.read_text().splitlines(), start=1):
                try:
                    entry = json.loads(line)
                    self._records[entry["host"]] = HostRecord(
                        int(entry["done"]), entry["revision"], float(entry["at"]))
                except (ValueError, KeyError, TypeError):
                    log.warning("progress.bad_line", file=str(self.path), line=n)
        self._journal = open(self.path, "a", buffering=1)  # noqa: SIM115 - lives with the peer
        self._written = 0  # lines appended (each reaches the OS at once: line-buffered)
        self._synced = 0  # of which known to be on disk
        self._syncing: asyncio.Future[None] | None = None
        self.fsyncs = 0

    def close(self) -> None:
        os.fsync(self._journal.fileno())
        self._journal.close()

    def stage_to_serve(self, host: str, stages: int, fresh: bool = True) -> int | None:
        record = self._records.get(host)
        if record is None and not fresh:
            return None
        done = record.done if record else 0
        return done + 1 if done < stages else None

    def record(self, host: str) -> HostRecord | None:
        return self._records.get(host)

    def hosts(self) -> list[str]:
        return list(self._records)

    def write(self, host: str, record: HostRecord) -> None:
        """Journal a record as given (the caller decides what `done` and `revision` mean),
        on disk when this returns."""
        self.append(host, record)
        os.fsync(self._journal.fileno())
        self.fsyncs += 1
        self._synced = self._written

    def append(self, host: str, record: HostRecord) -> None:
        """Journal a record; on disk once `sync()` returns."""
        self._records[host] = record
        self._journal.write(json.dumps({"host": host, "done": record.done,
                                        "revision": record.revision, "at": record.updated}) + "\n")
        self._written += 1

    async def sync(self) -> None:
        """Wait until every record appended so far is on disk. A phone-home is acknowledged
        only then (never forgotten), but the fsync runs in a thread while the event loop
        keeps serving DHCP, TFTP and HTTP, and one fsync covers every record appended before
        it started (group commit): in a boot storm, an fsync per phone-home on the event
        loop held everything else up for seconds (tools/bench/storm.py)."""
        target = self._written
        while self._synced < target:
            if self._syncing is None:
                self._syncing = asyncio.ensure_future(self._fsync())
            await asyncio.shield(self._syncing)

    async def _fsync(self) -> None:
        covered = self._written
        try:
            await asyncio.to_thread(os.fsync, self._journal.fileno())
            self.fsyncs += 1
            self._synced = max(self._synced, covered)
        finally:
            self._syncing = None

    def arming(self, host: str) -> str:
        return "local"

    def stage_done(self, host: str, stage: int, revision: str) -> HostRecord:
        current = self._records.get(host)
        if not check_order(host, stage, current.done if current else 0):
            assert current is not None
            return current
        record = HostRecord(stage, revision, time.time())
        self.append(host, record)  # on disk once the caller's `sync()` returns
        return record

    def rearm(self, host: str, revision: str) -> None:
        self.write(host, HostRecord(0, revision, time.time()))


# Host states in which the engine is walking the machine through its stages.
_SERVING_STATES = frozenset({"queued", "powering", "booting", "waiting", "retrying"})


class ReplicatedProgress:
    """What to serve, from the host records in this peer's replica of the Raft state, raised
    by phone-homes this peer accepted that the group has not applied yet.

    A local phone-home counts only for the arming it was made under (`armed_seq` of the
    record): once the host is armed again, old local reports no longer apply."""

    def __init__(self, records: Callable[[str], ReplicatedHost | None],
                 local: LocalProgress) -> None:
        self.records = records  # host name -> its replicated record, or None
        self.local = local

    def _key(self, record: ReplicatedHost | None) -> str:
        return f"armed:{record.get('armed_seq')}" if record else "armed:None"

    def arming(self, host: str) -> str:
        record = self.records(host)
        return self._key(record if record is not None and "done" in record else None)

    def _local_done(self, host: str, record: ReplicatedHost | None) -> int:
        mine = self.local.record(host)
        return mine.done if mine is not None and mine.revision == self._key(record) else 0

    def stage_to_serve(self, host: str, stages: int, fresh: bool = True) -> int | None:
        record = self.records(host)
        if record is None or "done" not in record:
            done = self._local_done(host, None)
            if done == 0 and not fresh:
                return None
        else:
            if record.get("state") not in _SERVING_STATES:
                return None  # done, installed, failed, aborted: the disk
            done = max(record["done"], self._local_done(host, record))
        return done + 1 if done < stages else None

    def record(self, host: str) -> HostRecord | None:
        record = self.records(host)
        if record is None or "done" not in record:
            return self.local.record(host)
        done = max(record["done"], self._local_done(host, record))
        return HostRecord(done, record.get("revision") or "", record.get("updated_at", 0.0))

    def stage_done(self, host: str, stage: int, revision: str) -> HostRecord:
        record = self.records(host)
        key = self._key(record if record is not None and "done" in record else None)
        mine = self.local.record(host)
        base = mine.done if mine is not None and mine.revision == key else 0
        replicated = record.get("done", 0) if record else 0
        done = max(base, replicated)
        if not check_order(host, stage, done):
            return HostRecord(done, revision, time.time())
        self.local.append(host, HostRecord(stage, key, time.time()))  # on disk after sync()
        return HostRecord(stage, revision, time.time())

    async def sync(self) -> None:
        await self.local.sync()

    def rearm(self, host: str, revision: str) -> None:
        self.local.rearm(host, revision)
