"""Rollout progress from a real plan (two compiled revisions) and host records: who is armed
next, when a batch or wave is finished, when a failure budget halts the rollout."""

from __future__ import annotations

import pytest
from wf_sot import LabHost, write_sot

from appliance.sot.plan import make_plan
from appliance.sot.revision import compile_directory, empty_revision
from appliance.workflow.schedule import progress

HOSTS = [LabHost("etcd-1", "etcd", "52:54:00:77:10:01", "198.18.0.41"),
         LabHost("work-1", "workers", "52:54:00:77:10:02", "198.18.0.42"),
         LabHost("work-2", "workers", "52:54:00:77:10:03", "198.18.0.43"),
         LabHost("work-3", "workers", "52:54:00:77:10:04", "198.18.0.44")]


@pytest.fixture(scope="module")
def revisions(tmp_path_factory):
    root = tmp_path_factory.mktemp("sched")
    blob = root / "blob"
    blob.write_bytes(b"x")
    one, two = root / "one", root / "two"
    write_sot(one, HOSTS, blob, blob, peers=["198.18.0.2"], http_port=8080)
    write_sot(two, HOSTS, blob, blob, peers=["198.18.0.2"], http_port=8080,
              install_note="v2", worker_concurrency=1)
    r1, r2 = compile_directory(str(one)), compile_directory(str(two))
    assert r1.valid and r2.valid, (r1.problems, r2.problems)
    return r1, r2


def rec(rev: str, state: str, done: int = 0, seq: int | None = 1) -> dict:
    return {"revision": rev, "state": state, "done": done, "stages": 2, "stage": done + 1,
            "attempt": 0, "armed_seq": seq, "message": None}


def test_first_install_goes_wave_by_wave_and_batch_by_batch(revisions) -> None:
    r1, _ = revisions
    plan = make_plan(empty_revision(), r1)
    sha = r1.sha
    running = {"state": "running", "base": plan.old}
    p = progress(plan, "lab", {}, running)
    assert p.to_arm == ["etcd-1"]  # workers depend on etcd
    assert [c.state for c in p.clusters] == ["running", "waiting"]
    p = progress(plan, "lab", {"etcd-1": rec(sha, "booting")}, running)
    assert p.to_arm == [] and not p.finished
    p = progress(plan, "lab", {"etcd-1": rec(sha, "done", 2)}, running)
    assert p.to_arm == ["work-1", "work-2"]  # max_concurrent 2
    records = {"etcd-1": rec(sha, "done", 2), "work-1": rec(sha, "done", 2),
               "work-2": rec(sha, "installed", 2)}
    assert progress(plan, "lab", records, running).to_arm == []  # health gate pending
    records["work-2"] = rec(sha, "done", 2)
    p = progress(plan, "lab", records, running)
    assert p.to_arm == ["work-3"] and p.clusters[1].current_batch == 2
    records["work-3"] = rec(sha, "done", 2)
    p = progress(plan, "lab", records, running)
    assert p.finished and p.counts == {"done": 4} and p.to_arm == []


def test_a_failure_over_max_fail_halts_and_arms_nothing(revisions) -> None:
    r1, _ = revisions
    plan = make_plan(empty_revision(), r1)
    sha = r1.sha
    records = {"etcd-1": rec(sha, "done", 2), "work-1": rec(sha, "failed", 0),
               "work-2": rec(sha, "done", 2)}
    p = progress(plan, "lab", records, {"state": "running"})
    assert p.halted == "cluster workers: 1 host(s) failed, max_fail is 0"
    assert p.to_arm == [] and p.clusters[1].state == "failed"
    assert p.to_json()["failed"][0]["host"] == "work-1"


def test_an_update_reinstalls_only_changed_hosts_one_at_a_time(revisions) -> None:
    r1, r2 = revisions
    plan = make_plan(r1, r2)
    old = {h.name: rec(r1.sha, "done", 2) for h in HOSTS}
    p = progress(plan, "lab", old, {"state": "running"})
    assert [c.cluster for c in p.clusters] == ["workers"]  # etcd did not change
    assert [[h.host for h in b] for b in p.clusters[0].batches] == [
        ["work-1"], ["work-2"], ["work-3"]]
    assert p.to_arm == ["work-1"]
    # a host of the new revision that was never armed but installed itself (it booted on
    # its own and reported every stage) counts as done; one part way is armed in its turn
    old["work-1"] = rec(r2.sha, "done", 2, seq=None)
    old["work-2"] = rec(r2.sha, "booting", 1, seq=None)
    p = progress(plan, "lab", old, {"state": "running"})
    assert p.to_arm == ["work-2"]


def test_work_done_under_an_earlier_revision_counts_only_if_it_installs_the_same(
        revisions) -> None:
    r1, r2 = revisions  # r2 changes the workers' install, not etcd's
    plan = make_plan(empty_revision(), r2)  # a rollout carrying r1's unfinished work
    fps = {r1.sha: r1.result.fingerprints, r2.sha: r2.result.fingerprints}

    def same_install(host: str, rev: str) -> bool:
        return fps[rev][host].install == fps[r2.sha][host].install

    records = {"etcd-1": rec(r1.sha, "done", 2), "work-1": rec(r1.sha, "done", 2)}
    p = progress(plan, "lab", records, {"state": "running"}, same_install)
    hosts = {h.host: h.status for c in p.clusters for b in c.batches for h in b}
    assert hosts["etcd-1"] == "done"  # r1 installed what r2 would: not redone
    assert hosts["work-1"] == "pending"  # r2 installs something else on it
    assert p.to_arm == ["work-1"]
    records["etcd-1"] = rec(r1.sha, "booting", 1)  # in flight under r1: waited for
    assert progress(plan, "lab", records, {"state": "running"}, same_install).to_arm == []
    records["etcd-1"] = rec(r1.sha, "failed", 0)  # failed under r1: tried again
    assert progress(plan, "lab", records, {"state": "running"}, same_install).to_arm == [
        "etcd-1"]
