"""Check the end of a pysyncobj 0.3.17 journal file before pysyncobj reads it.

pysyncobj's FileJournal trusts the file: it walks records up to the offset in its header
without checking one of them. A tail torn by a power cut or a full disk (the header's end
offset reaching past the records that made it to disk) then either crashes the load on a
short read or, worse, yields a truncated command that is passed over without a word. This
walks the same records with checks (length prefix and suffix equal, record inside the file,
indexes consecutive), and if the tail is damaged moves the header's end offset back to the
last good record, so pysyncobj loads exactly the good entries, and says what was dropped.

Dropping the tail is what Raft expects of a follower: with `durable=True` a record is on
disk before any message acknowledges it, so a torn record was never acknowledged, and a
leader re-sends whatever a follower lacks.

Layout (pysyncobj/journal.py): name (24 b), version (8 b), format (4 b), end offset (4 b),
then records `size (4 b) | index (8 b) | term (8 b) | command | size (4 b)`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from pysyncobj.journal import APP_NAME, FIRST_RECORD_OFFSET, LAST_RECORD_OFFSET_OFFSET

RECORD_HEAD = 16  # index and term


@dataclass(frozen=True)
class JournalDamage:
    """What was cut from the end of a journal."""

    path: str
    offset: int  # byte offset of the first damaged record (the new end of the journal)
    bytes_dropped: int  # from there to the end offset the header claimed
    entries_kept: int
    last_index: int | None  # Raft index of the last entry kept
    reason: str

    def as_fields(self) -> dict:
        return {"path": self.path, "offset": self.offset, "bytes_dropped": self.bytes_dropped,
                "entries_kept": self.entries_kept, "last_index": self.last_index,
                "reason": self.reason}


def _walk(data: bytes, end: int) -> tuple[int, int, int | None, str | None]:
    """(offset reached, entries read, last index, why it stopped early or None)."""
    offset, count, last_index = FIRST_RECORD_OFFSET, 0, None
    limit = min(end, len(data))
    while offset < end:
        if offset + 4 > limit:
            return offset, count, last_index, "record length cut off"
        (size,) = struct.unpack_from("<I", data, offset)
        if size < RECORD_HEAD:
            return offset, count, last_index, f"record length {size} too small"
        if offset + 8 + size > limit:
            return offset, count, last_index, f"record of {size} bytes runs past the end"
        (suffix,) = struct.unpack_from("<I", data, offset + 4 + size)
        if suffix != size:
            return offset, count, last_index, f"record length {size} != trailing {suffix}"
        (index,) = struct.unpack_from("<Q", data, offset + 4)
        if last_index is not None and index != last_index + 1:
            return offset, count, last_index, f"index {index} does not follow {last_index}"
        last_index = index
        count += 1
        offset += 8 + size
    return offset, count, last_index, None


def repair_journal_tail(path: Path, *, durable: bool = True) -> JournalDamage | None:
    """Cut a damaged tail off the journal at `path`; None if there is none (or no file).

    A header that is not pysyncobj's is left alone: there is nothing to repair it from.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < FIRST_RECORD_OFFSET or not data.startswith(APP_NAME):
        return None
    (end,) = struct.unpack_from("<I", data, LAST_RECORD_OFFSET_OFFSET)
    reason: str | None
    if end < FIRST_RECORD_OFFSET:
        reached, count, last_index, reason = (FIRST_RECORD_OFFSET, 0, None,
                                              f"end offset {end} inside the header")
    else:
        reached, count, last_index, reason = _walk(data, end)
    if reason is None:
        return None
    with open(path, "r+b") as f:
        f.seek(LAST_RECORD_OFFSET_OFFSET)
        f.write(struct.pack("<I", reached))
        f.flush()
        if durable:
            os.fsync(f.fileno())
    return JournalDamage(path=str(path), offset=reached, bytes_dropped=max(end - reached, 0),
                         entries_kept=count, last_index=last_index, reason=reason)
