"""The boot-storm benchmark, reduced to a few machines: it must run end to end in CI, so that
the figures it prints for 1,000 machines come from a harness that works. No timing is
asserted; what is asserted is that every machine walked the whole chain on both sides."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.rigs.netns import unavailable_reason

pytestmark = pytest.mark.slow
STORM = Path(__file__).resolve().parents[2] / "tools/bench/storm.py"


def run_storm(*args: str) -> tuple[dict, str]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    for tool in ("dnsmasq", "nginx"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not Path("/usr/lib/ipxe/undionly.kpxe").exists():
        pytest.skip("ipxe (undionly.kpxe) is not installed")
    out = subprocess.run([sys.executable, str(STORM), "--json", "--timeout", "90", *args],
                         capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


@pytest.mark.parametrize("peers", [1, 3])
def test_every_machine_boots_through_ours_and_the_reference(peers: int) -> None:
    # two rounds: the second starts fresh peers and runs the reference first
    results, text = run_storm("--hosts", "5", "--peers", str(peers), "--ramp", "0.5",
                              "--rounds", "2")
    for chain in ("ours", "reference"):
        assert len(results["5"][chain]) == 2
        for got in results["5"][chain]:
            assert got["phoned_home"] == 5 and got["failures"] == {}, (chain, got, text)
            assert got["all_done_s"] is not None and got["p99_s"] >= got["p50_s"]
            assert all(v >= 0 for v in got["phase_p50_s"].values()), got
    assert "ours/reference" in text and "machines that did not phone home through ours: 0" \
        in text
    assert "dnsmasq --keep-in-foreground" in text and "--leasefile-ro" in text  # the reference
