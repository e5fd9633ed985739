"""A restarted peer serves from its stored compiled revision, checks it, and ignores a
damaged one: real `vaq-peer serve` processes on loopback (tools/bench/restart.py's rig)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import gen_sot
from tools.bench import restart


@pytest.mark.slow
def test_a_restarted_peer_serves_from_its_stored_revision_and_checks_it(tmp_path: Path) -> None:
    sot = tmp_path / "sot"
    gen_sot.generate(sot, 120, 2, 3)
    site = sorted(d.name for d in (sot / "sites").iterdir())[0]
    config, port = restart.write_config(tmp_path, sot, site)
    mac = restart.a_host_mac(sot, site)

    cold = restart.run_peer(config, port, mac, tmp_path / "cold.log", "revision_store.saved")
    assert not cold["ignored"]
    (stored,) = (tmp_path / "data" / "revisions").glob("*.rev")

    warm = restart.run_peer(config, port, mac, tmp_path / "warm.log", "revision.revalidated")
    assert warm["event"]["same"] is True, warm["event"]
    assert not warm["ignored"]

    data = bytearray(stored.read_bytes())
    data[-10] ^= 0xFF
    stored.write_bytes(bytes(data))
    damaged = restart.run_peer(config, port, mac, tmp_path / "damaged.log",
                               "revision_store.saved")
    (ignored,) = damaged["ignored"]
    assert "checksum" in ignored["reason"]
    assert restart.run_peer(config, port, mac, tmp_path / "again.log",
                            "revision.revalidated")["event"]["same"] is True
