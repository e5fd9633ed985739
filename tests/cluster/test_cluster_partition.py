"""A peer cut off from the others by a real partition (its links go down inside network
namespaces the test creates): it refuses writes with NoQuorum, keeps serving reads, and
catches up once the links come back."""

from __future__ import annotations

import asyncio
import time

import pytest

from tools.rigs.raft_node import RigNode, find_leader

pytestmark = [pytest.mark.slow, pytest.mark.root]

PORT = 4801


async def wait_status(node: RigNode, pred, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = await node.call("status")
        if pred(st):
            return st
        assert time.monotonic() < deadline, f"{node.address}: condition not met: {st}"
        await asyncio.sleep(0.05)


async def test_cut_off_leader_refuses_writes_serves_reads_then_catches_up(rigs, netns_lab):
    addrs = [f"{ip}:{PORT}" for ip in netns_lab.addresses]
    nodes = [rigs.node(a, addrs, prefix=netns_lab.prefix(i)) for i, a in enumerate(addrs)]
    await asyncio.gather(*(n.start() for n in nodes))
    leader = await find_leader(nodes)
    for i in range(10):
        assert (await leader.call("event", message=f"before-{i}"))["ok"]
    cut = nodes.index(leader)
    majority = [n for n in nodes if n is not leader]

    t_cut = time.monotonic()
    netns_lab.cut(cut)
    # The cut-off peer notices it lost the majority, and says so.
    await wait_status(leader, lambda st: not st["has_quorum"] and not st["is_leader"], 10)
    r = await leader.call("event", message="refused", timeout=3)
    assert not r["ok"] and r["error"] == "NoQuorum", r
    # Reads still come from its replica.
    events = (await leader.call("read", what="events"))["events"]
    assert [e["message"] for e in events if e["kind"] == "rig"] == [
        f"before-{i}" for i in range(10)]

    # Meanwhile the majority elects a new leader and keeps committing.
    new_leader = await find_leader(majority)
    print(f"\nnew leader committing {time.monotonic() - t_cut:.2f} s after the cut")
    for i in range(10):
        assert (await new_leader.call("event", message=f"during-{i}"))["ok"]
    top = (await new_leader.call("read", what="events"))["last_seq"]

    netns_lab.heal(cut)
    r = await leader.call("wait_seq", seq=top, timeout=20, wait=25)
    assert r["ok"], (r, leader.log_tail())
    for _ in range(100):  # the leader may have logged more since `top`
        healed = (await leader.call("read", what="events"))["events"]
        reference = (await new_leader.call("read", what="events"))["events"]
        if healed == reference:
            break
        await asyncio.sleep(0.1)
    assert healed == reference
    assert "refused" not in [e.get("message") for e in healed]
    # Back in the group, it accepts writes again.
    await wait_status(leader, lambda st: st["has_quorum"] and st["leader"], 20)
    r = await leader.call("event", message="rejoined", timeout=10)
    assert r["ok"], r
