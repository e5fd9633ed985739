"""The revision pipeline: every observed commit is judged, planned, gated and applied, as
replicated state, advanced only by the Raft leader.

    observed -> validated | rejected -> planned -> awaiting_approval -> approved -> applying
    -> applied (the previously applied revision becomes superseded)

Each step is a Raft entry written by the leader; a new leader picks up where the old one
stopped, because the state of every revision is in the log. Compiling and planning are pure
functions of the SHA (cached), so repeating one after a leader change is harmless.

Gates come from the peer config and from the site policy of the revision *currently applied*
(a revision cannot relax the gates that judge it; the very first one is judged by its own):
manual approval, or automatic approval when the plan touches no hardware
(`approval: auto_rerender`); required commit status contexts (checked before applying).
An invalid or unapproved revision never reaches the data plane: peers serve `applied` only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from appliance.cluster import Cluster
from appliance.cluster.errors import ClusterError, CommandRejected
from appliance.sot.models import Policy
from appliance.sot.plan import Plan, make_plan
from appliance.sot.revision import Revision, RevisionCache, empty_revision
from appliance.sot.tree import Tree

log = structlog.get_logger("vaquero.pipeline")

ACTIVE = ("observed", "validated", "planned", "approved", "applying")
StatusGate = Callable[[str], Awaitable[tuple[bool, list[str]]]]
CommitState = Literal["error", "failure", "pending", "success"]  # a forge's commit status
StatusReport = Callable[[str, CommitState, str], Awaitable[object]]


@dataclass
class PipelineSettings:
    site: str
    # Peer-config gates, added to the site's: a peer may always demand more, never less.
    require_manual_approval: bool = False
    approvals_required: int = 1
    status_gate: StatusGate | None = None  # required contexts ok? (GitHub combined status)
    # Signed commits: `verify_signature(sha)` gives None (trusted) or the reason it is not.
    require_signed_commits: bool = False
    verify_signature: Callable[[str], str | None] | None = None
    report_status: StatusReport | None = None  # (sha, state, description) -> commit status
    # The cross-site order (appliance/federation): may this site apply `sha` now, and why.
    # Checked after approval, before applying; it never touches what is already applied.
    federation_gate: Callable[[str], Awaitable[tuple[bool, str]]] | None = None
    poll: float = 1.0  # seconds between checks when nothing wakes the loop


def _problem_summary(revision: Revision) -> dict:
    problems = revision.problems
    return {"problems": len(problems), "first": [str(p)[:300] for p in problems[:5]]}


def _plan_summary(plan: Plan) -> dict:
    counts = {k: v for k, v in plan.counts().items() if v}
    return {"from": plan.old, "counts": counts, "touches_hardware": plan.touches_hardware,
            "power_actions": len(plan.power)}


class RevisionPipeline:
    """Run `run()` as a task on every peer; it acts only while this peer leads."""

    def __init__(self, cluster: Cluster, tree_for: Callable[[str], Tree],
                 settings: PipelineSettings, cache: RevisionCache | None = None) -> None:
        self.cluster = cluster
        self.tree_for = tree_for
        self.settings = settings
        self.cache = cache or RevisionCache()
        self._wake = asyncio.Event()

    # --- inputs --------------------------------------------------------------------------

    async def observe(self, sha: str, source: str | None = None) -> None:
        """A fetch or a webhook saw this commit. Any peer may call it (replicated)."""
        await self.cluster.observe_revision(sha, source)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                if self.cluster.status.is_leader:
                    await self.step()
            except ClusterError as exc:  # lost leadership or quorum mid-step: next round
                log.info("pipeline.step_interrupted", error=str(exc))
            except Exception:  # never let one bad revision stop the pipeline
                log.exception("pipeline.step_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll)
            self._wake.clear()

    async def step(self) -> None:
        """Advance every active revision by as many steps as its gates allow."""
        for record in self.cluster.revisions():
            if record["state"] in ACTIVE:
                await self._advance(record["sha"])

    async def _compile(self, sha: str) -> Revision:
        # Against the applied revision: the work a push did not touch is reused (revision.py).
        applied = self.cluster.applied_revision()
        return await asyncio.to_thread(lambda: self.cache.get(self.tree_for(sha), applied))

    async def _applied(self) -> Revision:
        sha = self.cluster.applied_revision()
        return await self._compile(sha) if sha else empty_revision()

    async def _policy(self, candidate: Revision) -> Policy:
        applied = await self._applied()
        for revision in (applied, candidate):
            site = revision.sot.sites.get(self.settings.site)
            if site is not None:
                return site.policy
        return Policy()

    async def _move(self, sha: str, state: str, reason: str, summary: dict | None = None,
                    **extra: object) -> None:
        await self.cluster.transition_revision(sha, state, by="pipeline", reason=reason[:1000],
                                               summary=summary, **extra)  # type: ignore[arg-type]
        log.info("revision.transition", revision=sha, state=state, reason=reason)
        if self.settings.report_status is not None and state in (
                "rejected", "planned", "awaiting_approval", "approved", "applied"):
            # the commit shows its verdict: the validation report's first problem, or the
            # plan's counts, then where it stands
            verdicts: dict[str, CommitState] = {"rejected": "failure", "applied": "success"}
            github_state = verdicts.get(state, "pending")
            await self.settings.report_status(sha, github_state, f"{state}: {reason}"[:140])

    # long: one step of the revision lifecycle, a branch per state, read top to bottom.
    async def _advance(self, sha: str) -> None:  # noqa: C901 - a branch per state
        record = self.cluster.revision(sha)
        if record is None:
            return
        state = record["state"]
        if state == "observed":
            revision = await self._compile(sha)
            if revision.sha != sha:  # content addressing: what we read must be what was agreed
                await self._move(sha, "rejected", f"read commit {revision.sha}, not {sha}")
                return
            policy = await self._policy(revision)
            if policy.signed_commits or self.settings.require_signed_commits:
                verify = self.settings.verify_signature
                reason = ("signed commits are required but no signing keys are configured on "
                          "the peers") if verify is None else await asyncio.to_thread(verify, sha)
                if reason is not None:
                    await self._move(sha, "rejected", f"signature: {reason}")
                    return
            if not revision.valid:
                first = str(revision.problems[0]) if revision.problems else "invalid"
                await self._move(sha, "rejected", f"{len(revision.problems)} problem(s); "
                                 f"first: {first}", _problem_summary(revision))
                return
            await self._move(sha, "validated", "valid", revision.summary())
            state = "validated"
        if state == "validated":
            revision, applied = await self._compile(sha), await self._applied()
            plan = await asyncio.to_thread(make_plan, applied, revision)
            counts = ", ".join(f"{v} {k}" for k, v in plan.counts().items() if v)
            hardware = "touches hardware" if plan.touches_hardware else "no hardware touched"
            await self._move(sha, "planned", f"valid; plan: {counts or 'no host changes'}; "
                             f"{hardware}", _plan_summary(plan))
            state = "planned"
        if state == "planned":
            revision = await self._compile(sha)
            policy = await self._policy(revision)
            record = self.cluster.revision(sha)
            summary = record["summaries"].get("planned", {}) if record is not None else {}
            auto = (policy.approval == "auto_rerender" and not self.settings.require_manual_approval
                    and not summary.get("touches_hardware", True))
            if auto:
                await self._move(sha, "approved", "automatic: the plan touches no hardware")
                state = "approved"
            else:
                await self._move(sha, "awaiting_approval", "needs approval",
                                 approvals_required=self.settings.approvals_required)
                return
        if state == "approved":
            if self.settings.federation_gate is not None:
                allowed, _ = await self.settings.federation_gate(sha)
                if not allowed:
                    return  # the sites before this one are not done yet: next round
            if self.settings.status_gate is not None:
                ok, missing = await self.settings.status_gate(sha)
                if not ok:
                    log.info("revision.waiting_for_status", revision=sha, missing=missing)
                    return  # checked again next round
            await self._move(sha, "applying", "gates passed")
            state = "applying"
        if state == "applying":
            # Applying a revision is making it the one every peer's data plane serves; the
            # hardware work it implies is the workflow engine's, driven from the applied state.
            for other in self.cluster.revisions():
                if other["sha"] != sha and other["state"] in ("applying",):
                    return  # one at a time: the older one finishes first
            with contextlib.suppress(CommandRejected):
                await self._move(sha, "applied", "now served by every peer")
