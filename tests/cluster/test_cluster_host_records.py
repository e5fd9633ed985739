"""Host records and rollouts in the replicated state: what every peer serves and what a new
leader resumes from. Pure apply logic, no network."""

from __future__ import annotations

import pickle

from appliance.cluster import commands
from appliance.cluster.state import ClusterState

R1 = "1" * 40
R2 = "2" * 40


def cmd(op: str, at: float = 1000.0, **fields) -> dict:
    return {"op": op, "op_id": commands.new_op_id(), "at": at, **fields}


def test_arm_steps_and_phone_homes_walk_a_host_to_installed():
    st = ClusterState()
    assert st.apply(cmd("host.arm", name="n1", revision=R1, stages=2, reason="new host"))["ok"]
    rec = st.host("n1")
    assert (rec["state"], rec["done"], rec["stage"], rec["revision"]) == ("queued", 0, 1, R1)
    armed = rec["armed_seq"]
    assert st.apply(cmd("host.step", name="n1", revision=R1, state="booting", stage=1,
                        deadline=2000.0))["ok"]
    r = st.apply(cmd("host.stage_done", name="n1", stage=1, stages=2, revision=R1))
    assert r["done"] == 1 and st.host("n1")["state"] == "booting"
    # the engine may not go back to a stage the host already reported
    late = st.apply(cmd("host.step", name="n1", revision=R1, state="powering", stage=1))
    assert late["error"] == "stage_already_done"
    assert st.apply(cmd("host.step", name="n1", revision=R1, state="booting", stage=2))["ok"]
    st.apply(cmd("host.stage_done", name="n1", stage=2, stages=2, revision=R1))
    rec = st.host("n1")
    assert (rec["state"], rec["done"], rec["armed_seq"]) == ("installed", 2, armed)
    assert st.apply(cmd("host.step", name="n1", revision=R1, state="done", stage=2))["ok"]
    # finished: no more steps for this revision, and arming it again is allowed
    assert st.apply(cmd("host.step", name="n1", revision=R1, state="booting",
                        stage=2))["error"] == "host_finished"
    kinds = [e["kind"] for e in st.events_since(0, 100)["events"]]
    assert kinds == ["host.armed", "host.booting", "host.stage_done", "host.booting",
                     "host.stage_done", "host.done"]


def test_phone_home_never_lowers_done_and_steps_of_another_revision_are_stale():
    st = ClusterState()
    st.apply(cmd("host.arm", name="n1", revision=R1, stages=3))
    early = st.apply(cmd("host.stage_done", name="n1", stage=2, stages=3, revision=R1))
    assert early["error"] == "out_of_order" and st.host("n1")["done"] == 0
    refused = [e for e in st.events_since(0, 100)["events"]
               if e["kind"] == "host.phone_home_refused"]
    assert len(refused) == 1 and refused[0]["host"] == "n1"  # journaled
    st.apply(cmd("host.stage_done", name="n1", stage=1, stages=3, revision=R1))
    st.apply(cmd("host.stage_done", name="n1", stage=2, stages=3, revision=R1))
    events = len(st.events_since(0, 100)["events"])
    replay = st.apply(cmd("host.stage_done", name="n1", stage=1, stages=3, revision=R1))
    assert replay["ok"] and replay["replay"] and st.host("n1")["done"] == 2
    assert len(st.events_since(0, 100)["events"]) == events  # idempotent: nothing new
    assert st.apply(cmd("host.step", name="n1", revision=R2, state="booting",
                        stage=3))["error"] == "stale"
    again = st.apply(cmd("host.arm", name="n1", revision=R1, stages=3))
    assert again["error"] == "already_armed"
    assert st.apply(cmd("host.arm", name="n1", revision=R2, stages=3))["ok"]
    assert st.host("n1")["done"] == 0  # re-armed for the new revision: stage 1 again


def test_a_phone_home_from_a_host_never_armed_creates_its_record():
    st = ClusterState()
    st.apply(cmd("host.stage_done", name="x", stage=1, stages=1, revision=R1))
    rec = st.host("x")
    assert (rec["done"], rec["state"], rec["armed_seq"]) == (1, "done", None)
    # an old-style record (host.set) gains the progress fields on its first phone-home
    st.apply(cmd("host.set", name="y", stage="1", state="in-progress"))
    st.apply(cmd("host.stage_done", name="y", stage=1, stages=2, revision=R1))
    assert st.host("y")["done"] == 1


def test_rollout_lifecycle_and_refused_moves():
    st = ClusterState()
    assert st.apply(cmd("rollout.start", revision=R1, by="engine"))["state"] == "running"
    assert st.apply(cmd("rollout.start", revision=R1))["existing"]
    assert st.apply(cmd("rollout.set", revision=R1, state="paused", by="ops"))["ok"]
    assert st.apply(cmd("rollout.set", revision=R1, state="done"))["error"] == "bad_transition"
    assert st.apply(cmd("rollout.set", revision=R1, state="running", by="ops"))["ok"]
    assert st.apply(cmd("rollout.set", revision=R1, state="aborted", by="ops",
                        reason="wrong image"))["ok"]
    assert st.apply(cmd("rollout.set", revision=R1, state="running"))["error"] == (
        "bad_transition")
    assert st.apply(cmd("rollout.set", revision=R2, state="paused"))["error"] == (
        "unknown_rollout")
    rollout = st.rollout(R1)
    assert [h["state"] for h in rollout["history"]] == ["running", "paused", "running",
                                                        "aborted"]
    assert rollout["reason"] == "wrong image"


def test_host_records_and_rollouts_survive_a_snapshot():
    st = ClusterState()
    st.apply(cmd("rollout.start", revision=R1, base=R2))
    st.apply(cmd("host.arm", name="n1", revision=R1, stages=2))
    back = ClusterState.from_snapshot(pickle.loads(pickle.dumps(st.to_snapshot())))
    assert back.rollout(R1)["base"] == R2
    assert back.host("n1") == st.host("n1")


def test_bad_host_commands_are_refused_before_replication():
    import pytest

    from appliance.cluster.errors import InvalidCommand

    with pytest.raises(InvalidCommand, match="state must be one of"):
        commands.validate(cmd("host.step", name="n", revision=R1, state="dancing", stage=1))
    with pytest.raises(InvalidCommand, match="stages must be an integer"):
        commands.validate(cmd("host.arm", name="n", revision=R1, stages=0))
    with pytest.raises(InvalidCommand, match="deadline"):
        commands.validate(cmd("host.step", name="n", revision=R1, state="booting", stage=1,
                              deadline="soon"))


def test_seen_records_boot_evidence_only_for_known_hosts():
    st = ClusterState()
    assert st.apply(cmd("host.seen", name="ghost", stage=1))["ignored"]
    assert st.host("ghost") is None
    st.apply(cmd("host.arm", name="n1", revision=R1, stages=2))
    assert st.apply(cmd("host.seen", at=1234.5, name="n1", stage=1, revision=R1))["ok"]
    rec = st.host("n1")
    assert (rec["seen_at"], rec["seen_stage"], rec["state"]) == (1234.5, 1, "queued")


def test_a_report_made_for_an_earlier_arming_does_not_count_whatever_the_clocks():
    st = ClusterState()
    first = st.apply(cmd("host.arm", at=100.0, name="n1", revision=R1, stages=2))["seq"]
    st.apply(cmd("host.stage_done", at=150.0, name="n1", stage=1, stages=2, revision=R1,
                 armed_seq=first))
    second = st.apply(cmd("host.arm", at=200.0, name="n1", revision=R2, stages=2))["seq"]
    # a phone-home made under the first arming by a peer cut off from the group, whose
    # clock runs ahead: identity decides, not the timestamp
    late = st.apply(cmd("host.stage_done", at=999.0, name="n1", stage=1, stages=2,
                        revision=R1, armed_seq=first))
    assert late["error"] == "stale_report"
    assert st.host("n1")["done"] == 0
    # and one made under the current arming by a peer whose clock runs behind counts
    assert st.apply(cmd("host.stage_done", at=50.0, name="n1", stage=1, stages=2,
                        revision=R2, armed_seq=second))["ok"]
    assert st.host("n1")["done"] == 1


def test_abort_ends_hosts_in_flight_and_resume_retries_failed_ones_in_the_same_entry():
    st = ClusterState()
    st.apply(cmd("rollout.start", revision=R1))
    for name in ("a", "b", "c"):
        st.apply(cmd("host.arm", name=name, revision=R1, stages=2))
    st.apply(cmd("host.step", name="a", revision=R1, state="failed", stage=1))
    st.apply(cmd("host.stage_done", name="b", stage=1, stages=2, revision=R1))
    st.apply(cmd("host.stage_done", name="b", stage=2, stages=2, revision=R1))
    st.apply(cmd("host.step", name="b", revision=R1, state="done", stage=2))
    st.apply(cmd("rollout.set", revision=R1, state="failed", reason="max_fail"))
    resumed = st.apply(cmd("rollout.set", revision=R1, state="running", by="ops"))
    assert resumed["retried"] == ["a"]
    a = st.host("a")
    assert (a["state"], a["done"], a["attempt"]) == ("queued", 0, 0)
    assert a["armed_seq"] > resumed["seq"]
    aborted = st.apply(cmd("rollout.set", revision=R1, state="aborted", by="ops",
                           reason="wrong image"))
    assert aborted["aborted"] == ["a", "c"]  # b was done: left alone
    assert st.host("c")["state"] == "aborted"
    assert st.host("c")["message"] == "rollout aborted by ops: wrong image"
    assert st.host("b")["state"] == "done"
