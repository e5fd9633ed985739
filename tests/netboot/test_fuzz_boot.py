"""The boot-network fuzz harness (tools/fuzz/boot_fuzz.py) in a reduced form: a few thousand
hostile DHCP, TFTP and HTTP requests from a namespace; the journal keeps the real event and
every service still answers the known machine. `python -m tools.fuzz.boot_fuzz` runs it long."""

from __future__ import annotations

import pytest

from tools.fuzz import boot_fuzz
from tools.rigs.netns import unavailable_reason


def test_reduced_boot_fuzz() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    report = boot_fuzz.run(dhcp=3000, tftp=2000, http=500, seconds=120, seed=5)
    assert report.known_machine_served == {"dhcp": True, "tftp": True, "http": True}
    assert report.real_event_kept
    assert report.journal_len < 20  # a digest per kind and interval, not one per request
    assert sum(report.sent.values()) >= 5000
    assert report.rss_after_mb - report.rss_before_mb < 100
