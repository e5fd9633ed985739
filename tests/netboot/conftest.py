"""Fixtures for netboot tests: a boot network in namespaces and a DHCP server in it.

The DHCP server runs in this test process, on an asyncio loop in a thread that entered the
server namespace (tools.rigs.netns.LoopThread): its sockets live in the namespace, while the
test reads its counters and events directly, with no IPC to get wrong. Clients (dhclient,
perfdhcp, crafted packets) run in other namespaces joined to the server's bridge by veths.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dhcp_support import SERVER_IP, BootNet
from sotcase_path import LAB

from appliance.netboot.boot_http import BootState
from appliance.netboot.boottable import compile_boot_table
from appliance.netboot.progress import LocalProgress, ReplicatedProgress
from appliance.sot.revision import Revision, compile_directory
from tools.rigs.netns import NetnsRig, sweep_stale, unavailable_reason


@pytest.fixture
def netns_rig() -> Iterator[NetnsRig]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    sweep_stale()
    with NetnsRig() as rig:
        yield rig


@pytest.fixture
def boot_net(netns_rig: NetnsRig) -> Iterator[BootNet]:
    srv = netns_rig.netns("srv")
    netns_rig.bridge(srv, "br0", f"{SERVER_IP}/24")
    with srv.loop_thread() as loop:
        net = BootNet(netns_rig, srv, loop)
        try:
            yield net
        finally:
            if net.server is not None:
                loop.run(net.server.close())


@pytest.fixture(scope="module")
def lab_revision() -> Revision:
    revision = compile_directory(str(LAB))
    assert revision.valid
    return revision


@pytest.fixture
def lab_boot(lab_revision: Revision, tmp_path: Path) -> Iterator[tuple[BootState, dict]]:
    """The lab site's boot routes' state (a peer at 198.18.0.2), and the replicated host
    records its progress reads (a dict the test fills)."""
    records: dict[str, dict] = {}
    progress = ReplicatedProgress(records.get, LocalProgress(tmp_path))
    table = compile_boot_table(lab_revision, "lab", "br0", "198.18.0.2", b"lab-boot-secret")
    yield BootState(table, progress), records
    progress.local.close()
