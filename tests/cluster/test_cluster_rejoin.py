"""A follower cut off from its group by a real partition, then healed, must not depose a
leader that kept its quorum (pre-vote, appliance/cluster/raft.py): same leader, same term,
and every write made during the cut and the heal committed without a refusal."""

from __future__ import annotations

import asyncio
import operator
import os
import time

import pytest

from tools.rigs.raft_node import find_leader

pytestmark = pytest.mark.slow

PORT = 4811
# Long enough for many election timeouts (0.3-0.6 s) to expire on the cut-off peer.
# VAQ_REJOIN_CUT_S=300 gives the 5-minute cut by hand.
CUT_SECONDS = float(os.environ.get("VAQ_REJOIN_CUT_S", "20"))


async def test_rejoining_follower_does_not_depose_a_leader_with_quorum(rigs, netns_lab):
    addrs = [f"{ip}:{PORT}" for ip in netns_lab.addresses]
    nodes = [rigs.node(a, addrs, prefix=netns_lab.prefix(i)) for i, a in enumerate(addrs)]
    await asyncio.gather(*(n.start() for n in nodes))
    leader = await find_leader(nodes)
    before = await leader.call("status")
    cut = next(i for i, n in enumerate(nodes) if n is not leader)
    follower = nodes[cut]

    refused: list[dict] = []
    written = 0
    acked: list[float] = []  # when each write was acknowledged: a pause would show as a gap

    async def write_until(t_end: float) -> None:
        nonlocal written
        while time.monotonic() < t_end:
            r = await leader.call("event", message=f"w{written}", timeout=5)
            if r["ok"]:
                written += 1
                acked.append(time.monotonic())
            else:
                refused.append(r)
            await asyncio.sleep(0.05)

    netns_lab.cut(cut)
    await write_until(time.monotonic() + CUT_SECONDS)
    cut_status = await follower.call("status")
    netns_lab.heal(cut)
    t_heal = time.monotonic()
    await write_until(time.monotonic() + 8)
    top = (await leader.call("read", what="events"))["last_seq"]
    r = await follower.call("wait_seq", seq=top, timeout=20, wait=25)
    assert r["ok"], (r, follower.log_tail())
    after = await leader.call("status")
    rejoined = await follower.call("status")
    print(f"\ncut {CUT_SECONDS:.0f} s: term before {before['term']}, on the cut-off peer "
          f"{cut_status['term']}, after the heal {after['term']} (leader {after['leader']}); "
          f"{written} writes, {len(refused)} refused; follower caught up by "
          f"{time.monotonic() - t_heal:.1f} s after the heal (writes ran 8 s of it); longest "
          f"gap between acknowledged writes {max(map(operator.sub, acked[1:], acked)):.2f} s")
    assert refused == []
    assert after["is_leader"] and after["term"] == before["term"], (before, after)
    assert rejoined["leader"] == leader.address and rejoined["term"] == before["term"]
    assert cut_status["term"] == before["term"], "the cut-off peer raised its term"
    # cut off, it follows no one (writes to it fail at once) rather than a leader it lost
    assert cut_status["leader"] is None and not cut_status["has_quorum"], cut_status
