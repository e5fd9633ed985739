"""The fleet benchmark, reduced to 4 machines: the harness that prints the 200-machine figures
must work end to end. No timing is asserted; what is asserted is that the real engine of a
3-peer site rolled every machine through both stages over IPMI, that every machine phoned home
once per stage, and that no boot step ran twice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.rigs.netns import unavailable_reason

pytestmark = [pytest.mark.slow, pytest.mark.root]
FLEET = Path(__file__).resolve().parents[2] / "tools/bench/fleet.py"


def test_four_machines_roll_out_through_their_bmcs() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("ipmi_sim") is None:
        pytest.skip("ipmi_sim is not installed (apt: openipmi)")
    if not Path("/usr/lib/ipxe/undionly.kpxe").exists():
        pytest.skip("ipxe (undionly.kpxe) is not installed")
    out = subprocess.run([sys.executable, str(FLEET), "--hosts", "4", "--timeout", "180",
                          "--json"], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    [r] = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["state"] == "done", out.stdout
    assert r["hosts_done"] == 4 and r["phoned_home"] == 4, r
    assert r["boot_failures"] == {}, r
    assert r["boot_steps"] == 8 and r["steps_twice"] == 0, r  # 4 hosts x 2 stages, once each
    assert r["power_ons"] == 8 and r["power_ons_max_per_machine"] == 2, r
    assert "ipmi_sim -c" in out.stdout and "vaq-peer serve" in out.stdout  # commands printed
