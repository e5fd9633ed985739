"""Boot evidence reaches the replicated state in batches, a host's repeats at most once per
hold and never lost: never one Raft entry per script request. The real state machine
applies what is submitted."""

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
    evidence = BootEvidence(group.state.host, group.submit, interval=0.02, hold=0.3)
    for _ in range(50):  # iPXE retries, a busy boot network
        evidence.served("n1", 1, R1)
        evidence.served("n2", 1, R1)
    evidence.served("ghost", 1, R1)  # not armed here: told anyway (replicas may lag)
    await settle(evidence)
    assert [e["op"] for e in group.entries] == ["hosts.seen"]
    assert sorted(h["name"] for h in group.entries[0]["hosts"]) == ["ghost", "n1", "n2"]
    assert group.state.host("n1")["seen_stage"] == 1
    assert group.state.host("ghost") is None  # the state machine ignores it

    evidence.served("n1", 2, R1)  # the next stage is news: told at once
    group.state.apply(cmd("host.step", name="n2", revision=R1, state="retrying", stage=1,
                          attempt=1))
    evidence.served("n2", 1, R1)  # so is a retry of the same stage: a new power action
    await settle(evidence)
    assert len(group.entries) == 2
    assert {(h["name"], h["stage"]) for h in group.entries[1]["hosts"]} == {("n1", 2), ("n2", 1)}

    evidence.served("n2", 1, R1, step="loaded")  # the generated script's mark: its own step
    await settle(evidence)
    assert len(group.entries) == 3
    assert [(h["name"], h["step"]) for h in group.entries[2]["hosts"]] == [("n2", "loaded")]
    assert group.state.host("n2")["loaded_stage"] == 1

    # a repeat within the hold is not lost: told once when the hold ends (a replica that
    # lags the leader cannot tell a reboot for a new power action from a retry)
    evidence.served("n1", 2, R1)
    await settle(evidence)
    assert len(group.entries) == 3
    await asyncio.sleep(0.5)
    assert len(group.entries) == 4
    assert [(h["name"], h["stage"]) for h in group.entries[3]["hosts"]] == [("n1", 2)]
    await asyncio.sleep(0.5)
    assert len(group.entries) == 4  # nothing more to tell
    assert evidence.recorded == 7 and evidence.entries == 4


async def test_large_storms_are_cut_into_bounded_entries():
    group = Group()
    names = [f"h{i}" for i in range(450)]
    for name in names:
        group.state.apply(cmd("host.arm", name=name, revision=R1, stages=1))
    evidence = BootEvidence(group.state.host, group.submit, interval=0.02, hold=0.3)
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
