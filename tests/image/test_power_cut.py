"""Every acknowledged write survives a site power cut: three peers in QEMU guests booted from
the appliance image, their QEMUs and their disks' write caches killed at once mid-write
(tests/image/power_cut.py says what that emulates and what not).

One repeat here; `python -m tests.image.power_cut --repeats 20` is the full run. Booting the
three guests for the baseline costs 10-20 minutes under TCG, so besides the image this test
wants `VAQ_POWER_CUT=1` (or a baseline already saved in build/power-cut, which it reuses).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.image.power_cut import build_baseline, nbdkit_unavailable, run_repeat

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.usefixtures("image_ready")]
WORK = Path(__file__).parents[2] / "build/power-cut"


def test_acknowledged_writes_survive_a_power_cut_of_the_three_peers() -> None:
    reason = nbdkit_unavailable()
    if reason:
        pytest.skip(reason)
    if os.environ.get("VAQ_POWER_CUT") != "1" and not (WORK / "baseline/done.json").exists():
        pytest.skip("booting three image guests takes 10-20 min under TCG: VAQ_POWER_CUT=1")
    base = build_baseline(WORK)
    cut = run_repeat(WORK, base, 0, random.Random())
    print(f"\n{cut.acked} writes acknowledged, the power cut {cut.cut_after_s:.1f} s after the "
          f"first; e2fsck {cut.fsck}; {cut.seconds:.0f} s")
    assert cut.acked > 0
    assert not any(cut.missing.values()), cut.missing
