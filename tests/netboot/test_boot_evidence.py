"""Boot evidence reaches the replicated state once per host, stage and arming, in batches:
never one Raft entry per script request. The real state machine applies what is submitted."""

from __future__ import annotations

import asyncio

import pytest

from appliance.cluster import commands
from appliance.cluster.errors import InvalidCommand
from appliance.cluster.state import ClusterState
from appliance.netboot.evidence import BootEvidence

R1 = "1" * 40
R2 = "2" * 40


def cmd(op: str, at: float = 1000.0, **fields) -> dict:
    return {"op": op, "op_id": commands.new_op_id(), "at": at, **fields}


class Group:
    """The state machine, applying each submitted entry in order (what the outbox does)."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.entries: list[dict] = []

    def submit(self, entry: dict) -> None:
        self.entries.append(entry)
        assert self.state.apply(entry)["ok"]


async def settle(evidence: BootEvidence) -> None:
    await asyncio.sleep(evidence.interval * 4)


async def test_a_storm_of_script_requests_makes_one_entry_per_batch():
    group = Group()
    for name in ("n1", "n2"):
        group.state.apply(cmd("host.arm", name=name, revision=R1, stages=2))
    evidence = BootEvidence(group.state.host, group.submit, interval=0.02)
    for _ in range(50):  # iPXE retries, reboot loops, a busy boot network
        evidence.served("n1", 1, R1)
        evidence.served("n2", 1, R1)
        evidence.served("ghost", 1, R1)  # never armed: nobody waits for its evidence
    await settle(evidence)
    assert [e["op"] for e in group.entries] == ["hosts.seen"]
    assert sorted(h["name"] for h in group.entries[0]["hosts"]) == ["n1", "n2"]
    assert group.state.host("n1")["seen_stage"] == 1
    assert group.state.host("ghost") is None

    evidence.served("n1", 1, R1)  # nothing new
    await settle(evidence)
    assert len(group.entries) == 1

    evidence.served("n1", 2, R1)  # the next stage is news
    group.state.apply(cmd("host.step", name="n2", revision=R1, state="retrying", stage=1,
                          attempt=1))
    evidence.served("n2", 1, R1)  # so is a retry of the same stage: a new power action
    await settle(evidence)
    assert len(group.entries) == 2
    assert {(h["name"], h["stage"]) for h in group.entries[1]["hosts"]} == {("n1", 2), ("n2", 1)}

    for _ in range(3):  # the generated script tells it loaded the kernel: its own step
        evidence.served("n2", 1, R1, step="loaded")
    await settle(evidence)
    assert len(group.entries) == 3
    assert [(h["name"], h["step"]) for h in group.entries[2]["hosts"]] == [("n2", "loaded")]
    assert group.state.host("n2")["loaded_stage"] == 1

    group.state.apply(cmd("host.arm", at=2000.0, name="n1", revision=R2, stages=2))
    evidence.served("n1", 1, R2)  # re-armed: a new arming
    await settle(evidence)
    assert len(group.entries) == 4
    assert evidence.recorded == 6 and evidence.entries == 4


async def test_large_storms_are_cut_into_bounded_entries():
    group = Group()
    names = [f"h{i}" for i in range(450)]
    for name in names:
        group.state.apply(cmd("host.arm", name=name, revision=R1, stages=1))
    evidence = BootEvidence(group.state.host, group.submit, interval=0.02)
    for name in names:
        evidence.served(name, 1, R1)
    await settle(evidence)
    sizes = [len(e["hosts"]) for e in group.entries]
    assert sizes == [200, 200, 50]
    assert all(group.state.host(n)["seen_stage"] == 1 for n in names)


def test_a_batch_is_validated_like_any_command():
    good = {"name": "n1", "stage": 1, "at": 5.0}
    assert commands.validate(cmd("hosts.seen", hosts=[good]))["hosts"] == [
        {**good, "revision": None, "step": "script"}]
    for bad, message in [
        ([], "list of 1 to"),
        ([good] * (commands.MAX_SEEN_BATCH + 1), "list of 1 to"),
        ([{**good, "stage": 0}], "stage must be an integer"),
        ([{**good, "at": float("nan")}], "at must be a timestamp"),
        ([{**good, "extra": 1}], "each of hosts is an object"),
        ([{**good, "revision": "main"}], "revision must be"),
        ([{**good, "step": "dancing"}], "step must be one of"),
    ]:
        with pytest.raises(InvalidCommand, match=message):
            commands.validate(cmd("hosts.seen", hosts=bad))
