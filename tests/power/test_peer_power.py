"""`vaq-peer power` through a running peer to a real BMC (OpenIPMI's ipmi_sim): the leader
logs each action as an intent, runs it over IPMI with the credentials the peer's secrets file
holds under the SoT's name, and logs the result; the "machine" process follows."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.ipmi_sim_rig import PASSWORD, Sim
from tools.rigs.peer_proc import ADMIN, EXE, single_peer

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("ipmi_sim") is None, reason="no ipmi_sim")]


def test_power_through_the_peer(sim: Sim, tmp_path: Path) -> None:
    sot = tmp_path / "sot"
    shutil.copytree(REPO / "sot_examples" / "lab", sot)
    cluster = sot / "sites/lab/cluster-lab.yml"
    cluster.write_text(cluster.read_text().replace(
        "      type: ipmi\n      credentials: lab-ipmi\nmetadata:\n  role: control",
        f"      type: ipmi\n      address: 127.0.0.1\n      port: {sim.port}\n"
        "      credentials: lab-ipmi\nmetadata:\n  role: control", 1))
    assert f"port: {sim.port}" in cluster.read_text()
    extra = f"sot: {{path: {sot}}}\nbmc: {{secrets_file: bmc.yaml, max_sessions: 2}}"
    bmc_secrets = f'lab-ipmi: {{user: admin, password: "{PASSWORD}"}}'
    with single_peer(tmp_path, extra, **{"bmc.yaml": bmc_secrets}) as peer:
        proc, log = peer.proc, peer.log
        auth = ["--peer", peer.base, "--token-file", str(tmp_path / "admin.token")]

        def power(action: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([EXE, "power", "lab-01", action, *auth], capture_output=True,
                                  text=True, timeout=60)

        deadline = time.monotonic() + 30
        while power("status").returncode != 0:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        assert power("status").stdout.strip() == "lab-01: off"
        assert not sim.machine_pids()
        on = power("on")
        assert on.returncode == 0, on.stdout + on.stderr
        assert power("status").stdout.strip() == "lab-01: on"
        before = sim.machine_pids()
        assert before  # the simulated machine runs
        assert power("cycle").returncode == 0
        deadline = time.monotonic() + 15  # a cycle is off then on: wait for the new machine
        while not (sim.machine_pids() and sim.machine_pids() != before):
            assert time.monotonic() < deadline, "the cycle never restarted the machine"
            time.sleep(0.3)
        assert power("off").returncode == 0
        deadline = time.monotonic() + 15  # a BMC reports off once the machine has stopped
        while power("status").stdout.strip() != "lab-01: off":
            assert time.monotonic() < deadline, "the BMC never reported off"
            time.sleep(0.5)
        no_bmc = subprocess.run([EXE, "power", "lab-02", "on", *auth, "--json"],
                                capture_output=True, text=True, timeout=60)
        assert no_bmc.returncode != 0  # lab-02's BMC address is not reachable from here
        events = subprocess.run([EXE, "events", "--limit", "100", "--json", *auth],
                                capture_output=True, text=True, timeout=60)
        kinds = [e["kind"] for e in json.loads(events.stdout)["events"]]
        assert kinds.count("intent.recorded") >= 3 and kinds.count("intent.ok") >= 3
    text = log.read_text()
    assert PASSWORD not in text and ADMIN not in text
