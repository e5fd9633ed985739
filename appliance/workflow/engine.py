"""The workflow engine: makes the hardware match the applied revision. Leader only.

Every peer runs `run()`; only the Raft leader acts. Each round it:
1. starts the rollout of the applied revision (recorded in Raft, base = the revision it was
   planned against) and supersedes any older one still open;
2. derives the rollout's progress from the plan and the replicated host records
   (workflow/schedule.py) and arms the hosts whose turn it is, unless the rollout is paused,
   aborted or failed;
3. keeps one runner task per armed, unfinished host (workflow/host_run.py), also for hosts an
   operator armed by hand;
4. closes the rollout: done when every planned host finished, failed when a cluster went over
   its `max_fail`.
All of that is read back from Raft each round, so a new leader continues where the old one
stopped. When leadership is lost every runner is cancelled at once: a deposed leader must not
touch hardware (and its intents would be fenced anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable

import structlog

from appliance.cluster import Cluster
from appliance.cluster.commands import HOST_TERMINAL, ROLLOUT_OPEN, RolloutState
from appliance.cluster.errors import ClusterError, CommandRejected
from appliance.cluster.records import RevisionRecord
from appliance.power.base import PowerControl
from appliance.sot.models import Workflow
from appliance.sot.plan import Plan, make_plan
from appliance.sot.revision import Revision, RevisionCache, empty_revision
from appliance.sot.tree import Tree
from appliance.workflow.clock import SYSTEM_CLOCK, Clock
from appliance.workflow.host_run import HostRunner
from appliance.workflow.schedule import RolloutProgress, progress

log = structlog.get_logger("vaquero.workflow")

EMPTY = "0" * 40
# Seconds between the starts of two rounds, at least: ROUND_SHARE times what the last round
# took (a round over 10,000 hosts costs ~50 ms of CPU: a busy rollout, woken by every
# applied entry, spends at most about a fifth of a core on them), within these bounds. The
# wait is also how long a finished batch waits for the next to be armed: a fixed 0.5 s (and
# a missed wake-up, then the 1 s poll) cost ~1.5 s per batch of a 200-host rollout.
MIN_ROUND, MAX_ROUND_GAP, ROUND_SHARE = 0.05, 0.5, 5.0


def planned_base(revision_record: RevisionRecord | None) -> str:
    """The revision this one was planned against (its plan's `from`)."""
    if revision_record is None:
        return EMPTY
    summary = revision_record["summaries"].get("planned") or {}
    return summary.get("from") or EMPTY


class WorkflowEngine:
    def __init__(self, cluster: Cluster, site: str, tree_for: Callable[[str], Tree],
                 cache: RevisionCache, power: PowerControl | None, *, poll: float = 1.0,
                 clock: Clock = SYSTEM_CLOCK, runner_options: dict[str, float] | None = None
                 ) -> None:
        """`runner_options`: HostRunner's windows (evidence_window, silence_window)."""
        self.cluster, self.site, self.tree_for = cluster, site, tree_for
        self.cache, self.power, self.poll = cache, power, poll
        self.clock, self.runner_options = clock, dict(runner_options or {})
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._term: int | None = None  # the leadership term the runners were started in
        # when this leader started waiting for each host's stage attempt (its monotonic
        # clock); forgotten when it stops leading, so the next leader starts over
        self._watch: dict[tuple, float] = {}
        self._plans: dict[tuple[str, str], Plan] = {}
        self._install_maps: dict[str, dict[str, str]] = {}
        self._runner_ended = asyncio.Event()  # a round is due: a host's runner finished

    # --- revisions and plans (shared with the API) ----------------------------------------

    async def revision(self, sha: str) -> Revision:
        if sha == EMPTY:
            return empty_revision()
        return await asyncio.to_thread(lambda: self.cache.get(self.tree_for(sha)))

    async def plan(self, base: str, sha: str) -> Plan:
        key = (base, sha)
        if key not in self._plans:
            old, new = await self.revision(base), await self.revision(sha)
            self._plans = {key: await asyncio.to_thread(make_plan, old, new)}  # keep one
        return self._plans[key]

    async def progress(self, sha: str) -> RolloutProgress:
        """Where the rollout of `sha` stands, as this peer's replica says (any peer)."""
        rollout = self.cluster.rollout(sha)
        base = (rollout["base"] if rollout is not None else None) or planned_base(
            self.cluster.revision(sha))
        plan = await self.plan(base, sha)
        records = {r["name"]: r for r in self.cluster.hosts()}
        planned = {h for waves in plan.waves.values() for w in waves for c in w.clusters
                   for b in c.batches for h in b}
        earlier = {rev for n, r in records.items()
                   if n in planned and (rev := r["revision"]) is not None and rev != sha}
        installs = {rev: await self._installs(rev) for rev in earlier | {sha}}
        site = (await self.revision(sha)).sot.sites.get(self.site)
        # force_provision: an install under an earlier revision never counts for this one
        forced = site is not None and site.policy.force_provision

        def same_install(host: str, rev: str) -> bool:
            mine = installs[sha].get(host)
            return not forced and mine is not None and installs[rev].get(host) == mine

        return progress(plan, self.site, records, rollout, same_install)

    async def _installs(self, sha: str) -> dict[str, str]:
        """What a revision installs on each host (its fingerprint hashes). Revisions are
        content-addressed, so this is computed once per SHA, not every round (~12 ms per
        10,000 hosts); an unreadable revision installs nothing known (its hosts are redone)."""
        if sha not in self._install_maps:
            try:
                compiled = await self.revision(sha)
            except Exception as exc:  # gone from the mirror
                log.warning("workflow.revision_unreadable", revision=sha, error=str(exc))
                return {}
            while len(self._install_maps) >= 4:
                self._install_maps.pop(next(iter(self._install_maps)))
            self._install_maps[sha] = {h: fp.install
                                       for h, fp in compiled.result.fingerprints.items()}
        return self._install_maps[sha]

    async def _running_at(self, sha: str, host: str) -> tuple[Workflow, str] | None:
        """`host`'s workflow and boot address in revision `sha`: what a machine being
        reinstalled still runs, and where, for its stage's `before_shutdown`. None when it
        had no workflow there or `sha` is unreadable."""
        try:
            sot = (await self.revision(sha)).sot
        except Exception as exc:  # gone from the mirror: its hooks cannot be known
            log.warning("workflow.hooks_unknown", host=host, revision=sha,
                        error=f"{exc.__class__.__name__}: {exc}")
            return None
        entry = sot.hosts.get(host)
        workflow = sot.workflows.get(entry.host.workflow or "") if entry else None
        if entry is None or workflow is None:
            return None
        iface = entry.host.boot_interface()
        return workflow, str(iface.ipv4) if iface else ""

    def _rollout_base(self, sha: str) -> str:
        """What the rollout of `sha` is planned against: the revision it was approved
        against, unless that one's rollout did not finish (superseded while running, paused
        or failed): then that one's own base, so its unfinished work is carried over and
        no host it meant to install is stranded. An aborted rollout's work is not carried."""
        base = planned_base(self.cluster.revision(sha))
        for _ in range(20):  # bounded: a chain of unfinished rollouts
            if base == EMPTY:
                return base
            previous = self.cluster.rollout(base)
            if previous is None:  # applied and replaced before its rollout even started
                record = self.cluster.revision(base)
                if record is None:
                    return base
                base = planned_base(record)
                continue
            if previous["state"] not in ROLLOUT_OPEN:
                return base
            base = previous.get("base") or EMPTY
        return base

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        changed: asyncio.Future[None] | None = None
        try:
            while True:
                began = time.monotonic()
                # watching from the round's start: an entry applied while it runs wakes the
                # next round too
                changed = asyncio.ensure_future(self.cluster.wait_change(MAX_ROUND_GAP
                                                                         + self.poll + 60))
                st = self.cluster.status
                if not st.is_leader or st.term != self._term:
                    # Runners belong to one leadership: a new term, even our own, means
                    # another leader may have acted since.
                    self._stop_runners("not the leader")
                    self._term = st.term if st.is_leader else None
                if st.is_leader and st.has_quorum:
                    try:
                        await self.step()
                    except ClusterError as exc:
                        log.info("workflow.step_interrupted", error=str(exc))
                    except Exception:
                        log.exception("workflow.step_failed")
                # A leader that lost its quorum keeps its runners and arms nothing new: their
                # Raft writes wait for the quorum or fail, and if it does not come back the
                # leader steps down (3 s) and the branch above stops them. Stopping them at
                # once turned every in-flight power step "outcome unknown" whenever a loaded
                # leader missed its followers for a second (fleet bench, N=200).
                await self._pause(began, changed)
        finally:
            if changed is not None:
                changed.cancel()
            self._stop_runners("engine stopping")

    async def _pause(self, began: float, changed: asyncio.Future[None]) -> None:
        """Until the next round: woken by an entry applied since this round began (`changed`
        watches from then) or by a runner that finished, but no sooner than the round gap:
        a round reads every host record, and a busy rollout applies many entries a second.
        At the latest `poll` after the gap."""
        took = time.monotonic() - began
        gap = min(MAX_ROUND_GAP, max(MIN_ROUND, ROUND_SHARE * took))
        ended = asyncio.ensure_future(self._runner_ended.wait())
        try:
            await asyncio.sleep(max(0.0, began + gap - time.monotonic()))
            await asyncio.wait((changed, ended), timeout=self.poll,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            ended.cancel()
            self._runner_ended.clear()

    def metrics(self) -> dict[str, float]:
        return {"host_runners": float(len(self._runners))}

    def _stop_runners(self, why: str) -> None:
        if self._runners:
            log.info("workflow.runners_stopped", hosts=len(self._runners), reason=why)
        for task in self._runners.values():
            task.cancel()
        self._runners.clear()
        self._watch.clear()

    def _reap(self) -> None:
        for name, task in list(self._runners.items()):
            if task.done():
                del self._runners[name]
                for key in [k for k in self._watch if k[1] == name]:
                    del self._watch[key]
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    log.error("workflow.runner_failed", host=name,
                              error=f"{exc.__class__.__name__}: {exc}")

    async def step(self) -> None:
        self._reap()
        sha = self.cluster.applied_revision()
        if sha is None:
            return
        rollout = self.cluster.rollout(sha)
        if rollout is None:
            base = self._rollout_base(sha)
            await self.cluster.start_rollout(sha, base, by="engine")
            log.info("workflow.rollout_started", revision=sha, base=base)
            rollout = self.cluster.rollout(sha)
            assert rollout is not None
        for other in self.cluster.rollouts():
            if other["revision"] != sha and other["state"] in ROLLOUT_OPEN | {RolloutState.DONE}:
                with contextlib.suppress(CommandRejected):
                    await self.cluster.set_rollout(other["revision"], RolloutState.SUPERSEDED,
                                                   by="engine",
                                                   reason=f"revision {sha[:12]} was applied")
        prog = await self.progress(sha)
        if rollout["state"] == RolloutState.RUNNING:
            if prog.halted:
                await self.cluster.set_rollout(sha, RolloutState.FAILED, by="engine",
                                               reason=prog.halted)
                log.warning("workflow.rollout_failed", revision=sha, reason=prog.halted)
            elif prog.finished and not self._runners:
                failed = prog.counts.get("failed", 0)
                await self.cluster.set_rollout(
                    sha, RolloutState.DONE, by="engine",
                    reason=f"{prog.counts.get('done', 0)} host(s) done, {failed} failed")
                log.info("workflow.rollout_done", revision=sha, counts=prog.counts)
            else:
                await self._arm(sha, prog)
        await self._drive(sha)

    async def _arm(self, sha: str, prog: RolloutProgress) -> None:
        revision = await self.revision(sha)
        for name in prog.to_arm:
            entry = revision.sot.hosts[name]
            stages = len(revision.sot.workflows[entry.host.workflow].stages)
            try:
                await self.cluster.arm_host(name, sha, stages, by="engine",
                                            reason=f"rollout of {sha[:12]}")
            except CommandRejected as exc:
                if exc.code != "already_armed":
                    raise
            log.info("workflow.host_armed", host=name, revision=sha, stages=stages)

    async def _drive(self, sha: str) -> None:
        """One runner per armed, unfinished host: those of the applied revision, and those a
        superseded rollout left in flight (they finish the stage work they started, under
        their own revision; a host the new plan changes was armed again for it instead)."""
        revisions: dict[str, Revision] = {}
        for record in self.cluster.hosts():
            name, rev = record["name"], record.get("revision")
            if (rev is None or record.get("armed_seq") is None
                    or record.get("state") in HOST_TERMINAL or name in self._runners):
                continue
            held = self.cluster.rollout(rev) if rev != sha else None
            if rev != sha and (held is None or held["state"] != RolloutState.SUPERSEDED):
                continue  # an aborted (or unknown) rollout's hosts are left alone
            if rev not in revisions:
                revisions[rev] = await self.revision(rev)
            entry = revisions[rev].sot.hosts.get(name)
            if entry is None or entry.site != self.site:
                continue
            sot = revisions[rev].sot
            workflow = sot.workflows[entry.host.workflow]
            marked = frozenset(i for i, s in enumerate(workflow.stages, 1)
                               if s.boot is not None and not sot.boots[s.boot].ipxe)
            runner = HostRunner(self.cluster, self.power, entry, workflow, rev,
                                clock=self.clock, watch=self._watch, marked_stages=marked,
                                running_at=functools.partial(self._running_at, host=name),
                                **self.runner_options)
            task = asyncio.create_task(runner.run(), name=f"host-{name}")
            task.add_done_callback(lambda _t: self._runner_ended.set())
            self._runners[name] = task
