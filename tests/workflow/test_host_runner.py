"""The host runner against a real Raft node and a real BMC (OpenIPMI's ipmi_sim on loopback,
whose "machine" is a process it starts on power on).

- A new leader that finds intents without results (the old leader died while running them)
  does not run them again: it records their outcome as unknown and waits for the phone-home.
- Whether such a step happened shows in the machine fetching its script: with that evidence
  the leader waits for the phone-home; without it (within the evidence window) the step was
  lost and the stage's next attempt runs.
- A BMC that refuses a step fails the attempt; the stage is retried, then the host is failed,
  with the BMC's answer in the record; nothing after the refused step runs.
- A machine its BMC says is off has nothing to shut down: the `before_shutdown` hooks of the
  stage it last reported are recorded as skipped, and the power step that follows ends
  "what it runs" in its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path

import pytest
from wf_sot import LabHost, write_sot

from appliance.cluster import Cluster, ClusterSettings
from appliance.power.manager import PowerManager
from appliance.sot.revision import compile_directory
from appliance.workflow.host_run import HostRunner, intent_id
from tests.support.ipmi_sim_rig import PASSWORD, run_sim
from tools.rigs.raft_node import free_ports

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("ipmi_sim") is None, reason="no ipmi_sim")]


@pytest.fixture
async def node(tmp_path: Path):
    password = tmp_path / "raft.key"
    password.write_text("cmFmdC1rZXktZm9yLXJ1bm5lcg==\n")
    password.chmod(0o600)
    address = f"127.0.0.1:{free_ports(1)[0]}"
    cluster = Cluster(ClusterSettings(address, (address,), tmp_path / "raft", password))
    await cluster.start()
    await cluster.wait_for_leader(10)
    try:
        yield cluster
    finally:
        await cluster.stop()


def setup(tmp_path: Path, port: int, **sot):
    (tmp_path / "bmc").mkdir(exist_ok=True)
    blob = tmp_path / "blob"
    blob.write_bytes(b"x")
    extra, sot = sot, tmp_path / "sot"
    host = LabHost("n1", "workers", "52:54:00:77:20:01", "198.18.0.51", ("127.0.0.1", port))
    write_sot(sot, [host], blob, blob, peers=["198.18.0.2"], http_port=8080, stage_timeout=10,
              retries=1, depends=False, **extra)
    revision = compile_directory(str(sot))
    assert revision.valid, revision.problems
    secrets = tmp_path / "bmc.yaml"
    secrets.write_text(f'lab-ipmi: {{user: admin, password: "{PASSWORD}"}}\n')
    secrets.chmod(0o600)
    entry = revision.sot.hosts["n1"]
    return revision, entry, revision.sot.workflows["workers"], PowerManager(secrets, 2)


@pytest.fixture
async def armed(node: Cluster, tmp_path: Path):
    """A real BMC, and host n1 (behind it) armed for a revision: (sim, sha, runner)."""
    (tmp_path / "bmc").mkdir()
    sims = run_sim(tmp_path / "bmc")
    sim = next(sims)
    revision, entry, workflow, power = setup(tmp_path, sim.port)
    await node.arm_host("n1", revision.sha, 2, by="test")
    runner = HostRunner(node, power, entry, workflow, revision.sha, evidence_window=3)
    try:
        yield sim, revision.sha, runner
    finally:
        power.close()
        sims.close()


async def until(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return value


async def test_a_new_leader_never_repeats_a_step_it_cannot_know_the_outcome_of(
        node: Cluster, armed) -> None:
    sim, sha, runner = armed
    await leave_unknown(node, sha)
    task = asyncio.create_task(runner.run())
    await until(lambda: node.host("n1")["state"] == "booting", "waiting for stage 1")
    for step in ("pxe", "boot"):
        result = node.intent(intent_id(sha, "n1", 1, 0, step))["result"]
        assert result["ok"] is False and "outcome unknown" in result["detail"], result
    assert sim.machine_pids() == []  # the BMC was never asked to power anything
    assert node.pending_intents("n1") == []
    # the machine did boot after all: its phone-homes (both stages) move it to done
    for stage in (1, 2):  # in order: a stage is reported only after the one before it
        await node.submit({"op": "host.stage_done", "op_id": f"ph-1-{stage}",
                           "at": time.time(), "name": "n1", "stage": stage, "stages": 2,
                           "revision": sha})
    await asyncio.wait_for(task, 20)
    assert node.host("n1")["state"] == "done"
    assert sim.machine_pids() == []


async def test_a_refused_bmc_step_is_retried_then_fails_the_host(
        node: Cluster, armed) -> None:
    sim, sha, runner = armed
    await asyncio.wait_for(runner.run(), 60)
    record = node.host("n1")
    assert record["state"] == "failed" and record["attempt"] == 1, record
    # ipmi_sim without a chassis program refuses Set System Boot Options: the boot step
    # (boot device, then power, in one session) stops there
    assert "boot from pxe (set boot device network) failed" in record["message"], record
    assert "no retries left" in record["message"], record
    results = [node.intent(intent_id(sha, "n1", 1, a, "boot"))["result"] for a in (0, 1)]
    assert [r["ok"] for r in results] == [False, False], results
    assert sim.machine_pids() == []  # the power command was never sent


async def powered(node: Cluster, sha: str) -> None:
    """What a leader leaves once stage 1's power steps worked: it waits for the machine."""
    for step in ("pxe", "boot"):
        iid = intent_id(sha, "n1", 1, 0, step)
        await node.record_intent("n1", f"power.{step}", stage="1", revision=sha, intent_id=iid)
        await node.record_result(iid, True, "power done")
    await node.step_host("n1", sha, "booting", 1, message="powered")


async def leave_unknown(node: Cluster, sha: str) -> None:
    """What a leader that died during stage 1's power steps leaves behind."""
    for step in ("pxe", "boot"):
        await node.record_intent("n1", f"power.{step}", stage="1", revision=sha,
                                 intent_id=intent_id(sha, "n1", 1, 0, step))
    await node.step_host("n1", sha, "powering", 1, message="old leader")


async def test_a_lost_power_step_is_retried_after_the_evidence_window(
        node: Cluster, armed) -> None:
    _, sha, runner = armed
    await leave_unknown(node, sha)
    await asyncio.wait_for(runner.run(), 60)  # lost, retried, and the retry's PXE refused
    kinds = [(e["kind"], e.get("message") or "") for e in node.events_since(0, 1000)["events"]
             if e.get("host") == "n1" and e["kind"].startswith("host.")]
    assert ("host.retrying", "stage 1: no sign of a boot 3 s after a power step whose outcome "
            "is unknown (the leader running it stopped); retry 1 of 1") in kinds, kinds
    retry = node.intent(intent_id(sha, "n1", 1, 1, "boot"))
    assert retry is not None and retry["result"]["ok"] is False  # attempt 1 did run
    assert node.host("n1")["state"] == "failed"


async def test_a_machine_seen_booting_is_waited_for_not_power_cycled_again(
        node: Cluster, armed) -> None:
    sim, sha, runner = armed
    await leave_unknown(node, sha)
    task = asyncio.create_task(runner.run())
    await until(lambda: node.host("n1")["state"] == "booting", "waiting for stage 1")
    # a peer served the machine its stage 1 script: the power step did happen
    await node.submit({"op": "host.seen", "op_id": "seen-1", "at": time.time(), "name": "n1",
                       "stage": 1, "revision": sha})
    await asyncio.sleep(5)  # past the 3 s evidence window
    record = node.host("n1")
    assert (record["state"], record["attempt"]) == ("booting", 0), record
    assert node.intent(intent_id(sha, "n1", 1, 1, "boot")) is None
    for stage in (1, 2):  # in order: a stage is reported only after the one before it
        await node.submit({"op": "host.stage_done", "op_id": f"ph-2-{stage}",
                           "at": time.time(), "name": "n1", "stage": stage, "stages": 2,
                           "revision": sha})
    await asyncio.wait_for(task, 20)
    assert node.host("n1")["state"] == "done" and sim.machine_pids() == []


async def seen(node: Cluster, sha: str, step: str, n: int) -> None:
    """What a peer's data plane replicates when the machine fetches its stage 1 script
    (step "script") or has loaded the stage's kernel and initrds (step "loaded")."""
    await node.submit({"op": "host.seen", "op_id": f"seen-{step}-{n}", "at": time.time(),
                       "name": "n1", "stage": 1, "revision": sha, "step": step})


def host_events(node: Cluster) -> list[tuple[str, str]]:
    return [(e["kind"], e.get("message") or "") for e in node.events_since(0, 1000)["events"]
            if e.get("host") == "n1" and e["kind"].startswith("host.")]


async def test_a_machine_silent_after_its_script_is_power_cycled_once_before_the_timeout(
        node: Cluster, armed) -> None:
    _, sha, runner = armed
    runner.marked_stages, runner.silence_window = frozenset({1, 2}), 2.0
    await leave_unknown(node, sha)
    task = asyncio.create_task(runner.run())
    await until(lambda: node.host("n1")["state"] == "booting", "waiting for stage 1")
    await seen(node, sha, "script", 1)  # then nothing: the peer serving it died, say
    rescue = intent_id(sha, "n1", 1, 0, "rescue-boot")
    await until(lambda: (node.intent(rescue) or {}).get("result"), "the rescue", timeout=8)
    # long before the stage's 10 s timeout; ipmi_sim (no chassis program) refuses it
    assert node.intent(rescue)["result"]["ok"] is False
    await asyncio.wait_for(task, 60)
    kinds = host_events(node)
    silent = [m for k, m in kinds if "silent 2 s after fetching its script" in m]
    assert len(silent) == 1, kinds  # once per attempt, not once per window
    assert "its BMC refused the power-cycle" in silent[0]
    timeout = kinds.index(("host.retrying", "stage 1 firmware: no phone-home within 10 s; "
                           "retry 1 of 1"))
    assert kinds.index(("host.booting", silent[0])) < timeout
    assert "boot from pxe (set boot device network)" in node.intent(rescue)["result"]["detail"]


async def test_a_machine_that_loaded_its_kernel_is_left_alone(node: Cluster, armed) -> None:
    sim, sha, runner = armed
    runner.marked_stages, runner.silence_window = frozenset({1, 2}), 2.0
    await leave_unknown(node, sha)
    task = asyncio.create_task(runner.run())
    await until(lambda: node.host("n1")["state"] == "booting", "waiting for stage 1")
    await seen(node, sha, "script", 1)
    await seen(node, sha, "loaded", 1)
    await asyncio.sleep(4)  # twice the silence window
    assert node.intent(intent_id(sha, "n1", 1, 0, "rescue-boot")) is None
    for stage in (1, 2):  # in order: a stage is reported only after the one before it
        await node.submit({"op": "host.stage_done", "op_id": f"ph-3-{stage}",
                           "at": time.time(), "name": "n1", "stage": stage, "stages": 2,
                           "revision": sha})
    await asyncio.wait_for(task, 20)
    assert node.host("n1")["state"] == "done" and sim.machine_pids() == []


async def test_a_stage_timeout_runs_on_this_leaders_monotonic_clock(
        node: Cluster, armed) -> None:
    """A previous leader whose wall clock ran an hour ahead powered the machine and wrote a
    deadline that is already past here: the stage still gets its whole timeout, measured on
    this leader's monotonic clock from when it started waiting."""
    _, sha, runner = armed
    for step in ("pxe", "boot"):
        iid = intent_id(sha, "n1", 1, 0, step)
        await node.record_intent("n1", f"power.{step}", stage="1", revision=sha, intent_id=iid)
        await node.record_result(iid, True, "power done")
    await node.step_host("n1", sha, "booting", 1, message="old leader",
                         deadline=time.time() - 3600)
    t0 = time.monotonic()
    await asyncio.wait_for(runner.run(), 60)  # timed out, retried, the retry refused
    assert time.monotonic() - t0 >= 10, "the recorded deadline was used"
    assert ("host.retrying", "stage 1 firmware: no phone-home within 10 s; retry 1 of 1"
            ) in host_events(node)


async def test_evidence_is_ordered_by_raft_not_by_the_serving_peers_clock(
        node: Cluster, armed) -> None:
    """A script fetch replicated before the power step (in Raft order) is no evidence of
    it, however late the clock of the peer that served it says it was."""
    _, sha, runner = armed
    await node.submit({"op": "host.seen", "op_id": "seen-early", "at": time.time() + 3600,
                       "name": "n1", "stage": 1, "revision": sha})
    await leave_unknown(node, sha)
    await asyncio.wait_for(runner.run(), 60)  # lost after 3 s, retried, the retry refused
    assert ("host.retrying", "stage 1: no sign of a boot 3 s after a power step whose outcome "
            "is unknown (the leader running it stopped); retry 1 of 1") in host_events(node)


async def test_a_machine_powered_that_never_asks_for_its_script_is_rescued_once(
        node: Cluster, armed) -> None:
    """The power step worked (its result is recorded) but no peer served the machine its
    script within the evidence window (the peer whose DHCP answer it took died): one
    power-cycle into PXE, then the stage timeout as usual."""
    _, sha, runner = armed
    await powered(node, sha)
    await asyncio.wait_for(runner.run(), 60)
    kinds = host_events(node)
    rescues = [m for k, m in kinds if "no script fetched 3 s after it was powered" in m]
    assert len(rescues) == 1, kinds
    assert node.intent(intent_id(sha, "n1", 1, 0, "rescue-boot"))["result"]["ok"] is False


async def test_a_rescue_its_leader_stopped_before_the_power_cycle_is_finished_by_the_next(
        node: Cluster, armed) -> None:
    """An older leader that began the rescue (its separate PXE step recorded, no result, no
    power-cycle) lost its leadership: the next one does not count the rescue as spent. It
    records the PXE step's outcome as unknown (never repeated) and power-cycles the machine
    into PXE, once."""
    _, sha, runner = armed
    await powered(node, sha)
    rescue = intent_id(sha, "n1", 1, 0, "rescue-pxe")
    await node.record_intent("n1", "power.rescue-pxe", stage="1", revision=sha,
                             intent_id=rescue)
    await asyncio.wait_for(runner.run(), 60)
    result = node.intent(rescue)["result"]
    assert result["ok"] is False and "outcome unknown" in result["detail"], result
    cycle = node.intent(intent_id(sha, "n1", 1, 0, "rescue-boot"))
    assert cycle is not None and cycle["result"] is not None, cycle
    recorded = [e["message"] for e in node.events_since(0, 1000)["events"]
                if e.get("host") == "n1" and e["kind"] == "intent.recorded"
                and "rescue" in (e.get("message") or "")]
    assert recorded == ["power.rescue-pxe", "power.rescue-boot"], recorded


async def test_before_shutdown_is_skipped_for_a_machine_its_bmc_says_is_off(
        node: Cluster, tmp_path: Path) -> None:
    (tmp_path / "bmc").mkdir()
    sims = run_sim(tmp_path / "bmc")
    sim = next(sims)
    # a hook no machine could answer (198.18.0.51 is nowhere): it must not even be tried
    revision, entry, workflow, power = setup(
        tmp_path, sim.port, before_shutdown={"firmware": "[{name: drain, type: tcp, port: 9}]"})
    sha = revision.sha
    try:
        await node.arm_host("n1", sha, 2, by="test")
        await node.submit({"op": "host.stage_done", "op_id": "ph-off-1", "at": time.time(),
                           "name": "n1", "stage": 1, "stages": 2, "revision": sha})
        assert node.host("n1")["running"] == {"revision": sha, "stage": 1}
        runner = HostRunner(node, power, entry, workflow, sha, evidence_window=3)
        await asyncio.wait_for(runner.run(), 60)  # then stage 2's PXE, refused by ipmi_sim
        hook = node.intent(intent_id(sha, "n1", 2, 0, f"before_shutdown-{sha}-1-0-"
                                     f"{node.host('n1')['armed_seq']}"))
        assert hook["action"] == "hook.before_shutdown drain (tcp :9)", hook
        assert hook["result"]["ok"] is True, hook
        assert hook["result"]["detail"] == "skipped: its BMC says the machine is off", hook
        assert node.intent(intent_id(sha, "n1", 2, 0, "boot")) is not None  # then powered
        assert "running" not in node.host("n1")  # powered: no longer what it reported
        assert sim.machine_pids() == []
    finally:
        power.close()
        sims.close()


async def test_a_step_still_queued_for_its_bmc_is_not_recorded(node: Cluster, armed) -> None:
    """A boot step records its intent only once its BMC session slot is held: a runner stopped
    while queued (its leader lost, say) leaves no intent, so the next leader runs the step
    at once instead of waiting out the evidence window for a step that never went out."""
    sim, sha, runner = armed
    slots = runner.power.limiter
    for _ in range(2):  # the peer's two BMC sessions, busy elsewhere
        await slots.acquire()
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: node.host("n1")["state"] == "powering", "the boot step")
        await asyncio.sleep(1.0)
        assert node.intent(intent_id(sha, "n1", 1, 0, "boot")) is None  # queued: unrecorded
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _ in range(2):
            slots.release()
    assert node.pending_intents("n1") == [] and sim.machine_pids() == []
    # the next leader's runner: the step runs (ipmi_sim refuses its boot device), recorded
    # with the BMC's answer, not as of unknown outcome
    await asyncio.wait_for(runner.run(), 60)
    result = node.intent(intent_id(sha, "n1", 1, 0, "boot"))["result"]
    assert result["ok"] is False and "set boot device network" in result["detail"], result
