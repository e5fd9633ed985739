"""A group of real `vaq-peer serve` processes on loopback, driven through their REST API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADMIN = "admin-token-for-tests-0123456789"
READER = "read-token-for-tests-0123456789"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def cli_command() -> list[str]:
    """The `vaq-peer` console script of this virtualenv, as an operator runs it."""
    return [str(Path(sys.executable).parent / "vaq-peer")]


@dataclass
class Answer:
    status: int
    body: dict
    elapsed: float


@dataclass
class PeerProc:
    index: int
    http_port: int
    raft: str
    config: Path
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class PeerGroup:
    root: Path
    size: int
    peers: list[PeerProc] = field(default_factory=list)
    extra: str = ""  # more config, the same for every peer

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.size)
        raft = [f"127.0.0.1:{p}" for p in ports[self.size:]]
        (self.root / "secret").write_text("cGhvbmUtaG9tZS10b2tlbi1zZWNyZXQtMDEyMzQ1\n")
        (self.root / "raft.secret").write_text("cmFmdC1ncm91cC1wYXNzd29yZA==\n")
        (self.root / "raft.secret").chmod(0o600)
        (self.root / "admin.token").write_text(ADMIN + "\n")
        (self.root / "read.token").write_text(READER + "\n")
        for i in range(self.size):
            config = self.root / f"peer{i}.yaml"
            config.write_text(f"""
site: kinds
peer: peer-{i + 1}
data_dir: {self.root / f'data{i}'}
interface: lo
address: 127.0.0.1
sot: {{path: {REPO / 'tests/sot/fixtures/kinds'}}}
token_secret_file: {self.root / 'secret'}
http: {{listen: 127.0.0.1, port: {ports[i]}}}
tftp: {{enabled: false}}
dhcp: {{enabled: false}}
raft:
  address: "{raft[i]}"
  peers: {json.dumps(raft)}
  password_file: {self.root / 'raft.secret'}
api:
  tokens:
    - {{name: ops, role: admin, file: {self.root / 'admin.token'}}}
    - {{name: dashboard, role: read, file: {self.root / 'read.token'}}}
{self.extra}
""")
            self.peers.append(PeerProc(i, ports[i], raft[i], config, self.root / f"peer{i}.log"))

    def start(self, peer: PeerProc) -> None:
        exe = Path(sys.executable).parent / "vaq-peer"
        with peer.log.open("a") as out:
            peer.proc = subprocess.Popen([str(exe), "serve", "--config", str(peer.config)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def start_all(self) -> None:
        for peer in self.peers:
            self.start(peer)
        for peer in self.peers:
            self.wait_http(peer)

    def wait_http(self, peer: PeerProc, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not peer.alive():
                raise AssertionError(f"peer {peer.index} exited:\n{peer.log.read_text()}")
            if self.call(peer, "GET", "/healthz", token=None, timeout=2).status == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"peer {peer.index} HTTP not up:\n{peer.log.read_text()}")

    def kill(self, peer: PeerProc, sig: int = signal.SIGKILL) -> None:
        if peer.alive():
            os.killpg(peer.proc.pid, sig)  # type: ignore[union-attr]
            if sig == signal.SIGKILL:
                peer.proc.wait(timeout=10)  # type: ignore[union-attr]

    def stop_all(self) -> None:
        for peer in self.peers:
            if peer.alive():
                os.killpg(peer.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
                peer.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for peer in self.peers:
            if peer.proc is not None:
                try:
                    peer.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(peer.proc.pid, signal.SIGKILL)
                    peer.proc.wait(timeout=10)

    def call(self, peer: PeerProc, method: str, path: str, body: dict | None = None,
             token: str | None = ADMIN, timeout: float = 10) -> Answer:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(peer.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        start = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return Answer(0, {}, time.monotonic() - start)
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            parsed = {"text": raw.decode(errors="replace")}
        return Answer(status, parsed if isinstance(parsed, dict) else {"value": parsed},
                      time.monotonic() - start)

    def wait_leader(self, among: list[PeerProc] | None = None, timeout: float = 30) -> PeerProc:
        among = among or [p for p in self.peers if p.alive()]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for peer in among:
                ans = self.call(peer, "GET", "/v1/leader", timeout=2)
                if ans.status == 200 and ans.body.get("is_leader") and ans.body.get("has_quorum"):
                    return peer
            time.sleep(0.1)
        logs = "\n".join(p.log.read_text()[-2000:] for p in self.peers)
        raise AssertionError(f"no leader among {[p.index for p in among]} in {timeout} s\n{logs}")

    def wait_settled(self, timeout: float = 30) -> None:
        """Every live peer knows the same leader and is connected to every other live peer:
        a fresh group gets there a moment after its first leader is elected."""
        live = [p for p in self.peers if p.alive()]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = [self.call(p, "GET", "/v1/status", timeout=2).body.get("raft", {})
                     for p in live]
            leaders = {v.get("leader") for v in views}
            if (len(leaders) == 1 and None not in leaders
                    and all(v.get("has_quorum") for v in views)
                    and all({q.raft for q in live} - {v.get("self")} <= set(v.get("connected", []))
                            for v in views)):
                return
            time.sleep(0.1)
        raise AssertionError(f"the group did not settle in {timeout} s: {views}")

    def register_api_urls(self) -> None:
        """Name every peer and record its API URL in the replicated peer list (POST
        /v1/peers of an existing member only updates its entry), as an operator would."""
        leader = self.wait_leader()
        for peer in self.peers:
            ans = self.call(leader, "POST", "/v1/peers", {"address": peer.raft, "name":
                            f"peer-{peer.index + 1}", "api_url": peer.url})
            assert ans.status == 201, ans

    def all_events(self, peer: PeerProc) -> list[dict]:
        out, after = [], 0
        for _ in range(1000):
            page = self.call(peer, "GET", f"/v1/events?after={after}&limit=1000").body
            if not page.get("events"):
                return out
            out += page["events"]
            after = page["events"][-1]["seq"]
        raise AssertionError("too many pages")
