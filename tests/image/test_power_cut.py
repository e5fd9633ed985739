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
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.image.power_cut import Nbd, build_baseline, nbdkit_unavailable, run_repeat

WORK = Path(__file__).parents[2] / "build/power-cut"


@pytest.mark.parametrize("flushed", [False, True])
def test_the_emulated_disk_loses_exactly_its_unflushed_writes(flushed: bool,
                                                              tmp_path: Path) -> None:
    """The disk the guests get: a write the client never flushed is gone after the cut, a
    flushed one is on the file. qemu-io is QEMU's own block layer, the guests' NBD client."""
    reason = nbdkit_unavailable() or (None if shutil.which("qemu-io") else "no qemu-io")
    if reason:
        pytest.skip(reason)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(1 << 20))
    nbd = Nbd(disk, tmp_path / "nbd.sock", tmp_path / "nbdkit.log")
    cmds = ["-c", "write -P 0xab 0 64k", *(["-c", "flush"] if flushed else []),
            "-c", "sleep 30000"]
    # Line-buffered, so "wrote" shows before qemu-io exits (its exit would flush).
    client = subprocess.Popen(["stdbuf", "-oL", "qemu-io", "-t", "writeback", "-f", "raw",
                               f"nbd:unix:{nbd.sock}", *cmds],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert client.stdout is not None
        line = client.stdout.readline()  # bounded: qemu-io ends after its 30 s sleep
        assert line.startswith("wrote 65536"), line
        time.sleep(1)  # the flush after it, if any: milliseconds
        assert client.poll() is None  # still running: nothing flushed at its exit
        nbd.kill()  # the cut: the cache dies first, as in power_cut()
    finally:
        client.kill()
        client.wait(timeout=10)
        nbd.kill()
    assert disk.read_bytes()[:4] == (b"\xab" * 4 if flushed else bytes(4))
    assert not list(tmp_path.glob("*.tmp*")) and len(list(tmp_path.iterdir())) == 3


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.usefixtures("image_ready")
def test_acknowledged_writes_survive_a_power_cut_of_the_three_peers() -> None:
    reason = nbdkit_unavailable()
    if reason:
        pytest.skip(reason)
    if os.environ.get("VAQ_POWER_CUT") != "1" and not (WORK / "baseline/done.json").exists():
        pytest.skip("booting three image guests takes 10-20 min under TCG: VAQ_POWER_CUT=1")
    base = build_baseline(WORK)
    seed = random.randrange(1 << 30)
    print(f"\npower cut seed {seed} (replay: python -m tests.image.power_cut --seed {seed})")
    cut = run_repeat(WORK, base, 0, random.Random(seed))
    for disk in (WORK / "repeat-00").glob("*.raw"):  # 3 x 650 MB (sparse); the result stays
        disk.unlink()
    print(f"\n{cut.acked} writes acknowledged, the power cut {cut.cut_after_s:.1f} s after the "
          f"first; e2fsck {cut.fsck}; {cut.seconds:.0f} s")
    assert cut.acked > 0
    assert not any(cut.missing.values()), cut.missing
