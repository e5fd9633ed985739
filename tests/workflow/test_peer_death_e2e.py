"""A machine whose peer dies right after answering its DHCP is rescued by the leader's one
power-cycle, and finishes its workflow through another peer, with nothing done by hand.

The site of the workflow end-to-end tests (tests/workflow/wf_site.py: three `vaq-peer serve`
in namespaces, Raft, a git SoT), one BIOS QEMU machine behind its own `ipmi_sim` BMC, a
two-stage workflow of network boots. The peer to kill is the leader (which powered the
machine: its successor must notice) or a follower; which peer's DHCP answer the machine
takes is a race, so until the kill the boot bridge forwards DHCP answers from that peer only
(an nftables bridge filter: `DhcpOnlyFrom`). A packet socket on the bridge (tools/rigs/
wire_watch.py) sees the DHCP ACK the machine gets on its first power-on and, at once,
SIGKILLs the peer that sent it (the ACK's server id); the filter is lifted. iPXE then asks
a dead address for its script, and nothing is left to fall back from (the fallback between
peers starts with the script: tests/netboot/test_boot_fallback.py); the machine ends at "No
bootable device".
The leader sees a machine that was powered but fetched no script within
`workflow.evidence_window` (short here, through the peers' config) and power-cycles it into
PXE once; the machine boots through a live peer and the rollout ends done.

Asserted: the killed peer never served the script; the journal's power intents for the
machine are the two stages' (boot device, power) and exactly one rescue (boot device,
power-cycle), none repeated; the BMC started the machine three times; no retry, no failure
(a step whose leader changed during it is recorded as of unknown outcome: not a failure).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from wf_site import BMC_PASSWORD, PEERS, Site, approve, events, rollout_state
from wf_sot import LabHost, init_repo, push, write_sot

from tests.support.waiting import until
from tools.rigs.bmc_guest import BmcGuest
from tools.rigs.bmc_guest import unavailable_reason as bmc_unavailable
from tools.rigs.netns import Netns, NetnsRig
from tools.rigs.netns import unavailable_reason as netns_unavailable
from tools.rigs.qemu_guest import RouterAdvertiser
from tools.rigs.test_kernel import build_test_os
from tools.rigs.wire_watch import DHCP_ACK, Packet, WireWatch, dhcp_reply

pytestmark = [pytest.mark.slow, pytest.mark.root]
HOST = LabHost("work-1", "workers", "52:54:00:d1:00:01", "198.18.0.21", ("198.18.0.121", 623))
STAGE_TIMEOUT = 300  # a stage under TCG takes 20-90 s here
# A healthy boot under TCG fetches its script 5-20 s after the power-on; a window well above
# that, far below the stage timeout. Silence (script fetched, kernel not loaded) is not what
# this test shows: its window stays out of the way.
WINDOWS = "workflow: {evidence_window: 40, silence_window: 120}\n"


class DhcpOnlyFrom:
    """The bridge forwards DHCP answers (UDP from port 67) from `server` only, until lifted:
    a table of the bridge family in the bridge's namespace, removed by `lift()` (and with
    the namespace)."""

    TABLE = "vqdhcp"

    def __init__(self, ns: Netns, server: str) -> None:
        self.ns = ns
        others = ", ".join(a for a in PEERS if a != server)
        ns.run("nft", "-f", "-", input=(
            f"table bridge {self.TABLE} {{\n  chain forward {{\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"    udp sport 67 ip saddr {{ {others} }} drop\n  }}\n}}\n"))

    def lift(self) -> None:
        self.ns.run("nft", "delete", "table", "bridge", self.TABLE, check=False)


@pytest.mark.parametrize("whose", ["leader", "follower"])
def test_a_machine_whose_peer_dies_after_its_dhcp_ack_is_power_cycled_once(
        tmp_path: Path, whose: str) -> None:
    reason = netns_unavailable() or bmc_unavailable("bios") or (
        None if shutil.which("nft") else "nft is not installed (apt: nftables)")
    if reason:
        pytest.skip(reason)
    guest_os = build_test_os()
    work, bare = init_repo(tmp_path)
    write_sot(work, [HOST], guest_os.kernel, guest_os.initrd, peers=PEERS, http_port=8080,
              stage_timeout=STAGE_TIMEOUT, retries=0, worker_concurrency=1, depends=False,
              stay=True)
    rev = push(work, "lab: one worker")
    started = time.monotonic()
    with NetnsRig() as rig:
        site = Site(rig, tmp_path, bare, extra_config=WINDOWS)
        machine = BmcGuest(site.lan, "br0", HOST.mac, HOST.bmc[0], password=BMC_PASSWORD,
                           firmware="bios", workdir=tmp_path / "guest")
        advertiser = RouterAdvertiser(site.lan, "br0")
        killed: dict = {}

        def kill_on_ack(pkt: Packet) -> bool:
            reply = dhcp_reply(pkt)
            if reply is None or reply.kind != DHCP_ACK or reply.client_mac != HOST.mac:
                return False
            index = PEERS.index(reply.server_id or pkt.src)
            site.procs[index].send_signal(signal.SIGKILL)  # at once: iPXE is about to ask it
            killed.update(peer=index, at=pkt.at)
            return True

        watch = WireWatch(site.lan, "br0", kill_on_ack)

        def debug() -> str:
            progress = site.try_api("/v1/rollouts/current")
            return (f"killed: {killed}\n{json.dumps(progress, indent=1)[:3000]}\n"
                    f"{site.tails()}\n--- {HOST.name}\n{machine.console_tail(30)}")

        try:
            advertiser.start()
            watch.start()
            machine.start()
            until(lambda: site.leader() is not None, "a leader", 60, debug)
            leader = site.leader()
            target = leader if whose == "leader" else (leader + 1) % len(PEERS)
            steer = DhcpOnlyFrom(site.lan, PEERS[target])
            approve(site, rev)
            assert watch.wait(timeout=180), f"no DHCP ACK for {HOST.mac}\n{debug()}"
            steer.lift()
            site.procs[killed["peer"]].wait(timeout=10)
            assert killed["peer"] == target, (killed, target)
            print(f"\nkilled peer-{killed['peer'] + 1} (the {whose}) as it ACKed "
                  f"{HOST.name}'s DHCP, {killed['at'] - started:.1f} s into the test")
            until(lambda: site.leader() not in (None, killed["peer"]), "a live leader", 60,
                  debug)
            print(f"leader now: peer-{site.leader() + 1}")
            until(lambda: rollout_state(site, rev) == "done", "the rollout done",
                  2 * STAGE_TIMEOUT, debug)
            done_at = time.monotonic()
            journal = events(site)
            record = next(h for h in site.api("/v1/hosts")["hosts"] if h["name"] == HOST.name)
            logs = {i: path.read_text() for i, path in site.logs.items()}
        finally:
            watch.close()
            advertiser.close()
            machine.close()
            site.close()
    (tmp_path / "events.json").write_text(json.dumps(journal, indent=1))
    print(f"rollout done {done_at - killed['at']:.1f} s after the kill; "
          f"{done_at - started:.1f} s in all")

    assert (record["state"], record["done"], record["revision"]) == ("done", 2, rev), record
    # the kill came before the script: the dead peer never served the machine anything more
    after = [json.loads(line) for line in logs[killed["peer"]].splitlines()
             if line.startswith("{") and HOST.name in line]
    assert not [e for e in after if e.get("event") == "boot.script"], after
    served = [i for i, text in logs.items() if '"boot.script"' in text and HOST.name in text]
    assert served and killed["peer"] not in served, served

    mine = [e for e in journal if e.get("host") == HOST.name]
    power = Counter((e["data"]["stage"], e["message"]) for e in mine
                    if e["kind"] == "intent.recorded")
    print(f"power intents of {HOST.name}: {dict(power)}")
    assert power == {("1", "power.boot"): 1, ("1", "power.rescue-boot"): 1,
                     ("2", "power.boot"): 1}, power
    outcomes = [(e["data"]["action"], e["message"]) for e in mine if e["kind"] == "intent.ok"]
    # a step whose runner stopped (its peer lost the leadership a moment, which two peers
    # on a loaded 2-core machine do) is recorded as of unknown outcome, never run again;
    # no step failed at the BMC
    unknown = [e["data"]["action"] for e in mine if e["kind"] == "intent.failed"
               and "outcome unknown" in (e.get("message") or "")]
    assert len(unknown) == len([e for e in mine if e["kind"] == "intent.failed"]), mine
    print(f"steps of unknown outcome (a leader change during them): {unknown}")
    assert not [e for e in mine if e["kind"] in ("host.retrying", "host.failed")], mine
    rescue = [e for e in mine if "no script fetched" in (e.get("message") or "")]
    assert rescue, [e.get("message") for e in mine]
    # the machine agrees: started for stage 1, by the rescue, for stage 2
    assert machine.power_ons() == 3, (machine.power_ons(), machine.chassis_requests())
    console = machine.console_text()
    assert console.count("VAQ-TEST: PHONED-HOME") == 2, console[-3000:]
    # what the machine saw: its first script asked of the dead peer, refused or reset
    dead = re.escape(PEERS[killed["peer"]])
    first = re.search(rf"http://{dead}:8080/\S*\.\.\. ([^(\n]+)", console)
    assert first and "ok" not in first.group(1), console[:4000]
    print(f"the machine's first script fetch: {first.group(0).strip()}")
    print(f"power outcomes, in order: {outcomes}")
