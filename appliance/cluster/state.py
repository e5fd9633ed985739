"""The replicated state: a deterministic function of the committed log.

Every peer applies the same commands in the same order and must end in the same state, so
apply never reads a clock, a random source, the network or a file: timestamps come in the
command. A refused command (bad transition, fenced intent) still occupies its log slot but
leaves the state unchanged, so every check happens before the first mutation. Nothing here
knows about Raft or threads; the raft module serialises access.
"""

from __future__ import annotations

import copy
from collections import OrderedDict, deque
from typing import Any

from appliance.cluster import commands
from appliance.cluster.commands import HostState, RevisionState, RolloutState
from appliance.cluster.errors import InvalidCommand
from appliance.cluster.intents import IntentRecord
from appliance.cluster.records import (
    EventPage,
    EventRecord,
    HostRecord,
    PeerRecord,
    RevisionRecord,
    RolloutRecord,
)

SNAPSHOT_FORMAT = 1
HISTORY_LIMIT = 32


class _Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ClusterState:
    """Revision lifecycle, approvals, hosts, rollouts, intents/results, event ring, peers."""

    def __init__(
        self,
        *,
        event_capacity: int = 10_000,
        dedupe_capacity: int = 10_000,
        completed_intent_capacity: int = 10_000,
        revision_capacity: int = 2_000,
    ) -> None:
        self.event_capacity = event_capacity
        self.dedupe_capacity = dedupe_capacity
        self.completed_intent_capacity = completed_intent_capacity
        self.revision_capacity = revision_capacity
        self.revisions: dict[str, RevisionRecord] = {}
        self.applied_sha: str | None = None
        self.hosts: dict[str, HostRecord] = {}
        self.rollouts: dict[str, RolloutRecord] = {}
        self.intents: dict[str, IntentRecord] = {}
        self.completed_intents: deque[str] = deque()
        self.fence_term = 0
        self.events: deque[EventRecord] = deque(maxlen=event_capacity)
        self.next_seq = 1
        self.peers: dict[str, PeerRecord] = {}
        self.applied_ops: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.applied_count = 0
        # site -> its last accepted signed summary; revision -> gate override (federation)
        self.federation: dict[str, dict[str, Any]] = {"summaries": {}, "overrides": {}}

    # ---- apply -------------------------------------------------------------------------

    def apply(self, raw: Any) -> dict:
        """Apply one committed command and return its small result (never raises)."""
        self.applied_count += 1
        try:
            cmd = commands.validate(raw)
        except InvalidCommand as exc:
            return {"ok": False, "error": "invalid", "message": str(exc)}
        done = self.applied_ops.get(cmd["op_id"])
        if done is not None:
            return dict(done, duplicate=True)
        try:
            result = _HANDLERS[cmd["op"]](self, cmd)
        except _Reject as exc:
            result = {"ok": False, "error": exc.code, "message": exc.message}
        self.applied_ops[cmd["op_id"]] = result
        while len(self.applied_ops) > self.dedupe_capacity:
            self.applied_ops.popitem(last=False)
        return result

    def _emit(self, at: float, kind: str, *, host: str | None = None,
              revision: str | None = None, message: str | None = None,
              data: dict[str, Any] | None = None) -> int:
        seq = self.next_seq
        self.next_seq += 1
        event: EventRecord = {"seq": seq, "at": at, "kind": kind}
        # in this order, and only those given (every caller passes them in this order)
        if host is not None:
            event["host"] = host
        if revision is not None:
            event["revision"] = revision
        if message is not None:
            event["message"] = message
        if data is not None:
            event["data"] = data
        self.events.append(event)
        return seq

    def _revision(self, sha: str) -> RevisionRecord:
        rev = self.revisions.get(sha)
        if rev is None:
            raise _Reject("unknown_revision", f"revision {sha} was never observed")
        return rev

    def _set_state(self, rev: RevisionRecord, state: str, at: float, by: str | None,
                   reason: str | None) -> None:
        rev["state"] = state
        rev["updated_at"] = at
        rev["history"].append({"state": state, "at": at, "by": by, "reason": reason})
        del rev["history"][:-HISTORY_LIMIT]

    def _observe(self, cmd: dict[str, Any]) -> dict[str, Any]:
        sha = cmd["sha"]
        if sha in self.revisions:
            return {"ok": True, "existing": True, "state": self.revisions[sha]["state"]}
        self.revisions[sha] = {
            "sha": sha,
            "state": RevisionState.OBSERVED.value,
            "source": cmd["source"],
            "observed_at": cmd["at"],
            "updated_at": cmd["at"],
            "history": [{"state": RevisionState.OBSERVED.value, "at": cmd["at"], "by": None,
                         "reason": None}],
            "summaries": {},
            "approvals": [],
            "approvals_required": 1,
        }
        self._prune_revisions()
        seq = self._emit(cmd["at"], "revision.observed", revision=sha)
        return {"ok": True, "state": RevisionState.OBSERVED.value, "seq": seq}

    def _prune_revisions(self) -> None:
        excess = len(self.revisions) - self.revision_capacity
        if excess <= 0:
            return
        # Oldest first (dict order is observation order); only finished revisions go.
        for sha in [s for s, r in self.revisions.items() if r["state"] in commands.TERMINAL_STATES][
            :excess
        ]:
            del self.revisions[sha]

    def _transition(self, cmd: dict[str, Any]) -> dict[str, Any]:
        rev = self._revision(cmd["sha"])
        old, new = rev["state"], cmd["state"]
        if new not in commands.TRANSITIONS[old]:
            raise _Reject("bad_transition", f"revision {cmd['sha']} cannot go from {old} to {new}")
        at = cmd["at"]
        superseded = None
        if new == RevisionState.APPLIED and self.applied_sha not in (None, cmd["sha"]):
            superseded = self.revisions.get(self.applied_sha)
        self._set_state(rev, new, at, cmd["by"], cmd["reason"])
        if old == RevisionState.SUPERSEDED:  # re-armed for a rollback: judged and approved afresh
            rev["approvals"] = []
            rev["summaries"] = {}
        if cmd["summary"] is not None:
            rev["summaries"][new] = cmd["summary"]
        if new == RevisionState.AWAITING_APPROVAL:
            rev["approvals_required"] = cmd["approvals_required"]
        seq = self._emit(at, f"revision.{new}", revision=cmd["sha"], message=cmd["reason"])
        if new == RevisionState.APPLIED:
            if superseded is not None:
                self._set_state(superseded, RevisionState.SUPERSEDED.value, at, cmd["by"],
                                "a newer revision applied")
                self._emit(at, "revision.superseded", revision=superseded["sha"])
            self.applied_sha = cmd["sha"]
        return {"ok": True, "state": new, "previous": old, "seq": seq}

    def _approve(self, cmd: dict[str, Any]) -> dict[str, Any]:
        rev = self._revision(cmd["sha"])
        if rev["state"] != RevisionState.AWAITING_APPROVAL:
            raise _Reject("not_awaiting_approval", f"revision is {rev['state']}")
        if any(a["by"] == cmd["by"] for a in rev["approvals"]):
            raise _Reject("already_approved", f"{cmd['by']} already approved this revision")
        at = cmd["at"]
        rev["approvals"].append({"by": cmd["by"], "at": at, "note": cmd["note"]})
        seq = self._emit(at, "revision.approval", revision=cmd["sha"], message=cmd["by"])
        if len(rev["approvals"]) >= rev["approvals_required"]:
            self._set_state(rev, RevisionState.APPROVED.value, at, cmd["by"], "approvals complete")
            seq = self._emit(at, "revision.approved", revision=cmd["sha"])
        return {"ok": True, "state": rev["state"], "approvals": len(rev["approvals"]), "seq": seq}

    def _host_set(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd["name"]
        held = self.hosts.get(name)
        record: HostRecord = copy.copy(held) if held else {
            "name": name, "stage": None, "state": None, "last_event": None, "revision": None,
            "updated_at": cmd["at"]}
        if "stage" in cmd:
            record["stage"] = cmd["stage"]
        if "state" in cmd:
            record["state"] = cmd["state"]
        if "last_event" in cmd:
            record["last_event"] = cmd["last_event"]
        if "revision" in cmd:
            record["revision"] = cmd["revision"]
        record["updated_at"] = cmd["at"]
        self.hosts[name] = record
        seq = self._emit(cmd["at"], "host.updated", host=name, revision=record["revision"],
                         message=record["state"])
        return {"ok": True, "seq": seq}

    # ---- hosts and rollouts (the workflow engine's records) ------------------------------

    def _host_arm(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name, at = cmd["name"], cmd["at"]
        current = self.hosts.get(name)
        if (current is not None and current.get("revision") == cmd["revision"]
                and current.get("state") not in commands.HOST_TERMINAL
                and current.get("armed_seq") is not None):
            raise _Reject("already_armed", f"host {name} is already armed for this revision "
                                           f"({current.get('state')})")
        seq = self._emit(at, "host.armed", host=name, revision=cmd["revision"],
                         message=cmd["reason"], data={"by": cmd["by"]} if cmd["by"] else None)
        self.hosts[name] = {
            "name": name, "revision": cmd["revision"], "stages": cmd["stages"], "done": 0,
            "stage": 1, "state": HostState.QUEUED.value, "attempt": 0, "armed_seq": seq,
            "armed_at": at,
            "message": cmd["reason"], "deadline": None, "last_event": "host.armed",
            "updated_at": at,
        }
        running = current.get("running") if current is not None else None
        if running:  # the machine still runs it: its hooks come before the reinstall's power
            self.hosts[name]["running"] = running
        return {"ok": True, "seq": seq}

    def _host_step(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd["name"]
        record = self.hosts.get(name)
        if record is None or record.get("revision") != cmd["revision"]:
            raise _Reject("stale", f"host {name} is not armed for revision {cmd['revision']}")
        if record.get("state") in commands.HOST_TERMINAL:
            raise _Reject("host_finished", f"host {name} is {record['state']} for this revision")
        waiting = cmd["state"] in commands.HOST_WAITING
        if waiting and record.get("done", 0) >= cmd["stage"]:
            raise _Reject("stage_already_done", f"host {name} already reported stage "
                                                 f"{cmd['stage']}")
        at = cmd["at"]
        record.update({"stage": cmd["stage"], "state": cmd["state"], "attempt": cmd["attempt"],
                       "message": cmd["message"], "deadline": cmd["deadline"],
                       "last_event": f"host.{cmd['state']}", "updated_at": at})
        seq = self._emit(at, f"host.{cmd['state']}", host=name, revision=cmd["revision"],
                         message=cmd["message"],
                         data={"stage": cmd["stage"], "attempt": cmd["attempt"]})
        return {"ok": True, "seq": seq}

    def _host_stage_done(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """A phone-home, as any peer's data plane saw it. It counts only for the arming its
        token was made for (by identity: `armed_seq`, never by comparing peers' clocks),
        only for the next stage (out of order: refused and journaled), and a replay changes
        nothing."""
        name, at, stage = cmd["name"], cmd["at"], cmd["stage"]
        record = self.hosts.get(name)
        current = record.get("armed_seq") if record is not None else None
        if "armed_seq" in cmd and cmd["armed_seq"] != current:
            # made for another arming (a report held in a cut-off peer's outbox while the
            # host was armed again): it answers that arming, not this one
            raise _Reject("stale_report", f"host {name}: a stage {stage} report made for "
                                          f"arming {cmd['armed_seq']}, not {current}")
        done = record.get("done", 0) if record is not None else 0
        if stage <= done:
            return {"ok": True, "replay": True, "done": done}
        if stage != done + 1:
            seq = self._emit(at, "host.phone_home_refused", host=name, revision=cmd["revision"],
                             message=f"stage {stage} reported while stage {done + 1} is the "
                                     "one in progress", data={"stage": stage, "done": done})
            raise _Reject("out_of_order", f"host {name}: stage {stage} reported before "
                                          f"stage {done + 1} (event {seq})")
        if record is None or "done" not in record:
            # the keys in the order the code below leaves them (snapshots compare as dicts,
            # but keep them as they always were)
            record = {"name": name, "revision": cmd["revision"], "stages": cmd["stages"],
                      "done": 0, "stage": stage, "state": HostState.BOOTING.value,
                      "attempt": 0, "armed_seq": None,
                      "message": "reported without being armed", "deadline": None,
                      "running": {"revision": cmd["revision"], "stage": stage},
                      "last_event": "host.stage_done", "updated_at": at}
            self.hosts[name] = record
        stages = record.get("stages") or cmd["stages"]
        record["done"] = max(record.get("done", 0), stage)
        # what the machine runs until the leader next powers it (its `before_shutdown`)
        record["running"] = {"revision": record.get("revision") or cmd["revision"],
                             "stage": stage}
        if record["done"] >= stages and record.get("state") not in commands.HOST_TERMINAL:
            # armed by the engine: it runs the health gate and says done; not armed (a fixed
            # SoT peer, or a machine that booted by itself): nothing else will, so done now
            record["state"] = (HostState.INSTALLED.value if record.get("armed_seq") is not None
                               else HostState.DONE.value)
            record["deadline"] = None
        record.update({"last_event": "host.stage_done", "updated_at": at})
        seq = self._emit(at, "host.stage_done", host=name, revision=cmd["revision"],
                         data={"stage": stage, "done": record["done"], "stages": stages})
        return {"ok": True, "seq": seq, "done": record["done"]}

    def _host_seen(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """A peer served the host a stage's script, or saw it finish loading the stage's
        kernel and initrds: evidence that the machine is booting. The event's seq orders it
        against the leader's power intents in Raft order, which no peer's clock can skew: a
        new leader tells a power action that happened from one that was lost, and a machine
        that went silent after its script from one on its way."""
        record = self.hosts.get(cmd["name"])
        if record is None:  # never armed nor reported: nobody waits for this evidence
            return {"ok": True, "ignored": True}
        step = cmd.get("step", "script")
        seq = self._emit(cmd["at"], "host.booting_seen" if step == "script" else "host.loaded",
                         host=cmd["name"], revision=cmd["revision"], data={"stage": cmd["stage"]})
        if step == "script":
            record.update({"seen_at": cmd["at"], "seen_stage": cmd["stage"], "seen_seq": seq})
        else:
            record.update({"loaded_stage": cmd["stage"], "loaded_seq": seq})
        return {"ok": True, "seq": seq}

    def _hosts_seen(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Boot evidence of many hosts in one entry: what a peer served in a boot storm,
        batched so that it costs the log one write per batch, not one per script served."""
        results = [self._host_seen(item) for item in cmd["hosts"]]
        return {"ok": True, "seen": sum(1 for r in results if not r.get("ignored"))}

    def _rollout_start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        sha, at = cmd["revision"], cmd["at"]
        if sha in self.rollouts:
            return {"ok": True, "existing": True, "state": self.rollouts[sha]["state"]}
        running = RolloutState.RUNNING.value
        self.rollouts[sha] = {"revision": sha, "base": cmd["base"], "state": running,
                              "started_at": at, "updated_at": at, "by": cmd["by"],
                              "reason": None, "history": [{"state": running, "at": at,
                                                           "by": cmd["by"], "reason": None}]}
        while len(self.rollouts) > self.revision_capacity:
            oldest = next(iter(self.rollouts))
            del self.rollouts[oldest]
        seq = self._emit(at, "rollout.started", revision=sha,
                         data={"base": cmd["base"]} if cmd["base"] else None)
        return {"ok": True, "state": running, "seq": seq}

    def _rollout_set(self, cmd: dict[str, Any]) -> dict[str, Any]:
        sha, at, new = cmd["revision"], cmd["at"], cmd["state"]
        rollout = self.rollouts.get(sha)
        if rollout is None:
            raise _Reject("unknown_rollout", f"revision {sha} has no rollout")
        old = rollout["state"]
        if new not in commands.ROLLOUT_TRANSITIONS[old]:
            raise _Reject("bad_transition", f"the rollout of {sha[:12]} is {old}; it cannot "
                                            f"become {new}")
        rollout.update({"state": new, "updated_at": at, "by": cmd["by"], "reason": cmd["reason"]})
        rollout["history"].append({"state": new, "at": at, "by": cmd["by"],
                                   "reason": cmd["reason"]})
        del rollout["history"][:-HISTORY_LIMIT]
        seq = self._emit(at, f"rollout.{new}", revision=sha, message=cmd["reason"],
                         data={"by": cmd["by"]} if cmd["by"] else None)
        result = {"ok": True, "state": new, "previous": old, "seq": seq}
        # The hosts change in the same entry as the rollout: no window in which a rollout is
        # aborted but its hosts are still served their next stage, or resumed but not retried.
        if new == RolloutState.ABORTED:
            why = f"rollout aborted by {cmd['by'] or 'an operator'}"
            why += f": {cmd['reason']}" if cmd["reason"] else ""
            result["aborted"] = self._end_in_flight(sha, at, why[:commands.MAX_TEXT])
        elif old == RolloutState.FAILED and new == RolloutState.RUNNING:
            result["retried"] = self._rearm_failed(sha, at, cmd["by"])
        return result

    def _armed_for(self, sha: str) -> list[HostRecord]:
        return [r for r in self.hosts.values()
                if r.get("revision") == sha and r.get("armed_seq") is not None]

    def _end_in_flight(self, sha: str, at: float, why: str) -> list[str]:
        """Abort: every host armed for the revision and unfinished gets the disk next boot."""
        names = []
        for record in self._armed_for(sha):
            if record.get("state") not in commands.HOST_TERMINAL:
                record.update({"state": HostState.ABORTED.value, "message": why,
                               "deadline": None, "last_event": "host.aborted",
                               "updated_at": at})
                self._emit(at, "host.aborted", host=record["name"], revision=sha, message=why)
                names.append(record["name"])
        return names

    def _rearm_failed(self, sha: str, at: float, by: str | None) -> list[str]:
        """Resuming a failed rollout retries its failed hosts from stage 1."""
        names = []
        for record in self._armed_for(sha):
            if record.get("state") == HostState.FAILED:
                why = f"retried: rollout resumed by {by or 'an operator'}"
                seq = self._emit(at, "host.armed", host=record["name"], revision=sha,
                                 message=why)
                record.update({"done": 0, "stage": 1, "state": HostState.QUEUED.value,
                               "attempt": 0, "armed_seq": seq, "armed_at": at, "message": why,
                               "deadline": None,
                               "last_event": "host.armed", "updated_at": at})
                names.append(record["name"])
        return names

    def _intent_record(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["term"] < self.fence_term:
            raise _Reject("fenced", f"term {cmd['term']} is older than {self.fence_term}: "
                                    "a newer leader has recorded intents")
        if cmd["intent_id"] in self.intents:
            raise _Reject("duplicate_intent", f"intent {cmd['intent_id']} exists")
        self.fence_term = cmd["term"]
        if cmd["action"].startswith("power.") and cmd["action"] != "power.status" \
                and cmd["host"] in self.hosts:
            self.hosts[cmd["host"]].pop("running", None)  # powered: no longer what it reported
        seq = self._emit(cmd["at"], "intent.recorded", host=cmd["host"], revision=cmd["revision"],
                         message=cmd["action"],
                         data={"intent_id": cmd["intent_id"], "stage": cmd["stage"]})
        self.intents[cmd["intent_id"]] = {
            "intent_id": cmd["intent_id"], "host": cmd["host"], "action": cmd["action"],
            "stage": cmd["stage"], "revision": cmd["revision"], "term": cmd["term"],
            "at": cmd["at"], "result": None, "seq": seq,
        }
        return {"ok": True, "seq": seq}

    def _intent_result(self, cmd: dict[str, Any]) -> dict[str, Any]:
        intent = self.intents.get(cmd["intent_id"])
        if intent is None:
            raise _Reject("unknown_intent", f"intent {cmd['intent_id']} was never recorded")
        if intent["result"] is not None:
            raise _Reject("result_exists", f"intent {cmd['intent_id']} already has a result")
        intent["result"] = {"ok": cmd["ok"], "detail": cmd["detail"], "at": cmd["at"]}
        self.completed_intents.append(cmd["intent_id"])
        while len(self.completed_intents) > self.completed_intent_capacity:
            self.intents.pop(self.completed_intents.popleft(), None)
        seq = self._emit(cmd["at"], "intent.ok" if cmd["ok"] else "intent.failed",
                         host=intent["host"], revision=intent["revision"], message=cmd["detail"],
                         data={"intent_id": cmd["intent_id"], "action": intent["action"]})
        return {"ok": True, "seq": seq}

    def _event(self, cmd: dict[str, Any]) -> dict[str, Any]:
        seq = self._emit(cmd["at"], cmd["kind"], host=cmd["host"], revision=cmd["revision"],
                         message=cmd["message"], data=cmd["data"])
        return {"ok": True, "seq": seq}

    def _peer_add(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """A peer joins, or announces itself again (every start does, and an operator's
        `peers add` comes first): only the first is a `peer.added` event, marked in the
        record by `joined_at`; later ones update name and API URL quietly. A member that
        `peers.set` listed but that never joined this way has no `joined_at` yet."""
        held = self.peers.get(cmd["address"])
        joined_at = held.get("joined_at") if held is not None else None
        self.peers[cmd["address"]] = {
            "address": cmd["address"], "name": cmd["name"], "api_url": cmd["api_url"],
            "added_at": held.get("added_at", cmd["at"]) if held is not None else cmd["at"],
            "joined_at": joined_at or cmd["at"]}
        if joined_at is not None:
            return {"ok": True, "seq": None}
        seq = self._emit(cmd["at"], "peer.added", message=cmd["address"])
        return {"ok": True, "seq": seq}

    def _peer_remove(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.peers.pop(cmd["address"], None) is None:
            raise _Reject("unknown_peer", f"{cmd['address']} is not in the peer list")
        seq = self._emit(cmd["at"], "peer.removed", message=cmd["address"])
        return {"ok": True, "seq": seq}

    def _peers_set(self, cmd: dict[str, Any]) -> dict[str, Any]:
        held = self.peers
        self.peers = {p["address"]: {"address": p["address"], "name": p["name"],
                                     "api_url": p["api_url"], "added_at": cmd["at"]}
                      for p in cmd["peers"]}  # a peer as commands._peer normalized it
        for address, record in self.peers.items():  # who joined stays joined
            prior = held.get(address)
            if prior is not None and prior.get("joined_at") is not None:
                record["joined_at"] = prior["joined_at"]
        seq = self._emit(cmd["at"], "peers.set", data={"addresses": sorted(self.peers)})
        return {"ok": True, "seq": seq}

    def _federation_summary(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """A verified summary (checked by the peer that received it): kept if newer."""
        held = self.federation["summaries"].get(cmd["site"])
        if held is not None and held["seq"] >= cmd["seq"]:
            raise _Reject("not_newer", f"summary {cmd['seq']} of {cmd['site']}: "
                                       f"{held['seq']} is held")
        self.federation["summaries"][cmd["site"]] = {
            "site": cmd["site"], "seq": cmd["seq"], "digest": cmd["digest"],
            "envelope": cmd["envelope"], "received_at": cmd["at"], "via": cmd["via"]}
        return {"ok": True}

    def _federation_override(self, cmd: dict[str, Any]) -> dict[str, Any]:
        overrides = self.federation["overrides"]
        overrides[cmd["revision"]] = {"by": cmd["by"], "at": cmd["at"], "reason": cmd["reason"]}
        while len(overrides) > HISTORY_LIMIT:
            del overrides[next(iter(overrides))]
        seq = self._emit(cmd["at"], "federation.override", revision=cmd["revision"],
                         message=cmd["reason"], data={"by": cmd["by"]})
        return {"ok": True, "seq": seq}

    # ---- reads (callers hold the raft lock; results are copies) -------------------------

    def federation_view(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.federation)

    def revision(self, sha: str) -> RevisionRecord | None:
        rev = self.revisions.get(sha)
        return copy.deepcopy(rev) if rev is not None else None

    def revision_list(self, state: str | None = None) -> list[RevisionRecord]:
        return [copy.deepcopy(r) for r in self.revisions.values()
                if state is None or r["state"] == state]

    def host(self, name: str) -> HostRecord | None:
        rec = self.hosts.get(name)
        return copy.copy(rec) if rec is not None else None

    def host_list(self) -> list[HostRecord]:
        return [copy.copy(r) for r in self.hosts.values()]

    def rollout(self, sha: str) -> RolloutRecord | None:
        rec = self.rollouts.get(sha)
        return copy.deepcopy(rec) if rec is not None else None

    def rollout_list(self) -> list[RolloutRecord]:
        return [copy.deepcopy(r) for r in self.rollouts.values()]

    def intent(self, intent_id: str) -> IntentRecord | None:
        rec = self.intents.get(intent_id)
        return copy.deepcopy(rec) if rec is not None else None

    def pending_intents(self, host: str | None = None) -> list[IntentRecord]:
        """Intents with no result: a new leader inspects these before resuming a rollout."""
        return [copy.deepcopy(i) for i in self.intents.values()
                if i["result"] is None and (host is None or i["host"] == host)]

    def events_since(self, after_seq: int = 0, limit: int = 100) -> EventPage:
        """Events with seq > after_seq, oldest first. `first_seq` > after_seq + 1 means the
        reader fell behind the ring and lost events in between."""
        limit = max(0, min(limit, 1000))
        first = self.events[0]["seq"] if self.events else self.next_seq
        start = max(0, after_seq + 1 - first)
        out = [copy.deepcopy(self.events[i]) for i in range(start, min(len(self.events),
                                                                       start + limit))]
        return {"events": out, "first_seq": first, "last_seq": self.next_seq - 1}

    def peer_list(self) -> list[PeerRecord]:
        return [copy.copy(p) for p in self.peers.values()]

    # ---- snapshots ----------------------------------------------------------------------

    def to_snapshot(self) -> dict[str, Any]:
        """Plain data (no classes) so that a snapshot loads under any later code version.

        The result shares objects with the live state (copying 10,000 events would stall the
        Raft thread): serialise it before the next apply."""
        return {
            "format": SNAPSHOT_FORMAT,
            "capacities": [self.event_capacity, self.dedupe_capacity,
                           self.completed_intent_capacity, self.revision_capacity],
            "revisions": self.revisions,
            "applied_sha": self.applied_sha,
            "hosts": self.hosts,
            "rollouts": self.rollouts,
            "intents": self.intents,
            "completed_intents": list(self.completed_intents),
            "fence_term": self.fence_term,
            "events": list(self.events),
            "next_seq": self.next_seq,
            "peers": self.peers,
            "applied_ops": list(self.applied_ops.items()),
            "applied_count": self.applied_count,
            "federation": self.federation,
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> ClusterState:
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported snapshot format {data.get('format')!r}")
        ev, dd, ci, rv = data["capacities"]
        state = cls(event_capacity=ev, dedupe_capacity=dd, completed_intent_capacity=ci,
                    revision_capacity=rv)
        state.revisions = data["revisions"]
        state.applied_sha = data["applied_sha"]
        state.hosts = data["hosts"]
        state.rollouts = data.get("rollouts", {})
        state.intents = data["intents"]
        state.completed_intents = deque(data["completed_intents"])
        state.fence_term = data["fence_term"]
        state.events = deque(data["events"], maxlen=ev)
        state.next_seq = data["next_seq"]
        state.peers = data["peers"]
        state.applied_ops = OrderedDict(data["applied_ops"])
        state.applied_count = data["applied_count"]
        state.federation = data.get("federation") or {"summaries": {}, "overrides": {}}
        return state


# Each operation's handler, as commands.OPERATIONS names it (a wrong name fails on import).
_HANDLERS = {op: getattr(ClusterState, operation.handler)
             for op, operation in commands.OPERATIONS.items()}
