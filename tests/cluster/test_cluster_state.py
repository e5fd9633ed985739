"""The replicated state machine's apply logic: deterministic, no network, no threads."""

from __future__ import annotations

import pickle
import random

import pytest

from appliance.cluster import commands
from appliance.cluster.commands import HostState
from appliance.cluster.errors import InvalidCommand
from appliance.cluster.intents import IntentOutcome, outcome, unknown_detail
from appliance.cluster.state import ClusterState

SHA1 = "a" * 40
SHA2 = "b" * 40
SHA3 = "c" * 64


def cmd(op: str, at: float = 1000.0, op_id: str | None = None, **fields) -> dict:
    c = {"op": op, "op_id": op_id or commands.new_op_id(), "at": at}
    c.update(fields)
    return c


def walk(state: ClusterState, sha: str, *states: str, at: float = 1000.0) -> None:
    for s in states:
        result = state.apply(cmd("revision.transition", at=at, sha=sha, state=s, by="ci"))
        assert result["ok"], result


def test_revision_lifecycle_records_history_and_events():
    st = ClusterState()
    assert st.apply(cmd("revision.observe", at=1.0, sha=SHA1, source="main"))["ok"]
    walk(st, SHA1, "validated", "planned", at=2.0)
    r = st.apply(cmd("revision.transition", at=3.0, sha=SHA1, state="awaiting_approval",
                     approvals_required=2, summary={"hosts_changed": 3}))
    assert r == {"ok": True, "state": "awaiting_approval", "previous": "planned", "seq": 4}
    assert st.apply(cmd("revision.approve", at=4.0, sha=SHA1, by="alice"))["state"] == (
        "awaiting_approval")
    dup = st.apply(cmd("revision.approve", at=4.5, sha=SHA1, by="alice"))
    assert dup["error"] == "already_approved"
    assert st.apply(cmd("revision.approve", at=5.0, sha=SHA1, by="bob"))["state"] == "approved"
    rev = st.revision(SHA1)
    assert rev["state"] == "approved"
    assert [a["by"] for a in rev["approvals"]] == ["alice", "bob"]
    assert rev["summaries"]["awaiting_approval"] == {"hosts_changed": 3}
    assert [h["state"] for h in rev["history"]] == [
        "observed", "validated", "planned", "awaiting_approval", "approved"]
    kinds = [e["kind"] for e in st.events_since(0)["events"]]
    assert kinds[0] == "revision.observed" and kinds[-1] == "revision.approved"


def test_bad_transition_is_refused_and_leaves_state_unchanged():
    st = ClusterState()
    st.apply(cmd("revision.observe", sha=SHA1))
    before = pickle.dumps(st.to_snapshot()["revisions"])
    r = st.apply(cmd("revision.transition", sha=SHA1, state="applied"))
    assert r["ok"] is False and r["error"] == "bad_transition"
    assert pickle.dumps(st.to_snapshot()["revisions"]) == before
    assert st.apply(cmd("revision.transition", sha=SHA2, state="validated"))["error"] == (
        "unknown_revision")
    assert st.apply(cmd("revision.approve", sha=SHA1, by="x"))["error"] == "not_awaiting_approval"


def test_applying_a_revision_supersedes_the_previous_one():
    st = ClusterState()
    for sha in (SHA1, SHA3):
        st.apply(cmd("revision.observe", sha=sha))
        walk(st, sha, "validated", "planned", "approved", "applying", "applied")
    assert st.applied_sha == SHA3
    assert st.revision(SHA1)["state"] == "superseded"
    assert st.revision(SHA3)["state"] == "applied"


def test_duplicate_op_id_is_applied_once_and_returns_first_result():
    st = ClusterState()
    c = cmd("event.append", kind="boot", host="n1", message="dhcp offer")
    first = st.apply(c)
    again = st.apply(dict(c))
    assert again == dict(first, duplicate=True)
    assert len(st.events) == 1


def test_invalid_commands_are_refused_by_validate_and_by_apply():
    bad = [
        {"op": "nope", "op_id": "x", "at": 1},
        cmd("revision.observe", sha="XYZ"),
        cmd("revision.observe", sha=SHA1, extra=1),
        cmd("host.set"),
        cmd("event.append", kind="k", data={"blob": "x" * 5000}),
        cmd("event.append", kind="k", data={"f": float("nan")}),
        cmd("intent.result", intent_id="i", ok="yes"),
        {"op": "event.append", "op_id": "x", "at": float("inf"), "kind": "k"},
        cmd("peers.set", peers=[{"address": "a:1"}, {"address": "a:1"}]),
    ]
    st = ClusterState()
    for c in bad:
        with pytest.raises(InvalidCommand):
            commands.validate(c)
        assert st.apply(c)["error"] == "invalid"
    assert st.next_seq == 1 and not st.revisions


def test_host_records_merge_partial_updates():
    st = ClusterState()
    st.apply(cmd("host.set", at=1.0, name="node1", stage="install", state="booting"))
    st.apply(cmd("host.set", at=2.0, name="node1", state="installed", revision=SHA1))
    assert st.host("node1") == {"name": "node1", "stage": "install", "state": "installed",
                                "last_event": None, "revision": SHA1, "updated_at": 2.0}


def test_intents_without_result_are_pending_and_old_terms_are_fenced():
    st = ClusterState()
    assert st.apply(cmd("intent.record", intent_id="i1", host="n1", action="power_on",
                        stage="install", term=3))["ok"]
    assert st.apply(cmd("intent.record", intent_id="i2", host="n2", action="power_on",
                        term=3))["ok"]
    assert st.apply(cmd("intent.result", intent_id="i1", ok=True, detail="done"))["ok"]
    assert [i["intent_id"] for i in st.pending_intents()] == ["i2"]
    assert st.apply(cmd("intent.result", intent_id="i1", ok=False))["error"] == "result_exists"
    assert st.apply(cmd("intent.result", intent_id="zz", ok=True))["error"] == "unknown_intent"
    # A newer leader (term 5) records an intent: the old leader's (term 3) are refused.
    assert st.apply(cmd("intent.record", intent_id="i3", host="n1", action="reboot",
                        term=5))["ok"]
    assert st.apply(cmd("intent.record", intent_id="i4", host="n1", action="reboot",
                        term=3))["error"] == "fenced"


def test_event_ring_is_bounded_and_pages_by_sequence():
    st = ClusterState(event_capacity=50)
    for i in range(120):
        st.apply(cmd("event.append", kind="tick", message=str(i)))
    page = st.events_since(0, limit=10)
    assert page["first_seq"] == 71 and page["last_seq"] == 120
    assert [e["seq"] for e in page["events"]] == list(range(71, 81))
    page = st.events_since(100, limit=500)
    assert [e["seq"] for e in page["events"]] == list(range(101, 121))
    assert st.events_since(120)["events"] == []


def test_completed_intents_and_revisions_are_bounded():
    st = ClusterState(completed_intent_capacity=5, revision_capacity=3)
    for i in range(10):
        st.apply(cmd("intent.record", intent_id=f"i{i}", host="h", action="a", term=1))
        st.apply(cmd("intent.result", intent_id=f"i{i}", ok=True))
    assert sorted(st.intents) == [f"i{i}" for i in range(5, 10)]
    for i in range(6):
        sha = f"{i:040x}"
        st.apply(cmd("revision.observe", sha=sha))
        st.apply(cmd("revision.transition", sha=sha, state="rejected"))
    assert len(st.revisions) == 3


def test_peers():
    st = ClusterState()
    st.apply(cmd("peers.set", peers=[{"address": "10.0.0.1:4321", "name": "p1"},
                                     {"address": "10.0.0.2:4321"}]))
    st.apply(cmd("peer.add", address="10.0.0.3:4321", api_url="https://p3"))
    assert st.apply(cmd("peer.remove", address="10.0.0.1:4321"))["ok"]
    assert st.apply(cmd("peer.remove", address="10.0.0.1:4321"))["error"] == "unknown_peer"
    assert sorted(p["address"] for p in st.peer_list()) == ["10.0.0.2:4321", "10.0.0.3:4321"]


def test_peer_added_once_per_peer_however_often_it_announces():
    st = ClusterState()

    def added() -> list[str]:
        return [e["message"] for e in st.events if e["kind"] == "peer.added"]

    # first start: the leader lists the members before they announce themselves
    st.apply(cmd("peers.set", peers=[{"address": "10.0.0.1:4321"}, {"address": "10.0.0.2:4321"}]))
    for start in range(3):  # every start of every peer announces it again
        for n in (1, 2):
            r = st.apply(cmd("peer.add", at=2000.0 + start, address=f"10.0.0.{n}:4321",
                             name=f"p{n}", api_url=f"http://10.0.0.{n}:{8080 + start}"))
            assert r["ok"], r
        # a leader change reconciles the list again: who joined stays joined
        st.apply(cmd("peers.set", peers=st.peer_list()))
    # an operator adds a peer without a name; the peer then announces itself
    st.apply(cmd("peer.add", address="10.0.0.3:4321"))
    st.apply(cmd("peer.add", address="10.0.0.3:4321", name="p3", api_url="http://p3"))
    assert added() == ["10.0.0.1:4321", "10.0.0.2:4321", "10.0.0.3:4321"]
    listed = {p["address"]: p for p in st.peer_list()}
    assert listed["10.0.0.2:4321"]["api_url"] == "http://10.0.0.2:8082"  # kept up to date
    assert listed["10.0.0.3:4321"]["name"] == "p3"
    # removed and added again is a new join
    st.apply(cmd("peer.remove", address="10.0.0.3:4321"))
    st.apply(cmd("peer.add", address="10.0.0.3:4321", name="p3"))
    assert added().count("10.0.0.3:4321") == 2


def _random_commands(rng: random.Random, n: int) -> list[dict]:
    out = []
    shas = [f"{i:040x}" for i in range(8)]
    for i in range(n):
        at = 1000.0 + i
        kind = rng.randrange(6)
        if kind == 0:
            out.append(cmd("revision.observe", at, sha=rng.choice(shas)))
        elif kind == 1:
            out.append(cmd("revision.transition", at, sha=rng.choice(shas),
                           state=rng.choice(commands.REVISION_STATES)))
        elif kind == 2:
            out.append(cmd("host.set", at, name=f"h{rng.randrange(5)}", state="s"))
        elif kind == 3:
            out.append(cmd("intent.record", at, intent_id=f"i{rng.randrange(40)}", host="h",
                           action="a", term=rng.randrange(4)))
        elif kind == 4:
            out.append(cmd("intent.result", at, intent_id=f"i{rng.randrange(40)}", ok=True))
        else:
            out.append(cmd("event.append", at, kind="x", data={"i": i}))
        if rng.random() < 0.1:
            out.append(dict(out[-1]))  # a retried submission
    return out


def test_apply_is_deterministic_and_snapshots_round_trip():
    log = _random_commands(random.Random(7), 600)
    a, b = ClusterState(event_capacity=200), ClusterState(event_capacity=200)
    results_a = [a.apply(c) for c in log]
    # b restarts halfway from a snapshot, as a peer would after log compaction.
    for c in log[:300]:
        b.apply(c)
    b = ClusterState.from_snapshot(pickle.loads(pickle.dumps(b.to_snapshot())))
    results_b = [b.apply(c) for c in log[300:]]
    assert results_a[300:] == results_b
    assert a.to_snapshot() == b.to_snapshot()
    assert any(not r["ok"] for r in results_a) and any(r["ok"] for r in results_a)


def test_a_state_given_as_its_enum_is_replicated_as_the_plain_string() -> None:
    """Raft entries and snapshots are pickled: an enum member in one would tie the journal to
    today's class names. validate() stores the plain value."""
    built = commands.build("host.step", 1.0, name="n1", revision=SHA1, state=HostState.BOOTING,
                           stage=1)
    assert type(built["state"]) is str and built["state"] == "booting"
    assert b"appliance" not in pickle.dumps(built)
    st = ClusterState()
    st.apply(cmd("revision.observe", sha=SHA1))
    st.apply(cmd("revision.transition", sha=SHA1, state=commands.RevisionState.VALIDATED))
    assert b"appliance" not in pickle.dumps(st.to_snapshot())
    assert st.revision(SHA1)["state"] == "validated"


def test_an_intent_outcome_is_read_from_the_record() -> None:
    st = ClusterState()
    for iid in ("a", "b", "c", "d"):
        st.apply(cmd("intent.record", intent_id=iid, host="n1", action="power.boot", term=1))
    st.apply(cmd("intent.result", intent_id="a", ok=True, detail="power on"))
    st.apply(cmd("intent.result", intent_id="b", ok=False, detail="boot: IpmiError: timeout"))
    st.apply(cmd("intent.result", intent_id="c", ok=False,
                 detail=unknown_detail("the leader running it stopped; not repeated")))
    assert [outcome(st.intent(i)) for i in ("a", "b", "c", "d", "zz")] == [
        IntentOutcome.OK, IntentOutcome.FAILED, IntentOutcome.UNKNOWN, IntentOutcome.PENDING,
        None]
    # the text a previous version wrote for it reads the same
    assert st.intent("c")["result"]["detail"].startswith("outcome unknown: ")


def test_every_operation_is_checked_and_handled() -> None:
    for op, operation in commands.OPERATIONS.items():
        assert callable(operation.check), op
        assert callable(getattr(ClusterState, operation.handler)), op
