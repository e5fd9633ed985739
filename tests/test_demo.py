"""The README's main job: `vaq-peer demo` validates, plans, renders and serves the lab site."""

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
    assert "### lab-01 stage 1 (install): ignition config" in text
    assert "POST /phone-home/lab-01/1/<token> -> 200" in text
    assert "stage 2/2 first-boot: boot from the local disk" in text
    assert "stage-done lab-01" in text  # the phone-home reached the replicated journal
