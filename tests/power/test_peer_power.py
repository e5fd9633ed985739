"""`vaq-peer power` through a running peer to a real BMC (OpenIPMI's ipmi_sim): the leader
logs each action as an intent, runs it over IPMI with the credentials the peer's secrets file
holds under the SoT's name, and logs the result; the "machine" process follows."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ipmi_sim_rig import PASSWORD, Sim

REPO = Path(__file__).resolve().parents[2]
ADMIN = "power-test-admin-token-0123456789"
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
    with socket.socket() as s1, socket.socket() as s2:
        s1.bind(("127.0.0.1", 0))
        s2.bind(("127.0.0.1", 0))
        http_port, raft_port = s1.getsockname()[1], s2.getsockname()[1]
    for name, value in (("secret", "cGhvbmUtaG9tZS1rZXktZm9yLXRlc3Rz"),
                        ("raft.secret", "cmFmdC1rZXktZm9yLXRlc3Rz"), ("admin.token", ADMIN),
                        ("bmc.yaml", f'lab-ipmi: {{user: admin, password: "{PASSWORD}"}}')):
        (tmp_path / name).write_text(value + "\n")
        (tmp_path / name).chmod(0o600)
    (tmp_path / "peer.yaml").write_text(f"""
site: lab
peer: peer-1
data_dir: {tmp_path / 'data'}
interface: lo
address: 127.0.0.1
sot: {{path: {sot}}}
token_secret_file: secret
bmc: {{secrets_file: bmc.yaml, max_sessions: 2}}
http: {{listen: 127.0.0.1, port: {http_port}}}
tftp: {{enabled: false}}
dhcp: {{enabled: false}}
prefetch_artifacts: false
raft: {{address: "127.0.0.1:{raft_port}", password_file: raft.secret}}
api: {{tokens: [{{name: ops, role: admin, file: admin.token}}]}}
""")
    exe = str(Path(sys.executable).parent / "vaq-peer")
    base = f"http://127.0.0.1:{http_port}"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([exe, "serve", "--config", str(tmp_path / "peer.yaml")],
                                stdout=out, stderr=subprocess.STDOUT)
    auth = ["--peer", base, "--token-file", str(tmp_path / "admin.token")]

    def power(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, "power", "lab-01", action, *auth], capture_output=True,
                              text=True, timeout=60)

    try:
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
        no_bmc = subprocess.run([exe, "power", "lab-02", "on", *auth, "--json"],
                                capture_output=True, text=True, timeout=60)
        assert no_bmc.returncode != 0  # lab-02's BMC address is not reachable from here
        events = subprocess.run([exe, "events", "--limit", "100", "--json", *auth],
                                capture_output=True, text=True, timeout=60)
        kinds = [e["kind"] for e in json.loads(events.stdout)["events"]]
        assert kinds.count("intent.recorded") >= 3 and kinds.count("intent.ok") >= 3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    text = log.read_text()
    assert PASSWORD not in text and ADMIN not in text
