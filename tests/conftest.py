"""The markers every test folder shares.

`root`: the test needs root and network namespaces (iproute2); it is skipped, with the
reason, where they are missing. `slow`: an end-to-end test that takes long (real VMs,
several processes). CI runs both; `pytest -m "not slow and not root"` is the quick
unprivileged subset.
"""

from __future__ import annotations

import pytest

from tools.rigs.netns import unavailable_reason


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None:
        reason = unavailable_reason()
        if reason:
            pytest.skip(reason)
