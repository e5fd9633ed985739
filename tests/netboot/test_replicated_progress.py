"""What a peer serves from the replicated host records, raised by phone-homes it accepted
that the group has not applied yet (a peer cut off from the majority must not serve a host
the stage it just reported again)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.netboot.progress import LocalProgress, ReplicatedProgress

R1 = "1" * 40


def armed(seq: int, done: int = 0, state: str = "booting") -> dict:
    return {"name": "n1", "revision": R1, "stages": 2, "done": done, "stage": done + 1,
            "state": state, "armed_seq": seq}


def test_replicated_records_decide_and_local_phone_homes_raise_them(tmp_path: Path) -> None:
    records: dict[str, dict] = {}
    local = LocalProgress(tmp_path)
    progress = ReplicatedProgress(records.get, local)
    # no record: stage 1 only where the site installs new hosts
    assert progress.stage_to_serve("n1", 2) == 1
    assert progress.stage_to_serve("n1", 2, fresh=False) is None
    records["n1"] = armed(seq=7)
    assert progress.stage_to_serve("n1", 2, fresh=False) == 1
    # a phone-home here, not yet replicated (the group is out of reach): stage 2 at once
    assert progress.stage_done("n1", 1, R1).done == 1
    assert progress.stage_to_serve("n1", 2) == 2
    # it survives a restart of the peer (journal), and counts only for that arming
    local.close()
    local = LocalProgress(tmp_path)
    progress = ReplicatedProgress(records.get, local)
    assert progress.stage_to_serve("n1", 2) == 2
    records["n1"] = armed(seq=9)  # armed again for a reinstall: the old report is stale
    assert progress.stage_to_serve("n1", 2) == 1
    records["n1"] = armed(seq=9, done=2, state="installed")
    assert progress.stage_to_serve("n1", 2) is None  # workflow done: the disk
    for state in ("failed", "aborted", "done"):
        records["n1"] = armed(seq=9, done=0, state=state)
        assert progress.stage_to_serve("n1", 2) is None, state
    local.close()


async def test_a_storm_of_phone_homes_shares_fsyncs_and_none_is_lost(tmp_path: Path) -> None:
    """Each phone-home waits until its record is on disk, but one fsync (off the event
    loop) covers every record appended before it: not one fsync per phone-home."""
    local = LocalProgress(tmp_path)
    progress = ReplicatedProgress({}.get, local)

    async def phone_home(i: int) -> None:
        progress.stage_done(f"h{i}", 1, R1)
        await progress.sync()
        assert local.fsyncs >= 1  # acknowledged only after an fsync

    await asyncio.gather(*(phone_home(i) for i in range(200)))
    assert 1 <= local.fsyncs < 20, local.fsyncs
    await progress.sync()  # nothing pending: returns at once
    before = local.fsyncs
    await progress.sync()
    assert local.fsyncs == before
    local.close()
    reread = LocalProgress(tmp_path)
    assert all(reread.record(f"h{i}").done == 1 for i in range(200))
    reread.close()
