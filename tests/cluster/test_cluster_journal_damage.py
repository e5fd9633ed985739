"""A torn end of the Raft journal (a power cut in the middle of a record) is cut off at
start with a warning that says where and how much, and every good entry is still there."""

from __future__ import annotations

import asyncio
import struct

import pytest
from pysyncobj.journal import LAST_RECORD_OFFSET_OFFSET

from tools.rigs.raft_node import find_leader

WRITES = 20


async def _journal(node) -> list[dict]:
    answer = await node.call("read", what="events")
    assert answer["ok"], answer
    return answer["events"]


async def _events(node) -> list[str]:
    return [e["message"] for e in await _journal(node) if e["kind"] == "rig"]


def _end_offset(journal) -> int:
    return struct.unpack_from("<I", journal.read_bytes(), LAST_RECORD_OFFSET_OFFSET)[0]


def _tear_last_record(journal) -> None:
    """Truncate the file 10 bytes before the end the header claims: the last record's
    tail never made it to disk."""
    end = _end_offset(journal)
    with open(journal, "r+b") as f:
        f.truncate(end - 10)


def _smash_last_record(journal) -> None:
    """Overwrite the last record's trailing length: its bytes are garbage."""
    end = _end_offset(journal)
    with open(journal, "r+b") as f:
        f.seek(end - 4)
        f.write(b"\xde\xad\xbe\xef")


@pytest.mark.parametrize("damage", [_tear_last_record, _smash_last_record])
async def test_damaged_journal_tail_is_dropped_with_a_warning(rigs, damage):
    (node,) = rigs.make(1)
    await node.start()
    await find_leader([node])
    for i in range(WRITES):
        assert (await node.call("event", message=f"w{i}", timeout=10))["ok"]
    assert await _events(node) == [f"w{i}" for i in range(WRITES)]
    await node.stop()

    journal = node.data_dir / "raft.journal"
    end = _end_offset(journal)
    damage(journal)
    await node.start()
    await find_leader([node])

    # The last write's record was torn: it is gone, every one before it is kept.
    assert await _events(node) == [f"w{i}" for i in range(WRITES - 1)]
    warnings = [line for line in node.log_tail(400).splitlines()
                if "cluster_journal_tail_dropped" in line]
    assert len(warnings) == 1, node.log_tail()
    assert "bytes_dropped=" in warnings[0] and "offset=" in warnings[0], warnings[0]
    # ... and once the node runs, the repair is in the replicated journal too
    for _ in range(100):
        repairs = [e for e in await _journal(node) if e["kind"] == "cluster.journal_tail_dropped"]
        if repairs:
            break
        await asyncio.sleep(0.1)
    assert len(repairs) == 1, repairs
    assert repairs[0]["data"]["bytes_dropped"] > 0
    assert repairs[0]["data"]["entries_kept"] >= WRITES - 1
    # the node runs on: a new write commits after the repaired tail
    assert (await node.call("event", message="after", timeout=10))["ok"]
    assert (await _events(node))[-1] == "after"
    assert _end_offset(journal) > end - 200  # the header now points past the new entries
