"""A machine is matched by MAC, serial number, asset tag or SMBIOS UUID, through the real
/ipxe route of a compiled boot table; one that matches two hosts is refused with an event."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.netboot.boot_http import BootState, add_boot_routes, boot_ipxe_script
from appliance.netboot.boottable import compile_boot_table
from appliance.netboot.progress import LocalProgress
from appliance.sot.revision import compile_directory

KINDS = Path(__file__).resolve().parents[1] / "sot" / "fixtures" / "kinds"
RK_UUID = "0b5a2c7e-1f3d-4c9a-8e6b-2d4f6a8c0e12"


@pytest.fixture
def sot(tmp_path: Path) -> Path:
    root = tmp_path / "sot"
    shutil.copytree(KINDS, root)
    cluster = root / "sites" / "kinds" / "cluster-mixed.yml"
    text = cluster.read_text()
    text = text.replace("name: fc-01\n", "name: fc-01\nserial: CZ1234ABC\n", 1)
    text = text.replace("name: ub-01\n", "name: ub-01\nasset_tag: DC1-R07-U12\n", 1)
    cluster.write_text(text)
    return root


async def _client(sot: Path, tmp_path: Path) -> tuple[TestClient, list[tuple[str, dict]]]:
    revision = compile_directory(str(sot))
    assert revision.valid, revision.problems
    table = compile_boot_table(revision, "kinds", "lo", "127.0.0.1", b"k" * 32)
    events: list[tuple[str, dict]] = []
    state = BootState(table, LocalProgress(tmp_path / "data"),
                      on_event=lambda kind, **f: events.append((kind, f)))
    app = web.Application()
    add_boot_routes(app, state)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, events


@pytest.mark.parametrize(("query", "host", "matched_by"), [
    ("mac=52:54:00:08:00:01&serial=&asset=&uuid=", "fc-01", "mac"),
    ("mac=02:00:00:00:00:99&serial=CZ1234ABC&asset=&uuid=", "fc-01", "serial"),
    ("mac=02:00:00:00:00:99&serial=To%20Be%20Filled%20By%20O.E.M.&asset=DC1-R07-U12",
     "ub-01", "asset"),
    (f"mac=02:00:00:00:00:99&uuid={RK_UUID.upper()}", "rk-01", "uuid"),
    # every key agrees: the first in the defined order is the one reported
    (f"mac=52:54:00:08:00:03&uuid={RK_UUID}", "rk-01", "mac"),
])
async def test_machine_is_matched_by_each_identifier(sot: Path, tmp_path: Path, query: str,
                                                     host: str, matched_by: str) -> None:
    client, events = await _client(sot, tmp_path)
    try:
        resp = await client.get(f"/ipxe?{query}")
        text = await resp.text()
    finally:
        await client.close()
    assert resp.status == 200, text
    assert f"# {host}: stage 1/" in text
    assert events[-1][0] == "stage-booting"
    assert (events[-1][1]["host"], events[-1][1]["matched_by"]) == (host, matched_by)


async def test_machine_matching_two_hosts_is_refused(sot: Path, tmp_path: Path) -> None:
    """Its NIC is fc-01's but its serial is rk-01's: neither config is served."""
    cluster = sot / "sites" / "kinds" / "cluster-mixed.yml"
    cluster.write_text(cluster.read_text().replace("name: rk-01\n",
                                                   "name: rk-01\nserial: RK-SERIAL-7\n", 1))
    client, events = await _client(sot, tmp_path)
    try:
        resp = await client.get("/ipxe?mac=52:54:00:08:00:01&serial=RK-SERIAL-7&uuid=")
        text = await resp.text()
    finally:
        await client.close()
    assert resp.status == 409
    assert "matches more than one host" in text and "kernel" not in text
    kind, fields = events[-1]
    assert kind == "ambiguous-machine"
    assert fields["matches"] == "mac:fc-01 serial:rk-01"  # a string: events carry scalars
    assert not any(k == "stage-booting" for k, _ in events)


async def test_unknown_machine_reports_every_identifier(sot: Path, tmp_path: Path) -> None:
    client, events = await _client(sot, tmp_path)
    try:
        resp = await client.get("/ipxe?mac=02:00:00:00:00:99&serial=NOPE&asset=&uuid=")
        text = await resp.text()
    finally:
        await client.close()
    assert resp.status == 200  # a script that exits: a 404 would send iPXE to the next peer
    assert "is not declared in the SoT\nexit\n" in text
    assert events[-1] == ("unknown-machine", {"mac": "02:00:00:00:00:99", "serial": "NOPE",
                                              "asset": "", "uuid": "", "client": "127.0.0.1"})


def test_chain_script_sends_serial_and_asset() -> None:
    script = boot_ipxe_script(("http://x",))
    assert "serial=${serial:uristring}&asset=${asset:uristring}" in script
