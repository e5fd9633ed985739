"""End to end, no human step but the approvals: a site of 3 peers, 3 machines (1 UEFI, 2 BIOS)
behind 3 IPMI BMCs, a SoT pushed to git.

Each peer runs `vaq-peer serve` in its own network namespace on the boot bridge (DHCP, TFTP,
HTTP, Raft); each machine is a QEMU guest powered only through its own `ipmi_sim` BMC on the
same bridge (tools/rigs/bmc_guest.py); the test talks to the API from an `ops` namespace.

1. The SoT (etcd: 1 host, workers: 2 hosts, a two-stage workflow of network boots of the test
   OS, which phones home and then stays up like an installed machine) is pushed and approved.
   The leader powers every machine on into PXE for stage 1, then power-cycles it into PXE for
   stage 2; each reports done. Meanwhile a follower is cut off for CUT_S and healed: the
   leader keeps its term and its runners (pre-vote).
2. A change to the workers' install stage with `max_concurrent: 1` is pushed and approved.
   As soon as the leader has powered the first worker on, the leader is killed (SIGKILL).
   The rollout finishes under the new leader.
3. Asserted from the replicated events: the workers were never both between armed and done;
   from the intents: one boot power action per host, revision and stage (none repeated,
   none retried); from the machines themselves (the BMC's power-on log): the same count.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from wf_site import BMC_PASSWORD, PEERS, Site, approve, events, powered_on, rollout_state
from wf_sot import LabHost, init_repo, push, write_sot

from tests.support.waiting import until
from tools.rigs.bmc_guest import BmcGuest
from tools.rigs.bmc_guest import unavailable_reason as bmc_unavailable
from tools.rigs.netns import NetnsRig
from tools.rigs.netns import unavailable_reason as netns_unavailable
from tools.rigs.qemu_guest import RouterAdvertiser
from tools.rigs.test_kernel import build_test_os

pytestmark = [pytest.mark.slow, pytest.mark.root]
HOSTS = [LabHost("etcd-1", "etcd", "52:54:00:e6:00:01", "198.18.0.11", ("198.18.0.101", 623)),
         LabHost("work-1", "workers", "52:54:00:e6:00:02", "198.18.0.12",
                 ("198.18.0.102", 623)),
         LabHost("work-2", "workers", "52:54:00:e6:00:03", "198.18.0.13",
                 ("198.18.0.103", 623))]
WORKERS = ("work-1", "work-2")
# etcd-1 is UEFI (OVMF's own PXE, then snponly.efi by TFTP from a peer), the workers BIOS
FIRMWARE = {"etcd-1": "uefi", "work-1": "bios", "work-2": "bios"}
STAGE_TIMEOUT = 400  # a stage under TCG takes 20-90 s here; a retry would fail the test anyway
CUT_S = 45  # many election timeouts (0.3-0.6 s); the 5 minutes is a run by hand


def cut_a_follower_and_heal(site: Site) -> int:
    """Cut a follower off for CUT_S, heal it: the leader keeps its term (the rejoining peer
    deposes no one: pre-vote) and its runners never stop. Returns the leader."""
    # one read of /v1/leader can come back empty on a loaded host (a slow answer): wait,
    # bounded, for a peer to name the leader
    until(lambda: site.leader() is not None, "a leader before the cut", 30)
    leader = site.leader()
    assert leader is not None
    term = site.api("/v1/leader", peer=leader)["term"]
    cut = next(i for i in range(3) if i != leader)
    stopped = site.logs[leader].read_text().count("workflow.runners_stopped")
    site.cut(cut)
    time.sleep(CUT_S)
    site.cut(cut, up=True)
    time.sleep(10)
    after = site.api("/v1/leader", peer=leader)
    rejoined = site.api("/v1/leader", peer=cut)
    print(f"\npeer-{cut + 1} cut off {CUT_S} s in a running rollout: leader peer-{leader + 1} "
          f"term {term} -> {after['term']}; the rejoined peer sees term {rejoined['term']}")
    assert (after["leader"], after["term"]) == (f"{PEERS[leader]}:7001", term), after
    assert rejoined["term"] == term, rejoined
    assert site.logs[leader].read_text().count("workflow.runners_stopped") == stopped
    return leader


@pytest.fixture(scope="module")
def guest_os():
    return build_test_os()


def test_three_peers_install_then_roll_an_update_through_a_leader_kill(
        guest_os, tmp_path: Path) -> None:
    reason = netns_unavailable() or bmc_unavailable("bios") or bmc_unavailable("uefi")
    if reason:
        pytest.skip(reason)
    work, bare = init_repo(tmp_path)
    write_sot(work, HOSTS, guest_os.kernel, guest_os.initrd, peers=PEERS, http_port=8080,
              stage_timeout=STAGE_TIMEOUT, retries=1, worker_concurrency=2, depends=False,
              stay=True)
    rev1 = push(work, "lab: etcd and workers")
    with NetnsRig() as rig:
        site = Site(rig, tmp_path, bare)
        machines = {h.name: BmcGuest(site.lan, "br0", h.mac, h.bmc[0], password=BMC_PASSWORD,
                                     firmware=FIRMWARE[h.name],
                                     workdir=tmp_path / f"guest-{h.name}") for h in HOSTS}
        advertiser = RouterAdvertiser(site.lan, "br0")

        def debug() -> str:
            progress = site.try_api("/v1/rollouts/current")
            consoles = "\n".join(f"--- {n}\n{m.console_tail(15)}" for n, m in machines.items())
            return f"{json.dumps(progress, indent=1)[:4000]}\n{site.tails()}\n{consoles}"

        try:
            advertiser.start()
            for machine in machines.values():
                machine.start()
            until(lambda: site.leader() is not None, "a leader", 60, debug)

            # 1. first install: every machine powered on, two stages, done; meanwhile a
            # follower is cut off and healed without disturbing the leader
            approve(site, rev1)
            until(lambda: powered_on(site, rev1), "a machine powered on", 120, debug)
            cut_a_follower_and_heal(site)
            until(lambda: rollout_state(site, rev1) == "done", "the first rollout done",
                  2 * STAGE_TIMEOUT, debug)
            records = {h["name"]: h for h in site.api("/v1/hosts")["hosts"]}
            for h in HOSTS:
                rec = records[h.name]
                assert (rec["state"], rec["done"], rec["revision"]) == ("done", 2, rev1), rec
            assert {n: m.power_ons() for n, m in machines.items()} == {
                h.name: 2 for h in HOSTS}

            # 2. the update of the workers, one at a time; the leader dies in the middle
            write_sot(work, HOSTS, guest_os.kernel, guest_os.initrd, peers=PEERS,
                      http_port=8080, stage_timeout=STAGE_TIMEOUT, retries=1,
                      worker_concurrency=1, depends=False, install_note="v2", stay=True)
            rev2 = push(work, "workers: new install, one at a time")
            approve(site, rev2)
            plan = site.api(f"/v1/rollouts/{rev2}")
            batches = [[h["host"] for h in b] for c in plan["clusters"] for b in c["batches"]]
            assert batches == [["work-1"], ["work-2"]], plan
            first_boot = until(
                lambda: next((e for e in events(site)
                              if e["kind"] == "intent.ok" and e.get("revision") == rev2
                              and e.get("data", {}).get("action") == "power.boot"), None),
                "the first worker powered on by the update", 120, debug)
            killed = site.leader()
            assert killed is not None
            site.kill(killed)
            print(f"killed the leader peer-{killed + 1} after {first_boot['host']} was powered "
                  "on for stage 1")
            until(lambda: site.leader() not in (None, killed), "a new leader", 30, debug)
            until(lambda: rollout_state(site, rev2) == "done", "the update rollout done",
                  4 * STAGE_TIMEOUT, debug)
            journal = events(site)
            records = {h["name"]: h for h in site.api("/v1/hosts")["hosts"]}
        finally:
            advertiser.close()
            for machine in machines.values():
                machine.close()
            site.close()

    (tmp_path / "events.json").write_text(json.dumps(journal, indent=1))
    for name in WORKERS:
        assert (records[name]["state"], records[name]["revision"]) == ("done", rev2)
    assert records["etcd-1"]["revision"] == rev1  # not in the update: left alone

    # never two workers down at once: by Raft order, one's armed..done holds no other's
    spans = {}
    for name in WORKERS:
        seqs = [e["seq"] for e in journal if e.get("host") == name
                and e.get("revision") == rev2 and e["kind"] in ("host.armed", "host.done")]
        assert len(seqs) == 2, (name, seqs)
        spans[name] = seqs
    (a0, a1), (b0, b1) = spans["work-1"], spans["work-2"]
    assert a1 < b0 or b1 < a0, spans

    # one boot power action per host, revision and stage; never an unknown or failed one
    boots = Counter((e["host"], e["revision"], e["data"]["stage"]) for e in journal
                    if e["kind"] == "intent.recorded" and e.get("message") == "power.boot")
    expected = {(h.name, rev1, s) for h in HOSTS for s in ("1", "2")}
    expected |= {(n, rev2, s) for n in WORKERS for s in ("1", "2")}
    assert set(boots) == expected and set(boots.values()) == {1}, boots
    # the machines stay up after each stage (like installed ones): stage 1 of the first
    # install powers them on, every later stage power-cycles a running machine
    stage_of = {e["data"]["intent_id"]: e["data"]["stage"] for e in journal
                if e["kind"] == "intent.recorded"}
    actions = {(e["host"], e["revision"], stage_of[e["data"]["intent_id"]]): e["message"]
               for e in journal
               if e["kind"] == "intent.ok" and e["data"].get("action") == "power.boot"}
    assert len(actions) == len(expected), actions
    for (name, rev, stage), detail in actions.items():
        first = rev == rev1 and stage == "1"
        assert detail == ("power on" if first else "power cycle"), (name, rev, stage, detail)
    failed = [e for e in journal if e["kind"] == "intent.failed"]
    assert not failed or all("outcome unknown" in (e.get("message") or "") and
                             e["data"]["action"] == "power.pxe" for e in failed), failed
    # the machines agree: each was started exactly once per stage it ran
    assert {n: m.power_ons() for n, m in machines.items()} == {
        "etcd-1": 2, "work-1": 4, "work-2": 4}
    assert not [e for e in journal if e["kind"] in ("host.retrying", "host.failed")]
    # every stage script fetched was followed by the machine's "kernel and initrds loaded"
    # mark, replicated from whichever peer served it: no machine looked silent
    fetched = {(e["host"], e["revision"], e["data"]["stage"]) for e in journal
               if e["kind"] == "host.booting_seen"}
    loaded = {(e["host"], e["revision"], e["data"]["stage"]) for e in journal
              if e["kind"] == "host.loaded"}
    assert fetched and fetched == loaded, (fetched, loaded)
    assert not [e for e in journal if "rescue" in (e.get("message") or "")]


def test_peers_with_skewed_clocks_finish_a_rollout_through_a_leader_kill(
        guest_os, tmp_path: Path) -> None:
    """Peers' wall clocks 5 minutes apart (0, +300 s, -300 s: `clock_offset_s`), the two BIOS
    workers installed in two stages. After the first power-on a follower is cut off for
    CUT_S and healed (no change of leader or term, the runners never stopped), then the
    leader is killed. No report is refused, no power step repeated or retried, each machine
    started once per stage."""
    reason = netns_unavailable() or bmc_unavailable("bios")
    if reason:
        pytest.skip(reason)
    hosts = [h for h in HOSTS if h.name in WORKERS]
    work, bare = init_repo(tmp_path)
    write_sot(work, hosts, guest_os.kernel, guest_os.initrd, peers=PEERS, http_port=8080,
              stage_timeout=STAGE_TIMEOUT, retries=1, worker_concurrency=2, depends=False,
              stay=True)
    rev = push(work, "lab: workers")
    with NetnsRig() as rig:
        site = Site(rig, tmp_path, bare, clock_offsets=(0, 300, -300))
        machines = {h.name: BmcGuest(site.lan, "br0", h.mac, h.bmc[0], password=BMC_PASSWORD,
                                     firmware="bios", workdir=tmp_path / f"guest-{h.name}")
                    for h in hosts}
        advertiser = RouterAdvertiser(site.lan, "br0")

        def debug() -> str:
            progress = site.try_api("/v1/rollouts/current")
            consoles = "\n".join(f"--- {n}\n{m.console_tail(15)}" for n, m in machines.items())
            return f"{json.dumps(progress, indent=1)[:4000]}\n{site.tails()}\n{consoles}"

        try:
            advertiser.start()
            for machine in machines.values():
                machine.start()
            until(lambda: site.leader() is not None, "a leader", 60, debug)
            approve(site, rev)
            until(lambda: powered_on(site, rev), "a machine powered on", 120, debug)
            leader = cut_a_follower_and_heal(site)
            # the peer asked may be the rejoined one, whose link to the leader reconnects
            # a few seconds after the heal (TCP backoff): until then it names no leader
            until(lambda: site.leader() is not None, "a leader named again", 60, debug)
            killed = site.leader()
            assert killed == leader
            site.kill(killed)
            print(f"killed the leader peer-{killed + 1} (clock offset "
                  f"{(0, 300, -300)[killed]:+d} s) after the first power-on")
            until(lambda: site.leader() not in (None, killed), "a new leader", 30, debug)
            new_leader = site.leader()
            until(lambda: rollout_state(site, rev) == "done", "the rollout done",
                  3 * STAGE_TIMEOUT, debug)
            print(f"new leader peer-{new_leader + 1} (offset {(0, 300, -300)[new_leader]:+d} s)")
            journal = events(site)
            records = {h["name"]: h for h in site.api("/v1/hosts")["hosts"]}
            logs = site.tails(100_000)
        finally:
            advertiser.close()
            for machine in machines.values():
                machine.close()
            site.close()
    for name in WORKERS:
        assert (records[name]["state"], records[name]["done"]) == ("done", 2), records[name]
    assert "stale_report" not in logs and "phone_home_refused" not in logs
    boots = Counter((e["host"], e["data"]["stage"]) for e in journal
                    if e["kind"] == "intent.recorded" and e.get("message") == "power.boot")
    assert boots == {(n, s): 1 for n in WORKERS for s in ("1", "2")}, boots
    assert not [e for e in journal if e["kind"] in ("host.retrying", "host.failed")]
    assert {n: m.power_ons() for n, m in machines.items()} == {n: 2 for n in WORKERS}
