"""`vaq-peer demo`: the lab site as an operator lives it, on loopback, in a temporary directory.

The offline part (validate, plan, render) shows what an engineer reviews. This part commits
the lab SoT to a git repository (dulwich), starts a one-peer group following it (Raft, API,
HTTP boot; no DHCP, which needs a boot interface), waits for the pipeline to plan the commit,
approves it through the API, and follows the rollout the leader runs: lab-01 is armed first
(`max_concurrent: 1`); the demo plays the machine (it fetches what iPXE would and phones home
as the installer and the first boot would); lab-01 ends on its disk, and lab-02's turn comes.
The lab's BMCs are not real and no secrets file is given, so the engine asks for each power
action by hand; the copy the demo commits drops the lab's health check (its machines answer
on no port). Everything is removed afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from dulwich import porcelain

from ..config import load_config
from ..peer import Peer
from .exits import EXIT_OK
from .rollout import render

HEALTH = "  health:\n    type: tcp\n    port: 22\n    timeout: 300\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _commit_lab(sot: Path, repo: Path) -> str:
    shutil.copytree(sot, repo)
    workflow = repo / "workflows" / "debian-install.yml"
    workflow.write_text(workflow.read_text().replace(HEALTH, ""))
    porcelain.init(str(repo))
    files = [str(p) for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts]
    porcelain.add(str(repo), paths=files)
    author = b"Vaquero demo <demo@vaquero.invalid>"
    return porcelain.commit(str(repo), message=b"the lab site", author=author,
                            committer=author).decode()


def _write_config(root: Path, repo: Path) -> Path:
    for name in ("phone-home.secret", "raft.secret", "admin.token"):
        (root / name).write_text(base64.b64encode(os.urandom(24)).decode() + "\n")
        (root / name).chmod(0o600)
    branch = porcelain.active_branch(str(repo)).decode()
    config = root / "peer.yaml"
    config.write_text(f"""
site: lab
peer: peer-1
data_dir: {root / 'data'}
interface: lo
address: 127.0.0.1
source: {{url: "file://{repo}", ref: {branch}, poll_interval: 1, poll_jitter: 0}}
token_secret_file: phone-home.secret
http: {{listen: 127.0.0.1, port: {_free_port()}}}
tftp: {{port: {_free_port()}}}
dhcp: {{enabled: false}}
prefetch_artifacts: false
raft: {{address: "127.0.0.1:{_free_port()}", password_file: raft.secret}}
api:
  tokens: [{{name: demo, role: admin, file: admin.token}}]
log_level: warning
""")
    return config


class _Client:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        self.http, self.base = http, base
        self.auth = {"Authorization": f"Bearer {token}"}

    async def api(self, path: str, method: str = "GET", body: dict | None = None) -> Any:
        async with self.http.request(method, self.base + path, headers=self.auth,
                                     json=body) as resp:
            return await resp.json() if resp.status < 400 else None

    async def text(self, path: str, method: str = "GET") -> tuple[int, str]:
        async with self.http.request(method, self.base + path) as resp:
            return resp.status, await resp.text()

    async def until(self, check: Any, what: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise RuntimeError(f"demo: timed out waiting for {what}")
            await asyncio.sleep(0.2)


def _indent(text: str) -> str:
    return "   " + text.rstrip().replace("\n", "\n   ")


async def _host_state(c: _Client, name: str) -> dict:
    data = await c.api(f"/v1/hosts/{name}")
    return (data or {}).get("record") or {}


# long: the demo's script, told in the order an operator sees it.
async def _walk(peer: Peer, token: str, sha: str) -> None:
    base = f"http://127.0.0.1:{peer.http_port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        c = _Client(http, base, token)
        print(f"peer up: {base} (API and HTTP boot), a Raft group of one, following the "
              f"repository; commit {sha[:12]}")

        async def planned() -> dict | None:
            rev = await c.api(f"/v1/revisions/{sha}")
            return rev if rev and rev["state"] == "awaiting_approval" else None

        rev = await c.until(planned, "the commit to be planned")
        print(f"revision {sha[:12]}: {rev['history'][-2]['reason']}")
        print(f"POST /v1/revisions/{sha[:12]}/approve   (what `vaq-peer approve` does)")
        await c.api(f"/v1/revisions/{sha}/approve", "POST", {"note": "demo"})

        async def armed() -> bool:
            return (await _host_state(c, "lab-01")).get("state") == "waiting"

        await c.until(armed, "lab-01 to be armed")
        print("\n== vaq-peer rollout   (the leader armed lab-01: max_concurrent is 1)")
        print(_indent(render(await c.api("/v1/rollouts/current"))))

        mac = "52:54:00:18:00:11"
        await c.until(lambda: _served(c, mac), "the revision to be served")
        status, script = await c.text(f"/ipxe?mac={mac}")
        print(f"\nlab-01 powered on by hand; GET /ipxe?mac={mac} -> {status} "
              f"(what iPXE asks after DHCP)")
        print(_indent("\n".join(script.splitlines()[:6]) + "\n..."))
        table = peer.table
        assert table is not None
        arming = peer.progress.arming("lab-01")

        def token_path(stage: int) -> str:  # a token per host, stage and arming
            return f"/phone-home/lab-01/{stage}/{table.token('lab-01', stage, arming)}"

        status, body = await c.text(token_path(1), "POST")
        print(f"POST /phone-home/lab-01/1/<token> -> {status} {body}   (the installer)")

        async def stage_two() -> bool:
            return (await _host_state(c, "lab-01")).get("stage") == 2

        await c.until(stage_two, "lab-01 at stage 2")
        status, script = await c.text(f"/ipxe?mac={mac}")
        print(f"GET /ipxe?mac={mac} -> {status}   (the installer rebooted it)")
        print(_indent(script))
        status, body = await c.text(token_path(2), "POST")
        print(f"POST /phone-home/lab-01/2/<token> -> {status} {body}   (its first boot)")

        async def lab01_done() -> bool:
            return (await _host_state(c, "lab-01")).get("state") == "done"

        await c.until(lab01_done, "lab-01 done")
        status, script = await c.text(f"/ipxe?mac={mac}")
        print(f"GET /ipxe?mac={mac} -> {status}   (done: no install loop)")
        print(_indent(script))

        async def lab02_armed() -> bool:
            return (await _host_state(c, "lab-02")).get("state") == "waiting"

        await c.until(lab02_armed, "lab-02 to be armed")
        print("\n== vaq-peer rollout   (lab-01 done; the next batch, lab-02, is armed)")
        print(_indent(render(await c.api("/v1/rollouts/current"))))
        events = (await c.api("/v1/events?limit=1000"))["events"]
        print("\n== vaq-peer events   (the replicated journal)")
        for e in events:
            if e["kind"].startswith(("revision.", "rollout.", "host.")):
                print(f"   #{e['seq']} {e['kind']} {e.get('host') or ''}".rstrip())


async def _served(c: _Client, mac: str) -> bool:
    status, _ = await c.text(f"/ipxe?mac={mac}")
    return status == 200


async def run_demo_peer(sot: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="vaq-demo-") as tmp:
        root = Path(tmp)
        sha = _commit_lab(sot, root / "sot")
        config = load_config(_write_config(root, root / "sot"))
        peer = Peer(config)
        await peer.start()
        try:
            assert peer.cluster is not None
            await peer.cluster.wait_for_leader(timeout=10)
            await _walk(peer, (root / "admin.token").read_text().strip(), sha)
        finally:
            await peer.stop()
            peer.local_progress.close()
    return EXIT_OK


def run(sot: Path) -> int:
    return asyncio.run(run_demo_peer(sot))
