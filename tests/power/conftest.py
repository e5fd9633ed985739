"""The `sim` fixture: a real BMC (OpenIPMI's ipmi_sim) for the power tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ipmi_sim_rig import Sim, run_sim


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    yield from run_sim(tmp_path)
