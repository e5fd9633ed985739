"""`vaq-peer revisions/show/approve` as a real process, against the real API app over a real
one-member Raft group in this process. Nothing in a running peer records revisions yet (the
rollout pipeline will), so the test records them through the cluster, as the pipeline will."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from peer_group import ADMIN, REPO, cli_command, free_ports

from appliance.api.app import make_api_app
from appliance.api.auth import ApiToken
from appliance.api.context import ApiContext
from appliance.cluster import Cluster, ClusterSettings

pytestmark = pytest.mark.slow

SHA = "abcd0123" + "1" * 32
TWIN = "abcd0123" + "2" * 32  # same first 8 digits as SHA
OTHER = "ef" * 20
COMMAND = cli_command()


class Api:
    def __init__(self, url: str, cluster: Cluster) -> None:
        self.url = url
        self.cluster = cluster

    async def vaq(self, *args: str) -> tuple[int, str, str]:
        env = dict(os.environ, VAQ_TOKEN=ADMIN, VAQ_PEER=self.url)
        proc = await asyncio.create_subprocess_exec(
            *COMMAND, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd=REPO)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    raft_port, http_port = free_ports(2)
    (tmp_path / "raft.password").write_text("cmFmdC1ncm91cC1wYXNzd29yZA==\n")
    (tmp_path / "raft.password").chmod(0o600)
    address = f"127.0.0.1:{raft_port}"
    cluster = Cluster(ClusterSettings(address, (address,), tmp_path / "raft",
                                      tmp_path / "raft.password"))
    await cluster.start()
    runner = None
    try:
        await cluster.wait_for_leader(10)
        app = make_api_app(ApiContext("peer-1", "kinds", "test", cluster),
                           [ApiToken("ops", "admin", ADMIN.encode())])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        yield Api(f"http://127.0.0.1:{http_port}", cluster)
    finally:
        if runner is not None:
            await runner.cleanup()
        await cluster.stop()


async def _awaiting_approval(cluster: Cluster, sha: str) -> None:
    await cluster.observe_revision(sha, source="git main")
    await cluster.transition_revision(sha, "validated", by="pipeline", reason="valid",
                                      summary={"sites": 1, "hosts": 5, "problems": 0})
    await cluster.transition_revision(sha, "planned", by="pipeline",
                                      summary={"hosts_to_reprovision": 2, "unchanged": 3})
    await cluster.transition_revision(sha, "awaiting_approval", by="pipeline",
                                      reason="2 hosts would be reprovisioned",
                                      approvals_required=2)


async def test_revisions_show_and_approve_by_prefix(api: Api) -> None:
    await _awaiting_approval(api.cluster, SHA)
    await api.cluster.observe_revision(OTHER, source="git main")

    code, out, err = await api.vaq("revisions")
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}
    assert rows[SHA[:12]][1:4] == ["awaiting_approval", "git", "main"], rows
    assert rows[OTHER[:12]][1] == "observed" and rows[SHA[:12]][-1] == "0/2", rows
    code, out, _ = await api.vaq("revisions", "--state", "observed")
    assert OTHER[:12] in out and SHA[:12] not in out, out
    code, out, _ = await api.vaq("revisions", "--json")
    assert {r["sha"] for r in json.loads(out)["revisions"]} == {SHA, OTHER}

    code, out, err = await api.vaq("show", SHA[:7])
    assert code == 0, err
    assert f"revision  {SHA}" in out and "state     awaiting_approval" in out, out
    history = [line.split() for line in out.split("history:")[1].split("approvals:")[0]
               .strip().splitlines()[1:]]
    assert [h[5] for h in history] == ["observed", "validated", "planned", "awaiting_approval"]
    assert history[1][6] == "pipeline" and " ago)" in out
    assert "approvals: 0/2" in out
    assert "validation report (validated):\n    hosts: 5\n    problems: 0\n    sites: 1\n" in out
    assert "plan (planned):\n    hosts_to_reprovision: 2\n" in out, out

    started = time.time()
    code, out, err = await api.vaq("approve", SHA[:10], "--note", "change window 14:00")
    assert code == 0, err
    assert out.strip() == f"approved {SHA[:12]}: 1 approval(s), revision is now " \
                          "awaiting_approval", out
    code, out, _ = await api.vaq("show", SHA, "--json")
    approval = json.loads(out)["approvals"][0]
    assert approval["by"] == "ops" and approval["note"] == "change window 14:00"
    assert approval["at"] >= started - 1
    code, out, _ = await api.vaq("show", SHA)
    assert "approvals: 1/2\n  ops  " in out and ": change window 14:00" in out, out

    code, _, err = await api.vaq("approve", SHA)
    assert code == 1 and "ops already approved this revision" in err, err
    code, _, err = await api.vaq("approve", OTHER[:6])
    assert code == 1 and "not_awaiting_approval" in err and "revision is observed" in err, err


async def test_ambiguous_prefix_is_a_usage_error(api: Api) -> None:
    for sha in (SHA, TWIN):
        await api.cluster.observe_revision(sha)
    code, _, err = await api.vaq("show", SHA[:8])
    assert code == 2 and "ambiguous: 2 revisions match" in err, err
    code, out, err = await api.vaq("show", SHA[:9])
    assert code == 0 and f"revision  {SHA}" in out, err
    code, _, err = await api.vaq("approve", "abc")
    assert code == 2 and "at least 4 hex digits" in err, err
