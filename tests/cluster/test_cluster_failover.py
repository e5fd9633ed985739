"""Real peer processes on loopback: leader crashes under write load, full restarts, and
membership changes. Every acknowledged write must survive; timings are printed, and only
checked against a generous bound."""

from __future__ import annotations

import asyncio
import time

import pytest

from tools.rigs.raft_node import RigNode, find_leader

pytestmark = pytest.mark.slow

FAILOVER_BOUND = 10.0  # s; the target (<2 s) is measured by tools/bench/raft.py


class Writers:
    """One sequential writer per node; records every acknowledged write and when it was
    sent, until stopped."""

    def __init__(self, nodes: list[RigNode], tag: str) -> None:
        self.nodes = nodes
        self.tag = tag
        self.acked: dict[str, int] = {}  # message -> seq
        self.ack_times: list[tuple[float, float]] = []  # (sent, acked), monotonic
        self.errors: list[str] = []
        self._stop = False
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(n, i)) for i, n in enumerate(self.nodes)]

    async def _run(self, node: RigNode, i: int) -> None:
        k = 0
        deadline = time.monotonic() + 60
        while not self._stop and node.running and time.monotonic() < deadline:
            k += 1
            msg = f"{self.tag}-{i}-{k}"
            sent = time.monotonic()
            try:
                r = await node.call("event", message=msg, timeout=5, wait=10)
            except Exception as exc:  # noqa: BLE001 - the node was killed under us
                self.errors.append(f"{node.address}: {exc}")
                return
            if r["ok"]:
                self.acked[msg] = r["seq"]
                self.ack_times.append((sent, time.monotonic()))
            else:
                self.errors.append(r["error"])
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop = True
        await asyncio.wait_for(asyncio.gather(*self._tasks), 20)


async def check_has_all(node: RigNode, acked: dict[str, int]) -> list[dict]:
    """Node has applied every acknowledged write, each at the sequence number it was
    acknowledged with."""
    top = max(acked.values())
    r = await node.call("wait_seq", seq=top, timeout=15, wait=20)
    assert r["ok"], (node.address, r, node.log_tail())
    events = (await node.call("read", what="events"))["events"]
    by_msg = {e.get("message"): e["seq"] for e in events}
    missing = {m: s for m, s in acked.items() if by_msg.get(m) != s}
    assert not missing, f"{node.address} lost acknowledged writes: {sorted(missing)[:10]}"
    return events


async def kill_leader_under_load(nodes: list[RigNode]) -> None:
    await asyncio.gather(*(n.start() for n in nodes))
    leader = await find_leader(nodes)
    writers = Writers(nodes, "w")
    writers.start()
    await asyncio.sleep(1.0)
    before = len(writers.acked)
    t_kill = time.monotonic()
    await leader.kill()
    survivors = [n for n in nodes if n is not leader]
    # Keep writing until every survivor got writes through after the kill (bounded).
    deadline = t_kill + FAILOVER_BOUND + 5
    while time.monotonic() < deadline and sum(s > t_kill for s, _ in writers.ack_times) < 20:
        await asyncio.sleep(0.05)
    await writers.stop()
    after_kill = [a for s, a in writers.ack_times if s > t_kill]
    assert after_kill, f"no write committed after the leader died: {writers.errors[-5:]}"
    failover = min(after_kill) - t_kill
    print(f"\n{len(nodes)} nodes: {before} writes before kill -9 of the leader, "
          f"{len(writers.acked)} acknowledged in all; first commit after the kill "
          f"{failover * 1000:.0f} ms")
    assert failover < FAILOVER_BOUND
    new_leader = await find_leader(survivors)
    assert new_leader is not leader
    reference = await check_has_all(survivors[0], writers.acked)
    for node in survivors[1:]:
        events = await check_has_all(node, writers.acked)
        n = min(len(events), len(reference))
        assert events[:n] == reference[:n], "replicas diverged"
    # The killed node comes back, catches up from its journal plus the leader.
    await leader.start()
    await check_has_all(leader, writers.acked)

    # Full restart of every peer (kill -9, as a site power cut): nothing acknowledged lost.
    for node in nodes:
        await node.kill()
    await asyncio.gather(*(n.start() for n in nodes))
    await find_leader(nodes)
    r = await nodes[0].call("event", message="after-restart", timeout=10)
    assert r["ok"], r
    writers.acked["after-restart"] = r["seq"]
    for node in nodes:
        await check_has_all(node, writers.acked)


async def test_kill_leader_three_nodes(rigs):
    await kill_leader_under_load(rigs.make(3))


async def test_kill_leader_five_nodes(rigs):
    await kill_leader_under_load(rigs.make(5))


async def test_membership_add_then_remove(rigs):
    nodes = rigs.make(3)
    await asyncio.gather(*(n.start() for n in nodes))
    leader = await find_leader(nodes)
    follower = next(n for n in nodes if n is not leader)
    for i in range(5):
        r = await leader.call("event", message=f"m{i}")
        assert r["ok"], r
    top = r["seq"]

    # Add a fourth peer through a follower (forwarded to the leader), then start it.
    from tools.rigs.raft_node import free_ports

    new_addr = f"127.0.0.1:{free_ports(1)[0]}"
    r = await follower.call("add_peer", address=new_addr, timeout=10)
    assert r["ok"], r
    newcomer = rigs.node(new_addr, [n.address for n in nodes] + [new_addr])
    await newcomer.start()
    r = await newcomer.call("wait_seq", seq=top, timeout=15)
    assert r["ok"], (r, newcomer.log_tail())
    assert (await newcomer.call("event", message="from-newcomer", timeout=10))["ok"]
    for n in [*nodes, newcomer]:
        st = await n.call("status")
        assert new_addr in st["members"] and len(st["members"]) == 4, st
    peers = (await leader.call("read", what="peers"))["peers"]
    assert new_addr in [p["address"] for p in peers]

    # Remove the leader: it hands leadership over first and names its successor, who
    # performs the removal. The group is 3 again.
    r = await leader.call("remove_peer", address=leader.address, timeout=10)
    assert not r["ok"] and r["error"] == "NotLeader", r
    successor = next(n for n in [*nodes, newcomer] if n.address == r["leader"])
    assert successor is not leader
    r = await successor.call("remove_peer", address=leader.address, timeout=10)
    assert r["ok"], r
    await leader.stop()
    rest = [n for n in [*nodes, newcomer] if n is not leader]
    # The removal was committed by a majority of the 4; the one member outside that majority
    # learns of it with the new leader's next append: wait for it, bounded.
    for n in rest:
        for _ in range(100):
            st = await n.call("status")
            if leader.address not in st["members"] and len(st["members"]) == 3:
                break
            await asyncio.sleep(0.1)
        assert leader.address not in st["members"] and len(st["members"]) == 3, st
    # The replicated peer list follows the membership (the leader reconciles it).
    want = sorted(n.address for n in rest)
    for _ in range(100):
        peers = (await successor.call("read", what="peers"))["peers"]
        if sorted(p["address"] for p in peers) == want:
            break
        await asyncio.sleep(0.05)
    assert sorted(p["address"] for p in peers) == want
    # With 3 members, 2 are a majority: killing the new leader still leaves a working
    # group (under the old 4-member view, 2 of 4 could not commit).
    await successor.kill()
    last = await find_leader([n for n in rest if n is not successor])
    r = await last.call("event", message="after-removal", timeout=10)
    assert r["ok"], r


async def test_lagging_peer_catches_up_from_a_snapshot(rigs):
    # Compaction every 40 entries: by the time the stopped peer returns, the leader no
    # longer has the entries it missed and must send its snapshot.
    nodes = rigs.make(3, compaction=40)
    await asyncio.gather(*(n.start() for n in nodes))
    leader = await find_leader(nodes)
    lagging = next(n for n in nodes if n is not leader)
    await lagging.stop()
    acked = {}
    for i in range(200):
        r = await leader.call("event", message=f"s{i}", timeout=10)
        assert r["ok"], r
        acked[f"s{i}"] = r["seq"]
    r = await leader.call("host", name="node7", state="installed", timeout=10)
    assert r["ok"], r
    await lagging.start()
    await check_has_all(lagging, acked)
    assert (await lagging.call("wait_seq", seq=r["seq"], timeout=15))["ok"]
    events = (await lagging.call("read", what="events"))["events"]
    assert events == (await leader.call("read", what="events"))["events"]
    host = (await lagging.call("read", what="host", name="node7"))["host"]
    assert host["state"] == "installed"
    assert (lagging.data_dir / "raft.dump").exists()
