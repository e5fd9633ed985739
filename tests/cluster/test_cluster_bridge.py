"""The asyncio bridge with real pysyncobj nodes inside this process (loopback): typed
writes, rejections, persistence through snapshots and journal, leader-only operations,
read-your-writes on followers, long-poll of events, refusal without quorum."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from appliance.cluster import (
    Cluster,
    ClusterSettings,
    ClusterStartError,
    CommandRejected,
    EventOutbox,
    InvalidCommand,
    NoQuorum,
    NotLeader,
)
from tools.rigs.raft_node import free_ports

SHA = "0123456789abcdef0123456789abcdef01234567"
SHA2 = "fedcba9876543210fedcba9876543210fedcba98"


def settings(tmp_path: Path, password_file: Path, address: str, peers: list[str],
             **kw) -> ClusterSettings:
    name = address.rsplit(":", 1)[1]
    return ClusterSettings(address, tuple(peers), tmp_path / name, password_file, **kw)


@pytest.fixture
async def started():
    clusters: list[Cluster] = []

    async def start(s: ClusterSettings) -> Cluster:
        c = Cluster(s)
        await c.start()
        clusters.append(c)
        return c

    try:
        yield start
    finally:
        for c in clusters:
            await c.stop()


async def test_single_peer_lifecycle_survives_restart_through_snapshots(
        tmp_path, password_file, started):
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    s = settings(tmp_path, password_file, addr, [addr], log_compaction_entries=20)
    c = await started(s)
    await c.wait_for_leader(10)
    await c.observe_revision(SHA, source="main")
    for state in ("validated", "planned"):
        await c.transition_revision(SHA, state, by="ci")
    await c.transition_revision(SHA, "awaiting_approval", summary={"hosts": 2})
    await c.approve_revision(SHA, by="alice", note="lgtm")
    await c.set_host("node1", stage="install", state="booting", revision=SHA)
    done = await c.record_intent("node1", "power_on", stage="install", revision=SHA)
    pending = await c.record_intent("node2", "power_on", stage="install", revision=SHA)
    await c.record_result(done, ok=True, detail="chassis on")
    for i in range(60):  # enough entries to trigger several snapshots
        await c.append_event("boot", host="node1", message=f"e{i}")
    before = (c.revision(SHA), c.hosts(), c.pending_intents(), c.events_since(0, 1000))
    assert before[0]["state"] == "approved" and before[0]["approvals"][0]["by"] == "alice"
    assert [i["intent_id"] for i in before[2]] == [pending]
    assert (tmp_path / addr.rsplit(":", 1)[1] / "raft.dump").exists()
    await c.stop()

    c2 = await started(s)
    await c2.wait_for_leader(10)
    after = (c2.revision(SHA), c2.hosts(), c2.pending_intents(), c2.events_since(0, 1000))
    assert after == before


async def test_invalid_and_rejected_commands(tmp_path, password_file, started):
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    c = await started(settings(tmp_path, password_file, addr, [addr]))
    await c.wait_for_leader(10)
    with pytest.raises(InvalidCommand):
        await c.observe_revision("not-a-sha")
    with pytest.raises(InvalidCommand):
        await c.append_event("x", data={"big": "y" * 10_000})
    await c.observe_revision(SHA)
    with pytest.raises(CommandRejected) as exc:
        await c.transition_revision(SHA, "applied")
    assert exc.value.code == "bad_transition"
    assert c.revision(SHA)["state"] == "observed"
    with pytest.raises(CommandRejected):
        await c.record_result("nope", ok=True)


async def test_three_peers_in_process(tmp_path, password_file, started):
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    cs = await asyncio.gather(*(started(settings(tmp_path, password_file, a, addrs))
                                for a in addrs))
    leader_addr = await cs[0].wait_for_leader(10)
    for c in cs:
        assert await c.wait_for_leader(10) == leader_addr
    leader = next(c for c in cs if c.settings.self_address == leader_addr)
    follower = next(c for c in cs if c is not leader)

    details = await follower.raft_details()
    assert details["leader"] == leader_addr and details["partner_nodes_count"] == 2

    # Leader-only operation on a follower names the leader.
    with pytest.raises(NotLeader) as exc:
        await follower.record_intent("node1", "power_cycle")
    assert exc.value.leader == leader_addr

    # A follower's write is forwarded, and readable on that follower once acknowledged.
    start = leader.events_since(0)["last_seq"]
    waiter = asyncio.create_task(leader.follow_events(start, timeout=10))
    await follower.observe_revision(SHA2)
    assert follower.revision(SHA2)["state"] == "observed"
    page = await waiter  # the long-poll woke up with new events
    seen, after = list(page["events"]), page["events"][-1]["seq"]
    for _ in range(20):  # the leader may also have logged its peer list meanwhile
        if any(e.get("revision") == SHA2 for e in seen):
            break
        page = await leader.follow_events(after, timeout=5)
        seen += page["events"]
        after = page["last_seq"]
    assert [e["kind"] for e in seen if e.get("revision") == SHA2] == ["revision.observed"]

    # The leader records intents with its term; a result closes them on every replica.
    intent = await leader.record_intent("node1", "power_cycle", stage="install")
    assert follower.status.term == leader.status.term
    await follower.record_result(intent, ok=False, detail="bmc timeout")
    last = max(c.events_since(0)["last_seq"] for c in cs)
    for c in cs:
        page = await c.follow_events(last - 1, timeout=10)
        assert page["last_seq"] == last
        assert c.intent(intent)["result"]["ok"] is False


async def test_no_quorum_is_refused_immediately(tmp_path, password_file, started):
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    lonely = await started(settings(tmp_path, password_file, addrs[0], addrs))
    with pytest.raises(NoQuorum):
        await lonely.append_event("x", message="no majority", timeout=5)
    assert lonely.events_since(0)["events"] == []


async def test_raft_port_listens_on_the_peer_address_only(tmp_path, password_file, started):
    port = free_ports(1)[0]
    addr = f"127.0.0.1:{port}"
    await started(settings(tmp_path, password_file, addr, [addr]))
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # pysyncobj alone would bind 0.0.0.0 and answer on every address of the host.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=2).close()


async def test_peer_with_the_wrong_password_gets_nothing(tmp_path, password_file, started):
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    other_password = tmp_path / "other.password"
    other_password.write_text("not-the-group-secret\n")
    other_password.chmod(0o600)
    good = [await started(settings(tmp_path, password_file, a, addrs)) for a in addrs[:2]]
    intruder = await started(settings(tmp_path, other_password, addrs[2], addrs))
    await good[0].wait_for_leader(10)
    seq = await good[0].append_event("x", message="secret-free but private")
    page = await good[1].follow_events(seq - 1, timeout=10)
    assert page["last_seq"] == seq
    await asyncio.sleep(1.0)  # many heartbeats and reconnect attempts
    assert intruder.events_since(0)["events"] == []
    assert intruder.status.leader is None
    for g in good:
        assert addrs[2] not in g.status.connected


async def test_start_failures_are_clear(tmp_path, password_file):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    addr = f"127.0.0.1:{taken.getsockname()[1]}"
    try:
        with pytest.raises(ClusterStartError, match="cannot bind"):
            await Cluster(settings(tmp_path, password_file, addr, [addr])).start()
    finally:
        taken.close()
    missing = tmp_path / "no-such-password"
    with pytest.raises(ClusterStartError, match="password file"):
        await Cluster(settings(tmp_path, missing, addr, [addr])).start()


async def test_outbox_keeps_events_until_a_majority_is_back(tmp_path, password_file, started):
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    first = await started(settings(tmp_path, password_file, addrs[0], addrs))
    outbox = EventOutbox(first, retry=0.05)
    drain = asyncio.create_task(outbox.run())
    try:
        for i in range(5):
            outbox.put("dhcp.unknown_mac", message=f"52:54:00:00:00:0{i}")
        await asyncio.sleep(0.5)  # nothing can commit: 1 of 3 peers
        assert len(outbox) == 5 and first.events_since(0)["events"] == []
        await asyncio.gather(*(started(settings(tmp_path, password_file, a, addrs))
                               for a in addrs[1:]))
        for _ in range(200):
            if not len(outbox):
                break
            await asyncio.sleep(0.05)
        assert len(outbox) == 0 and outbox.sent == 5
        events = [e for e in first.events_since(0)["events"] if e["kind"] == "dhcp.unknown_mac"]
        assert [e["message"] for e in events] == [f"52:54:00:00:00:0{i}" for i in range(5)]
    finally:
        drain.cancel()
