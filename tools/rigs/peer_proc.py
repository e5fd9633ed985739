"""A `vaq-peer serve` process on loopback for end-to-end tests: its secrets, its config and
its lifetime, written once here instead of in every test.

The config is the common loopback peer (site `lab`, interface lo, address 127.0.0.1, no DHCP
or TFTP, no artifact prefetch, an admin API token); each test adds the sections it is about
(`sot:` or `source:`, `remote:`, `github:`, `bmc:`) as YAML text.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ADMIN = "rig-admin-token-0123456789abcdef"
READER = "rig-read-token-0123456789abcdef"
EXE = str(Path(sys.executable).parent / "vaq-peer")


def free_tcp_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_secrets(root: Path, **files: str) -> None:
    """Secret files as a peer keeps them: one value each, mode 600."""
    defaults = {"secret": "cGhvbmUtaG9tZS1rZXktZm9yLXRlc3Rz",
                "raft.secret": "cmFmdC1rZXktZm9yLXRlc3Rz",
                "admin.token": ADMIN, "read.token": READER}
    for name, value in {**defaults, **files}.items():
        (root / name).write_text(value + "\n")
        (root / name).chmod(0o600)


def write_config(root: Path, extra: str, *, name: str = "peer.yaml", index: int = 0,
                 http_port: int, raft: list[str]) -> Path:
    """A loopback peer's config; `raft` lists every member, this one at `index`."""
    config = root / name
    config.write_text(f"""
site: lab
peer: peer-{index + 1}
data_dir: {root / f'data{index}'}
interface: lo
address: 127.0.0.1
token_secret_file: secret
http: {{listen: 127.0.0.1, port: {http_port}}}
tftp: {{enabled: false}}
dhcp: {{enabled: false}}
prefetch_artifacts: false
raft: {{address: "{raft[index]}", peers: {json.dumps(raft)}, password_file: raft.secret}}
api:
  tokens:
    - {{name: ops, role: admin, file: admin.token}}
    - {{name: viewer, role: read, file: read.token}}
{extra}
""")
    return config


@dataclass
class PeerProcess:
    config: Path
    log: Path
    http_port: int
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=15)


def start_peer(config: Path, http_port: int, log: Path | None = None) -> PeerProcess:
    log = log or config.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen([EXE, "serve", "--config", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    return PeerProcess(config, log, http_port, proc)


@contextmanager
def single_peer(root: Path, extra: str, **secrets: str) -> Iterator[PeerProcess]:
    """One peer, a group of one: started, and always stopped with SIGTERM."""
    http_port, raft_port = free_tcp_ports(2)
    write_secrets(root, **secrets)
    peer = start_peer(write_config(root, extra, http_port=http_port,
                                   raft=[f"127.0.0.1:{raft_port}"]), http_port)
    try:
        yield peer
    finally:
        peer.stop()


def call(url: str, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body text); status 0 when nothing answered."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""
