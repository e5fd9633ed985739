"""`vaq-peer lab up --machines 2` as a user runs it: 3 peers in namespaces, 2 QEMU machines
behind their own ipmi_sim BMCs, the lab SoT pushed and approved; `vaq-peer rollout --follow`
from this shell until both machines are installed through their BMCs; `vaq-peer lab down`
leaves no namespace, process or file behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.lab import rigs_reason

pytestmark = pytest.mark.slow
VAQ = str(Path(sys.executable).parent / "vaq-peer")


def vaq(*args: str, env: dict | None = None, timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VAQ, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_lab_up_installs_two_machines_through_their_bmcs_and_down_removes_it(
        tmp_path: Path) -> None:
    reason = rigs_reason()
    if reason:
        pytest.skip(reason)
    lab = tmp_path / "lab"
    up = vaq("lab", "up", "--machines", "2", "--dir", str(lab), timeout=1000)
    status = json.loads((lab / "status.json").read_text()) if lab.exists() else {}
    pid = status.get("pid")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        env = {"VAQ_PEER": status["peers"][0], "VAQ_TOKEN_FILE": status["token_file"]}
        follow = vaq("rollout", "--follow", "--for", "900", "--interval", "5", env=env,
                     timeout=1000)
        shown = vaq("lab", "status", "--dir", str(lab))
        assert follow.returncode == 0, follow.stdout[-3000:] + shown.stdout
        assert "lab-01 done" in follow.stdout and "lab-02 done" in follow.stdout
        assert shown.returncode == 0, shown
        for name in ("lab-01", "lab-02"):
            row = next(line for line in shown.stdout.splitlines() if line.startswith(name))
            # powered on for stage 1, power-cycled for stage 2: by its BMC, twice
            assert row.split()[2:5] == ["2", "done", "2/2"], shown.stdout
        events = json.loads(vaq("events", "--limit", "1000", "--json", env=env).stdout)
        boots = [e for e in events["events"] if e["kind"] == "intent.ok"
                 and e.get("data", {}).get("action") == "power.boot"]
        assert sorted(e["host"] for e in boots) == ["lab-01", "lab-01", "lab-02", "lab-02"]
        history = json.loads(vaq("host", "lab-01", "--events", "--json", env=env).stdout)
        assert "host.done" in [e["kind"] for e in history["events"]]
        # the guest's serial port, read through its BMC's SOL by the leader, from any peer
        for peer in status["peers"]:
            console = vaq("console", "lab-01", "--peer", peer, env=env)
            assert console.returncode == 0, console
            assert "VAQ-TEST: PHONED-HOME 52:54:00:18:00:01" in console.stdout, console.stdout
    finally:
        down = vaq("lab", "down", "--dir", str(lab), timeout=300)
    assert down.returncode == 0, down
    assert not lab.exists()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                text=True).stdout
    assert f"vqlab-{pid}-" not in namespaces, namespaces
    processes = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True,
                               text=True).stdout
    left = [line for line in processes.splitlines()
            if str(lab) in line or f"vqbmc{pid}x" in line]
    assert not left, left
    assert f"vql{pid}" not in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                             text=True).stdout
