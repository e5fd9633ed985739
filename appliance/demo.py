"""`vaq-peer demo`: the lab site served by a real peer on loopback, walked like a machine would.

The offline part (validate, plan, render) shows what an engineer reviews; this part starts a
one-peer group (Raft, API, HTTP boot; no DHCP, which needs a boot interface) in a temporary
directory and takes host lab-01 through its workflow over HTTP: the chain script, its stage
script and config, the phone-home, the event in the replicated journal, and the disk boot
that follows (no install loop). Everything is removed afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import tempfile
from pathlib import Path

import aiohttp

from appliance.config import load_config
from appliance.peer import Peer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_config(root: Path, sot: Path) -> Path:
    for name in ("phone-home.secret", "raft.secret", "admin.token"):
        (root / name).write_text(base64.b64encode(os.urandom(24)).decode() + "\n")
        (root / name).chmod(0o600)
    config = root / "peer.yaml"
    config.write_text(f"""
site: lab
peer: peer-1
data_dir: {root / 'data'}
interface: lo
address: 127.0.0.1
sot: {{path: {sot}}}
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


async def _walk(peer: Peer, token: str) -> None:
    base = f"http://127.0.0.1:{peer.http_port}"
    auth = {"Authorization": f"Bearer {token}"}
    table = peer.table
    assert table is not None
    mac = table.hosts["lab-01"].host.boot_interface().mac  # type: ignore[union-attr]
    print("(the lab's kernels are fetched from their upstream URLs on first request; this demo "
          "does not download them)")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async def get(path: str, **kw: object) -> str:
            async with http.get(base + path, **kw) as resp:  # type: ignore[arg-type]
                return f"{resp.status} {await resp.text()}"

        print(f"peer up: {base} (API and HTTP boot), Raft group of one")
        status = await get("/v1/status", headers=auth)
        print(f"GET /v1/status -> {status[:160]}...")
        print(f"\nGET /ipxe?mac={mac}   (what iPXE on lab-01 asks after DHCP)")
        print("   " + (await get(f"/ipxe?mac={mac}")).replace("\n", "\n   ").rstrip())
        config = await get("/boot/lab-01/1/config")
        print(f"GET /boot/lab-01/1/config -> {config[:60]}... ({len(config)} bytes)")
        url = f"{base}/phone-home/lab-01/1/{table.token('lab-01')}"
        async with http.post(url, data=b"installed") as resp:
            print(f"POST /phone-home/lab-01/1/<token> -> {resp.status} {await resp.text()}")
        print(f"GET /ipxe?mac={mac}   (after its last network stage: no install loop)")
        print("   " + (await get(f"/ipxe?mac={mac}")).replace("\n", "\n   ").rstrip())
        for _ in range(50):  # the phone-home reaches the replicated journal via the outbox
            async with http.get(base + "/v1/events", headers=auth) as resp:
                events = (await resp.json())["events"]
            if any(e.get("kind") == "stage-done" for e in events):
                break
            await asyncio.sleep(0.1)
        print("GET /v1/events -> " + ", ".join(
            f"#{e['seq']} {e['kind']} {e.get('host') or ''}".strip() for e in events))


async def run_demo_peer(sot: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="vaq-demo-") as tmp:
        root = Path(tmp)
        config = load_config(_write_config(root, sot))
        peer = Peer(config)
        await peer.start()
        try:
            assert peer.cluster is not None
            await peer.cluster.wait_for_leader(timeout=10)
            await _walk(peer, (root / "admin.token").read_text().strip())
        finally:
            await peer.stop()
            peer.local_progress.close()
    return 0


def run(sot: Path) -> int:
    return asyncio.run(run_demo_peer(sot))
