from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peer_group import PeerGroup


@pytest.fixture
def group3(tmp_path: Path) -> Iterator[PeerGroup]:
    group = PeerGroup(tmp_path, 3)
    group.start_all()
    try:
        yield group
    finally:
        group.stop_all()
