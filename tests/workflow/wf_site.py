"""The three-peer site of the workflow end-to-end tests: `vaq-peer serve` in a namespace per
peer on one boot bridge, Raft between them, a git SoT they follow, IPMI BMC secrets, and an
`ops` namespace from which the test talks to the API (what an operator's shell would be).

Why a module: several end-to-end tests (the rollout through a leader kill, skewed clocks, a
serving peer killed mid-boot) run the same site; each adds only what it checks.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.waiting import until
from tools.rigs.netns import NetnsRig

EXE = str(Path(sys.executable).parent / "vaq-peer")
ADMIN = "e2e-admin-token-0123456789abcdef"
BMC_PASSWORD = "Lab-ipmi-Pw-4412"
PEERS = ["198.18.0.2", "198.18.0.3", "198.18.0.4"]


class Site:
    """The three peer processes and the ops namespace that talks to them."""

    def __init__(self, rig: NetnsRig, tmp: Path, bare: Path,
                 clock_offsets: tuple[float, ...] = (0, 0, 0), extra_config: str = "",
                 bmc_max_sessions: int | None = None) -> None:
        """`extra_config`: YAML appended to every peer's config (e.g. a `workflow:` block of
        short windows)."""
        self.rig, self.tmp = rig, tmp
        self.lan = rig.netns("lan")
        rig.bridge(self.lan, "br0", "198.18.0.1/24")
        self.ops = rig.netns("ops")
        rig.veth(self.lan, self.ops, bridge="br0", cidr_b="198.18.0.250/24")
        self.procs: dict[int, subprocess.Popen] = {}
        self.links: dict[int, tuple] = {}  # peer -> (its namespace, its port on the bridge)
        self.logs: dict[int, Path] = {}
        secrets = tmp / "secrets"
        secrets.mkdir()
        for name, value in {"phone-home.key": "ZTJlLXdvcmtmbG93LXBob25lLWhvbWUta2V5",
                            "raft.key": "ZTJlLXdvcmtmbG93LXJhZnQ=", "admin.token": ADMIN}.items():
            (secrets / name).write_text(value + "\n")
            (secrets / name).chmod(0o600)
        (secrets / "bmc.yaml").write_text(
            f'lab-ipmi: {{user: admin, password: "{BMC_PASSWORD}"}}\n')
        (secrets / "bmc.yaml").chmod(0o600)
        raft = [f"{a}:7001" for a in PEERS]
        sessions = f", max_sessions: {bmc_max_sessions}" if bmc_max_sessions else ""
        for i, address in enumerate(PEERS):
            ns = rig.netns(f"peer{i + 1}")
            link, _ = rig.veth(self.lan, ns, bridge="br0", cidr_b=f"{address}/24")
            self.links[i] = (ns, link)
            config = tmp / f"peer{i + 1}.yaml"
            config.write_text(f"""
site: lab
peer: peer-{i + 1}
data_dir: {tmp / f'data{i + 1}'}
interface: eth0
token_secret_file: {secrets / 'phone-home.key'}
source: {{url: "file://{bare}", ref: main, poll_interval: 1, poll_jitter: 0}}
bmc: {{secrets_file: {secrets / 'bmc.yaml'}{sessions}}}
prefetch_artifacts: true
clock_offset_s: {clock_offsets[i]}
http: {{port: 8080}}
raft: {{address: "{raft[i]}", peers: {json.dumps(raft)}, password_file: {secrets / 'raft.key'}}}
api:
  tokens:
    - {{name: ops, role: admin, file: {secrets / 'admin.token'}}}
{extra_config}""")
            self.logs[i] = tmp / f"peer{i + 1}.log"
            with self.logs[i].open("w") as out:
                self.procs[i] = ns.popen([EXE, "serve", "--config", str(config)], stdout=out,
                                         stderr=subprocess.STDOUT)

    def api(self, path: str, method: str = "GET", body: dict | None = None,
            peer: int | None = None) -> dict:
        """Through a live peer (the first that answers, unless `peer` is given)."""
        order = [peer] if peer is not None else [i for i, p in self.procs.items()
                                                  if p.poll() is None]
        last = ""
        for i in order:
            argv = ["curl", "-sS", "-m", "20", "-X", method, "-H", f"Authorization: Bearer {ADMIN}",
                    "-H", "Content-Type: application/json", "-w", "\n%{http_code}"]
            if body is not None:
                argv += ["--data", json.dumps(body)]
            out = self.ops.run(*argv, f"http://{PEERS[i]}:8080{path}", check=False, timeout=30)
            text, _, code = out.stdout.rpartition("\n")
            if code.startswith("2"):
                return json.loads(text)
            last = f"peer {i + 1}: {code} {text} {out.stderr}"
        raise AssertionError(f"{method} {path}: {last}")

    def try_api(self, path: str) -> dict | None:
        try:
            return self.api(path)
        except (AssertionError, json.JSONDecodeError, subprocess.TimeoutExpired):
            return None

    def leader(self) -> int | None:
        """The leader as a live peer sees it (index into PEERS), None while there is none."""
        address = (self.try_api("/v1/leader") or {}).get("leader")
        return PEERS.index(address.split(":")[0]) if address else None

    def cut(self, i: int, up: bool = False) -> None:
        """Take a peer's link down at both ends (a real partition: its sockets stay open)."""
        ns, link = self.links[i]
        state = "up" if up else "down"
        self.lan.run("ip", "link", "set", link, state)
        ns.run("ip", "link", "set", "eth0", state)

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- peer{i + 1}\n" + "\n".join(p.read_text().splitlines()[-lines:])
                         for i, p in self.logs.items())




def rollout_state(site: Site, sha: str) -> str | None:
    data = site.try_api(f"/v1/rollouts/{sha}")
    return data["state"] if data else None


def approve(site: Site, sha: str) -> None:
    until(lambda: (site.try_api(f"/v1/revisions/{sha}") or {}).get("state")
          == "awaiting_approval", f"{sha[:12]} planned", 90)
    site.api(f"/v1/revisions/{sha}/approve", "POST", {"note": "e2e"})


def events(site: Site) -> list[dict]:
    out, after = [], 0
    for _ in range(50):
        page = site.api(f"/v1/events?after={after}&limit=1000")
        out += page["events"]
        if not page["events"] or page["events"][-1]["seq"] >= page["last_seq"]:
            return out
        after = page["events"][-1]["seq"]
    return out


def powered_on(site: Site, sha: str) -> bool:
    return any(e["kind"] == "intent.ok" and e.get("revision") == sha
               and e.get("data", {}).get("action") == "power.boot" for e in events(site))
