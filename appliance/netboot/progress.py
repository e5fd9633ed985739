"""Which stage each host is at: what decides the iPXE script a peer serves it.

DESIGN: no install loops. A host gets stage 1, then each phone-home moves it on; after its
last stage it boots its local disk until it is re-armed. The replicated state (Raft) will
own these records; until the peer group exists, `LocalProgress` keeps them in an append-only
journal in the peer's data dir, so a restart forgets nothing.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

log = structlog.get_logger("vaquero.netboot.progress")


@dataclass(frozen=True)
class HostRecord:
    done: int  # stages completed (0: none yet)
    revision: str
    updated: float


class HostProgress(Protocol):
    def stage_to_serve(self, host: str, stages: int) -> int | None:
        """The 1-based stage to serve, or None when the workflow is done (boot the disk)."""
        ...

    def record(self, host: str) -> HostRecord | None: ...

    def stage_done(self, host: str, stage: int, revision: str) -> HostRecord: ...

    def rearm(self, host: str, revision: str) -> None: ...


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

    def close(self) -> None:
        self._journal.close()

    def stage_to_serve(self, host: str, stages: int) -> int | None:
        record = self._records.get(host)
        done = record.done if record else 0
        return done + 1 if done < stages else None

    def record(self, host: str) -> HostRecord | None:
        return self._records.get(host)

    def _write(self, host: str, record: HostRecord) -> None:
        self._records[host] = record
        self._journal.write(json.dumps({"host": host, "done": record.done,
                                        "revision": record.revision, "at": record.updated}) + "\n")
        os.fsync(self._journal.fileno())  # a phone-home acknowledged is never forgotten

    def stage_done(self, host: str, stage: int, revision: str) -> HostRecord:
        current = self._records.get(host)
        done = max(stage, current.done if current else 0)
        record = HostRecord(done, revision, time.time())
        self._write(host, record)
        return record

    def rearm(self, host: str, revision: str) -> None:
        self._write(host, HostRecord(0, revision, time.time()))
