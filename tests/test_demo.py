"""The README's main job: `vaq-peer demo` validates, plans and renders the lab site, then
commits it to git, has a peer plan it, approves it and follows the rollout the leader runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_lab_site_end_to_end() -> None:
    exe = Path(sys.executable).parent / "vaq-peer"
    out = subprocess.run([exe, "demo"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "3 host(s), 6 stage render(s): valid" in text
    assert "3 to install; 0 unchanged" in text
    assert "### lab-01 stage 1 (install): preseed config" in text
    assert "plan: 3 install; touches hardware" in text  # the peer's pipeline planned it
    assert "batch 1: lab-01 waiting stage 1/2" in text  # armed first: max_concurrent 1
    assert "POST /phone-home/lab-01/1/<token> -> 200" in text
    assert "stage 2/2 first-boot: boot from the local disk" in text
    assert "# lab-01: workflow done: boot from the local disk" in text
    assert "batch 1: lab-01 done stage 2/2" in text
    assert "batch 2: lab-02 waiting stage 1/2" in text  # the next batch's turn
    assert "host.done lab-01" in text  # from the replicated journal
