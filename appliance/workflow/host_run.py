"""One host's way through its workflow, driven by the leader: for each stage, next boot PXE,
power it on (or cycle it if it runs), wait for the stage's phone-home; retry a stage that does
not report in time, then mark the host failed.

Every hardware action is written to Raft as an intent before it runs and as a result after,
under an id derived from (revision, host, stage, attempt, step). A new leader resuming the
host finds the same ids: a step with a result is not run again, and a step with an intent but
no result (the old leader died during it) is not repeated either. Whether that power action
happened shows in what the peers see next: the machine fetching its stage's script (replicated
as `host.seen`), then its phone-home. No script within EVIDENCE_WINDOW means the action was
lost, and the stage's next attempt runs then, not after the whole stage timeout. So a machine
gets at most one power action per attempt of a stage, and a lost one costs minutes.

A machine that went silent is power-cycled into PXE once through its BMC, instead of sitting
until the stage timeout: powered but no script fetched within EVIDENCE_WINDOW (the peer that
answered its DHCP died), or a script fetched but the stage's kernel and initrds not loaded
within SILENCE_WINDOW (a generated script reports when it has loaded them).

No decision compares two peers' clocks: evidence is ordered against the power intents by
Raft order (event seq), and every duration (stage timeout, evidence and silence windows) is
measured on this leader's monotonic clock from when it started watching; a new leader starts
over. The host's record (stage, attempt) is the runner's only memory: nothing is kept in this
object that a new leader would need.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from appliance.cluster import Cluster
from appliance.cluster.commands import HOST_TERMINAL, HostState
from appliance.cluster.errors import ClusterError, CommandRejected
from appliance.cluster.intents import IntentOutcome, outcome, unknown_detail
from appliance.cluster.records import HostRecord
from appliance.power.base import PowerControl, PowerError
from appliance.power.manager import NoBmc, target_for
from appliance.sot.loader import HostEntry
from appliance.sot.models import HealthCheck, ShutdownHook, Stage, Workflow
from appliance.workflow.clock import SYSTEM_CLOCK, Clock
from appliance.workflow.health import wait_healthy

log = structlog.get_logger("vaquero.workflow.host")

POWER_TIMEOUT = 120.0  # seconds for one BMC action (Redfish may need 90 s)
# How long after a power step of unknown outcome a machine must have fetched its stage's
# script (firmware POST and PXE can take minutes on servers).
EVIDENCE_WINDOW = 600.0
# How long a machine may take from fetching its script to having loaded the stage's kernel
# and initrds (hundreds of MB over a busy boot network), before it counts as silent.
SILENCE_WINDOW = 600.0
RESCUE_BOOT = "rescue-boot"  # the step id of the one power-cycle into PXE a silent machine gets
# Step ids of the boot device alone, a step of its own (and a BMC session) before the boot
# step did it in the same session: only read, to settle what an older leader left pending.
LEGACY_PXE, RESCUE = "pxe", "rescue-pxe"


class StepFailed(Exception):
    """A power step failed: the stage's attempt is over."""


def intent_id(revision: str, host: str, stage: int, attempt: int, step: str) -> str:
    """The same on every leader, so a resumed host finds what the previous one did."""
    key = f"{revision}\0{host}\0{stage}\0{attempt}\0{step}".encode()
    return "wf-" + hashlib.sha256(key).hexdigest()[:40]


class HostRunner:
    def __init__(self, cluster: Cluster, power: PowerControl | None, entry: HostEntry,
                 workflow: Workflow, revision: str, *, evidence_window: float = EVIDENCE_WINDOW,
                 silence_window: float = SILENCE_WINDOW, clock: Clock = SYSTEM_CLOCK,
                 watch: dict[tuple, float] | None = None,
                 marked_stages: frozenset[int] = frozenset(),
                 running_at: Callable[[str], Awaitable[tuple[Workflow, str] | None]] | None = None
                 ) -> None:
        """`watch`: when this leader started waiting for each (host, stage, attempt), shared
        by the engine's runners so a restarted runner does not restart the stage timeout;
        the engine drops it when it stops leading. `marked_stages`: stages whose generated
        script reports having loaded its kernel and initrds (custom scripts do not).
        `running_at`: this host's workflow and boot address in another revision (the one a
        machine being reinstalled still runs, for its `before_shutdown`)."""
        self.cluster, self.power, self.entry = cluster, power, entry
        self.evidence_window, self.silence_window = evidence_window, silence_window
        self.clock = clock
        self.watch = watch if watch is not None else {}
        self.marked_stages = marked_stages
        self.running_at = running_at
        self.workflow, self.revision = workflow, revision
        self.name = entry.host.name
        self.log = log.bind(host=self.name, revision=revision[:12])

    def _record(self) -> HostRecord | None:
        rec = self.cluster.host(self.name)
        if rec is None or rec.get("revision") != self.revision:
            return None
        return rec

    async def _step(self, state: HostState, stage: int, attempt: int, message: str | None = None,
                    deadline: float | None = None) -> None:
        await self.cluster.step_host(self.name, self.revision, state, stage, attempt=attempt,
                                     message=message[:1000] if message else None,
                                     deadline=deadline)
        self.log.info("workflow.host_step", state=state, stage=stage, attempt=attempt,
                      detail=message)

    async def run(self) -> None:
        """Walk the host on from wherever its record says it is; returns when it is finished
        (done, failed, aborted) or no longer armed for this revision."""
        try:
            await self._walk()
        except CommandRejected as exc:
            if exc.code not in ("host_finished", "stale"):
                raise
            # aborted, or armed again, while a step was under way: that step was the last
            self.log.info("workflow.host_released", reason=exc.message)

    async def _walk(self) -> None:
        for _ in range(10_000):  # bounded: every turn advances a stage, an attempt or a wait
            rec = self._record()
            if rec is None or rec["state"] in HOST_TERMINAL:
                return
            last = rec["done"] >= (rec["stages"] or len(self.workflow.stages))
            if rec["state"] == HostState.INSTALLED or (rec["state"] == HostState.CHECKING and last):
                await self._health(rec)
                return
            if isinstance(rec["stage"], int) and \
                    0 < rec["done"] == rec["stage"] < len(self.workflow.stages) and \
                    self.workflow.stages[rec["done"] - 1].health is not None:
                await self._stage_health(rec)  # reported, not yet checked: before the next
                continue
            stage = rec["done"] + 1
            attempt = rec["attempt"] if rec["stage"] == stage else 0
            if rec["state"] in (HostState.BOOTING, HostState.WAITING) and rec["stage"] == stage:
                outcome = await self._wait_stage(stage, attempt)
                if outcome == "silent":
                    await self._rescue(stage, attempt)
                elif outcome == "timeout":
                    await self._timed_out(stage, attempt)
                elif outcome == "lost":
                    await self._failed_attempt(
                        stage, attempt, f"stage {stage}: no sign of a boot "
                        f"{self.evidence_window:.0f} s after a power step whose outcome is "
                        "unknown (the leader running it stopped)")
                continue
            if attempt == 0 and rec.get("running") and not self.workflow.stages[stage - 1].local \
                    and not await self._before_shutdown(rec, stage):
                return  # held: failed, unpowered, still running what it reported
            try:
                await self._boot(stage, attempt)
            except CommandRejected as exc:
                if exc.code != "stage_already_done":
                    raise
                # the machine's phone-home overtook this step (a fast installer): the stage
                # is done, so nothing of it runs; the next turn reads where the host is
                self.log.info("workflow.phone_home_overtook_step", stage=stage)
        raise RuntimeError(f"host {self.name}: runner did not converge")

    # --- one attempt of one stage ---------------------------------------------------------

    async def _boot(self, stage: int, attempt: int) -> None:
        spec: Stage = self.workflow.stages[stage - 1]
        label = f"stage {stage}/{len(self.workflow.stages)} {spec.label}"
        timeout = float(spec.timeout)
        if spec.local and attempt == 0 and (self.power is None or not self._has_bmc()):
            # the installer reboots into its disk by itself; nothing to power
            await self._step(HostState.BOOTING, stage, attempt, f"{label}: waiting for the "
                             "phone-home of its first boot from disk",
                             deadline=self.clock.wall() + timeout)
            return
        try:
            target_for(self.entry)
        except NoBmc:
            await self._step(HostState.WAITING, stage, attempt,
                             f"{label}: no BMC declared: power it on into PXE by hand",
                             deadline=self.clock.wall() + timeout)
            return
        if self.power is None:
            await self._step(HostState.WAITING, stage, attempt,
                             f"{label}: this peer has no BMC secrets file (bmc.secrets_file): "
                             "power it on by hand", deadline=self.clock.wall() + timeout)
            return
        await self._step(HostState.POWERING, stage, attempt, label)
        try:
            if spec.boot is not None:
                await self._settle_legacy(stage, attempt, LEGACY_PXE)
                await self._once(stage, attempt, "boot", self._pxe_boot)
            elif attempt > 0 or await self._is_off():
                # a local stage: the installer reboots into the disk by itself; a retry (or a
                # machine found off) is powered, without PXE
                await self._once(stage, attempt, "boot", self._recorded(self._power_on_or_cycle))
        except StepFailed as exc:
            await self._failed_attempt(stage, attempt, f"{label}: {exc}")
            return
        await self._step(HostState.BOOTING, stage, attempt, f"{label}: waiting for its phone-home",
                         deadline=self.clock.wall() + timeout)

    def _has_bmc(self) -> bool:
        try:
            target_for(self.entry)
        except NoBmc:
            return False
        return True

    async def _power(self, action: str) -> str:
        assert self.power is not None  # no step runs without one
        await asyncio.wait_for(self.power.run(self.entry, action), POWER_TIMEOUT)
        return action

    async def _is_off(self) -> bool:
        assert self.power is not None  # no step runs without one
        result = await asyncio.wait_for(self.power.run(self.entry, "status"), POWER_TIMEOUT)
        return result.get("state") == "off"

    async def _power_on_or_cycle(self) -> str:
        action = "on" if await self._is_off() else "cycle"
        return await self._power(action)

    async def _pxe_boot(self, record: Callable[[], Awaitable[None]]) -> str:
        """Next boot PXE, then on (or cycle if it runs): one step, one BMC login (IPMI);
        "on" or "cycle". Its intent is recorded once the BMC slot is ours: a batch queues
        for a peer's few BMC sessions, and a step recorded while queued, its leader killed,
        waited out the evidence window (outcome unknown) though nothing was sent."""
        assert self.power is not None  # no step runs without one
        result = await asyncio.wait_for(self.power.run(self.entry, "pxe_boot", before=record),
                                        POWER_TIMEOUT)
        return str(result["done"])

    @staticmethod
    def _recorded(run: Callable[[], Awaitable[str]]
                  ) -> Callable[[Callable[[], Awaitable[None]]], Awaitable[str]]:
        """A step that records its intent first, then runs (several BMC calls)."""
        async def step(record: Callable[[], Awaitable[None]]) -> str:
            await record()
            return await run()
        return step

    async def _settle_legacy(self, stage: int, attempt: int, step: str) -> None:
        """An older leader set the boot device in a step of its own and may have died
        during it: that step's outcome is recorded unknown (none stays pending); the boot
        step sets the boot device again (idempotent), as that leader's successor did."""
        iid = intent_id(self.revision, self.name, stage, attempt, step)
        if outcome(self.cluster.intent(iid)) is IntentOutcome.PENDING:
            self.log.warning("workflow.intent_outcome_unknown", intent=iid, step=step,
                             stage=stage, attempt=attempt)
            await self.cluster.record_result(iid, False, unknown_detail(
                "the leader running it stopped; not repeated"))

    async def _once(self, stage: int, attempt: int, step: str, run: Any) -> None:
        """Run a hardware step at most once per (revision, host, stage, attempt, step).
        `run(record)` awaits `record()` (the intent, in Raft) before it sends anything."""
        iid = intent_id(self.revision, self.name, stage, attempt, step)
        existing = self.cluster.intent(iid)
        known = outcome(existing)
        if existing is not None:
            if known is IntentOutcome.PENDING:  # a previous leader died during it: never
                self.log.warning("workflow.intent_outcome_unknown", intent=iid, step=step,
                                 stage=stage, attempt=attempt)  # run it twice
                await self.cluster.record_result(iid, False, unknown_detail(
                    "the leader running it stopped; not repeated"))
                return
            if known in (IntentOutcome.OK, IntentOutcome.UNKNOWN):
                return
            result = existing["result"]
            raise StepFailed((result["detail"] if result is not None else None)
                             or f"{step} failed")
        recorded = []

        async def record() -> None:
            await self.cluster.record_intent(self.name, f"power.{step}", stage=str(stage),
                                             revision=self.revision, intent_id=iid)
            recorded.append(iid)

        try:
            action = await run(record)
        except CommandRejected as exc:
            if recorded:
                raise
            if exc.code == "duplicate_intent":  # recorded by us an instant ago (retried write)
                return await self._once(stage, attempt, step, run)
            raise
        except Exception as exc:
            detail = f"{step}: {exc.__class__.__name__}: {exc}"[:1000]
            if recorded:
                await self.cluster.record_result(iid, False, detail)
            elif isinstance(exc, ClusterError):  # the intent could not be written: not run
                raise
            raise StepFailed(detail) from exc  # (unrecorded: nothing was sent to the BMC)
        await self.cluster.record_result(iid, True, f"power {action}")

    # --- waiting ---------------------------------------------------------------------------

    async def _wait_stage(self, stage: int, attempt: int) -> str:
        """"reported" once the host reported `stage` (or is finished); "timeout" when the
        stage's timeout has passed since this leader started waiting; "lost" when the stage's
        boot step has an unknown outcome and no peer served the machine its script after it
        (in Raft order) within `evidence_window`: that power action never happened, and
        waiting for the whole stage timeout would only delay the retry; "silent" when the
        machine fetched its script but did not load the stage's kernel and initrds within
        `silence_window` (stages with a generated script), or never fetched its script
        within `evidence_window` after a power step that worked (once per attempt)."""
        spec = self.workflow.stages[stage - 1]
        clock = self.clock
        started = self.watch.setdefault((self.revision, self.name, stage, attempt),
                                        clock.monotonic())
        boot = self.cluster.intent(intent_id(self.revision, self.name, stage, attempt, "boot"))
        after = boot["seq"] if boot is not None else 0  # evidence must follow the power step
        unknown = outcome(boot) is IntentOutcome.UNKNOWN
        may_rescue = (boot is not None and spec.boot is not None
                      and not self._rescue_spent(stage, attempt))
        script_seq, silent_since = None, started
        while True:
            rec = self._record()
            if rec is None or rec["state"] in HOST_TERMINAL or rec["done"] >= stage:
                return "reported"
            now = clock.monotonic()
            if now >= started + spec.timeout:
                return "timeout"
            seen = rec.get("seen_seq") if rec.get("seen_stage") == stage else None
            if seen is not None and seen <= after:
                seen = None  # a script fetched before this attempt's power step
            if seen is None and now >= started + self.evidence_window:
                if unknown:
                    return "lost"
                if may_rescue:  # powered, but never asked for its script (a dead peer's
                    return "silent"  # DHCP answer, a firmware that gave up)
            if may_rescue and seen is not None and stage in self.marked_stages:
                loaded = rec.get("loaded_seq") if rec.get("loaded_stage") == stage else None
                if loaded is not None and loaded > seen:
                    may_rescue = False  # on its way: kernel and initrds loaded
                elif seen != script_seq:  # a (new) script fetch: it is alive, watch again
                    script_seq, silent_since = seen, now
                elif now >= silent_since + self.silence_window:
                    return "silent"
            wake = started + spec.timeout - now
            await self.cluster.wait_change(min(wake, 2.0))

    def _rescue_spent(self, stage: int, attempt: int) -> bool:
        """Whether this attempt's one rescue is used up: its power-cycle was recorded
        (whatever came of it: an unknown outcome is never repeated), or its BMC refused the
        boot device (an older leader's separate step). A rescue whose leader stopped before
        the power-cycle (such a boot device step unfinished, of unknown outcome, or done) is
        not: the next leader finishes it;
        counting it as spent left the machine at "No bootable device" until the stage
        timeout, under leaders that changed while it was rescued."""
        if self.cluster.intent(intent_id(self.revision, self.name, stage, attempt,
                                         RESCUE_BOOT)) is not None:
            return True
        pxe = self.cluster.intent(intent_id(self.revision, self.name, stage, attempt, RESCUE))
        return outcome(pxe) is IntentOutcome.FAILED

    async def _rescue(self, stage: int, attempt: int) -> None:
        """Power-cycle a silent machine into PXE, once per attempt of a stage; the stage's
        timeout keeps running."""
        spec = self.workflow.stages[stage - 1]
        label = f"stage {stage}/{len(self.workflow.stages)} {spec.label}"
        rec = self._record()
        boot = self.cluster.intent(intent_id(self.revision, self.name, stage, attempt, "boot"))
        fetched = (rec is not None and rec.get("seen_stage") == stage
                   and rec.get("seen_seq", 0) > (boot["seq"] if boot is not None else 0))
        why = (f"silent {self.silence_window:.0f} s after fetching its script" if fetched
               else f"no script fetched {self.evidence_window:.0f} s after it was powered")
        self.log.warning("workflow.host_silent", stage=stage, attempt=attempt, why=why)
        try:
            await self._settle_legacy(stage, attempt, RESCUE)
            await self._once(stage, attempt, RESCUE_BOOT, self._pxe_boot)
            note = "power-cycled into PXE once"
        except StepFailed as exc:
            note = f"its BMC refused the power-cycle ({exc}); waiting for the stage timeout"
        try:
            await self._step(HostState.BOOTING, stage, attempt, f"{label}: {why}; {note}",
                             deadline=rec.get("deadline") if rec is not None else None)
        except CommandRejected as exc:
            if exc.code != "stage_already_done":  # it reported meanwhile: nothing to say
                raise

    async def _timed_out(self, stage: int, attempt: int) -> None:
        spec = self.workflow.stages[stage - 1]
        await self._failed_attempt(stage, attempt, f"stage {stage} {spec.label}: no phone-home "
                                   f"within {spec.timeout} s")

    async def _failed_attempt(self, stage: int, attempt: int, why: str) -> None:
        spec = self.workflow.stages[stage - 1]
        if attempt < spec.retries:
            await self._step(HostState.RETRYING, stage, attempt + 1,
                             f"{why}; retry {attempt + 1} of {spec.retries}")
        else:
            await self._step(HostState.FAILED, stage, attempt, f"{why}; no retries left")

    async def _check(self, check: HealthCheck, stage: int, attempt: int, what: str
                     ) -> tuple[bool, str]:
        iface = self.entry.host.boot_interface()
        address = str(iface.ipv4) if iface else ""
        await self._step(HostState.CHECKING, stage, attempt,
                         f"{what}: {check.type} {address}:{check.port}")
        ok, detail = await wait_healthy(check, address)
        return ok, f"{what}: {detail}" if what != "health" else detail

    async def _stage_health(self, rec: HostRecord) -> None:
        """The health check of the stage that just reported: the next stage is powered only
        once it passes. A machine that boots its next stage by itself (a local stage) is not
        held back; the check still fails the host if it does not pass."""
        stage = rec["done"]
        check = self.workflow.stages[stage - 1].health
        assert check is not None
        ok, detail = await self._check(check, stage, rec["attempt"], f"stage {stage} health")
        if not ok:
            await self._step(HostState.FAILED, stage, rec["attempt"], detail)
            return
        now = self._record()
        if now is not None and now.get("done") == stage and now["state"] not in HOST_TERMINAL:
            await self._step(HostState.QUEUED, stage + 1, 0, detail)

    # --- before the leader powers it: the running stage's before_shutdown ----------------

    async def _hooks_of(self, revision: str | None, stage: int
                        ) -> tuple[list[ShutdownHook], str]:
        """The hooks of `stage` of `revision`, and the address the machine has there; none
        when the machine reported its stage without a revision (it cannot be looked up)."""
        iface = self.entry.host.boot_interface()
        found: tuple[Workflow, str] | None = (self.workflow, str(iface.ipv4) if iface else "")
        if revision != self.revision:
            found = (await self.running_at(revision)
                     if self.running_at and revision is not None else None)
        if found is None or not 0 < stage <= len(found[0].stages):
            return [], ""
        return list(found[0].stages[stage - 1].before_shutdown), found[1]

    async def _before_shutdown(self, rec: HostRecord, stage: int) -> bool:
        """Run the `before_shutdown` hooks of the stage the machine runs (`running` in its
        record: the stage it last reported, with no power step since, kept across armings)
        before this leader powers it into `stage`. Each hook is an intent, so it is journaled
        and one that passed is not run again by a later leader (one whose leader died during
        it is: a request, not a power action). A machine its BMC says is off has nothing to
        shut down: its hooks are recorded as skipped. False when a hook failed: the host is
        failed, unpowered; arming it again runs the hooks again."""
        running = rec["running"]
        hooks, address = await self._hooks_of(running["revision"], running["stage"])
        where = f"stage {running['stage']}" + (
            "" if running["revision"] == self.revision else
            f" of revision {(running['revision'] or 'unknown')[:12]}")
        ids = [intent_id(self.revision, self.name, stage, 0,
                         f"before_shutdown-{running['revision']}-{running['stage']}-{i}-"
                         f"{rec['armed_seq']}") for i in range(len(hooks))]
        todo = [(h, i) for h, i in zip(hooks, ids, strict=True)
                if outcome(self.cluster.intent(i)) is not IntentOutcome.OK]
        if not todo:
            return True
        off = self.power is not None and self._has_bmc() and await self._quietly_off()
        for hook, iid in todo:
            what = f"{where} before_shutdown {hook.label}"
            existing = self.cluster.intent(iid)
            if existing is not None and existing["result"] is not None:  # failed: held
                ok, detail = False, f"{what}: {existing['result']['detail']}"
            else:
                if existing is None:
                    try:
                        await self.cluster.record_intent(
                            self.name, f"hook.before_shutdown {hook.label}"[:200],
                            stage=str(running["stage"]), revision=self.revision,
                            intent_id=iid)
                    except CommandRejected as exc:
                        if exc.code != "duplicate_intent":  # not a retried write of ours
                            raise
                if off:
                    ok, detail = True, "skipped: its BMC says the machine is off"
                else:
                    await self._step(HostState.CHECKING, stage, 0, f"{what}: {address}")
                    ok, detail = await wait_healthy(hook, address)
                await self.cluster.record_result(iid, ok, detail[:1000])
                detail = f"{what}: {detail}"
            self.log.info("workflow.before_shutdown", hook=hook.label, ok=ok, detail=detail)
            if not ok:
                await self._step(HostState.FAILED, stage, 0, f"{detail}; not powered: it still "
                                 f"runs {where}; arming it again runs the hooks again")
                return False
        return True

    async def _quietly_off(self) -> bool:
        """Off per its BMC; a BMC that does not answer says nothing (the hooks run)."""
        try:
            return await self._is_off()
        except (PowerError, OSError, TimeoutError) as exc:
            self.log.info("workflow.status_unknown", error=f"{exc.__class__.__name__}: {exc}")
            return False

    async def _health(self, rec: HostRecord) -> None:
        stage = rec["stages"] or len(self.workflow.stages)
        checks = [(c, f"stage {stage} health") for c in
                  [self.workflow.stages[stage - 1].health] if c is not None]
        if self.workflow.rollout.health is not None:
            checks.append((self.workflow.rollout.health, "health"))
        detail = "workflow done"
        for check, what in checks:
            ok, detail = await self._check(check, stage, rec["attempt"], what)
            if not ok:
                break
        else:
            ok = True
        await self._step(HostState.DONE if ok else HostState.FAILED, stage, rec["attempt"], detail)
