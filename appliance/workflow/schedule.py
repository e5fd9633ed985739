"""Where a rollout stands, and which hosts may be armed next: a pure function of the plan
(itself a pure function of the two SHAs) and the replicated host records.

Nothing here is stored: every peer (the API) and every new leader (the engine) derives the
same progress from the same replica, so there is no second copy of the rollout to drift.

Rules (the plan's batches already honour `max_concurrent` and `min_standing`):
- a cluster's batches run one after another: the next one is armed only when every host of
  the previous one is finished (done, failed or aborted);
- a wave (clusters whose workflows sit at the same depth of `depends_on`) starts only when
  every cluster of the earlier waves is finished: etcd before workers;
- a cluster with more failed hosts than its `max_fail` halts the rollout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.cluster.commands import HOST_TERMINAL
from appliance.cluster.records import HostRecord, RolloutRecord
from appliance.sot.plan import Plan

PENDING = "pending"  # in the plan, not armed for this revision yet


@dataclass
class HostProgress:
    host: str
    status: str  # pending, or the record's state (queued, booting, ..., done, failed)
    stage: int | str = 0  # text only in a record written by the old host.set
    done: int = 0
    stages: int = 0
    attempt: int = 0
    message: str | None = None


@dataclass
class ClusterProgress:
    cluster: str
    workflow: str
    wave: int
    max_fail: int
    batches: list[list[HostProgress]]
    current_batch: int | None = None  # 1-based; None when every batch is finished
    failures: int = 0
    state: str = "waiting"  # waiting (for an earlier wave), running, done, failed
    counts: dict[str, int] = field(default_factory=dict)  # "booting stage 2": 1, "done": 3


@dataclass
class RolloutProgress:
    revision: str
    base: str | None
    state: str
    clusters: list[ClusterProgress] = field(default_factory=list)
    to_arm: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    finished: bool = False  # every planned host is done, failed or aborted
    halted: str | None = None  # why the rollout must stop (a cluster over its failure budget)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["failed"] = [{"host": h.host, "cluster": c.cluster, "stage": h.stage,
                          "message": h.message}
                         for c in self.clusters for b in c.batches for h in b
                         if h.status in ("failed", "aborted")]
        return out


def _host(name: str, record: HostRecord | None, revision: str,
          same_install: Callable[[str, str], bool]) -> HostProgress:
    held = record.get("revision") if record is not None else None
    if record is not None and held is not None and held != revision and (
            record.get("armed_seq") is not None or record.get("state") == "done"):
        # armed or done under an earlier revision that installs exactly the same on this
        # host (a superseded rollout's work): it counts, in flight or done; failed is retried
        if record.get("state") not in ("failed", "aborted") and same_install(name, held):
            return HostProgress(name, record.get("state") or "queued", record.get("stage") or 0,
                                record.get("done") or 0, record.get("stages") or 0,
                                record.get("attempt") or 0, record.get("message"))
        return HostProgress(name, PENDING)
    if record is None or record.get("revision") != revision:
        return HostProgress(name, PENDING)
    if record.get("armed_seq") is None and record.get("state") != "done":
        return HostProgress(name, PENDING)  # booted by itself part way: armed in its turn
    return HostProgress(name, record.get("state") or "queued", record.get("stage") or 0,
                        record.get("done") or 0, record.get("stages") or 0,
                        record.get("attempt") or 0, record.get("message"))


def progress(plan: Plan, site: str, records: dict[str, HostRecord], rollout: RolloutRecord | None,
             same_install: Callable[[str, str], bool] = lambda host, rev: False
             ) -> RolloutProgress:
    """The rollout of `plan.new` in `site`, given the host records of the replica.
    `same_install(host, sha)`: whether revision `sha` installs on `host` exactly what
    `plan.new` does (a rollout carrying a superseded one's unfinished work counts what that
    one already did)."""
    revision = plan.new
    state = rollout["state"] if rollout else "not started"
    out = RolloutProgress(revision, rollout.get("base") if rollout else plan.old, state)
    earlier_finished = True
    for wave in plan.waves.get(site, []):
        wave_finished = True
        for cr in wave.clusters:
            cp = ClusterProgress(cr.cluster, cr.workflow, wave.index,
                                 int(cr.policy.get("max_fail", 0)),
                                 [[_host(h, records.get(h), revision, same_install)
                                   for h in batch]
                                  for batch in cr.batches])
            for i, batch in enumerate(cp.batches, start=1):
                cp.failures += sum(1 for h in batch if h.status == "failed")
                if cp.current_batch is None and any(
                        h.status not in HOST_TERMINAL for h in batch):
                    cp.current_batch = i
            if cp.failures > cp.max_fail:
                cp.state = "failed"
                out.halted = out.halted or (
                    f"cluster {cr.cluster}: {cp.failures} host(s) failed, max_fail is "
                    f"{cp.max_fail}")
            elif cp.current_batch is None:
                cp.state = "done"
            elif earlier_finished:
                cp.state = "running"
                out.to_arm += [h.host for h in cp.batches[cp.current_batch - 1]
                               if h.status == PENDING]
            if cp.current_batch is not None:
                wave_finished = False
            out.clusters.append(cp)
        earlier_finished = earlier_finished and wave_finished
    for cp in out.clusters:
        for batch in cp.batches:
            for h in batch:
                out.counts[h.status] = out.counts.get(h.status, 0) + 1
                key = (h.status if h.status in ("pending", "done") or not h.stages
                       else f"{h.status} stage {h.stage}")
                cp.counts[key] = cp.counts.get(key, 0) + 1
    out.finished = all(cp.current_batch is None for cp in out.clusters)
    if out.halted:
        out.to_arm = []
    return out
