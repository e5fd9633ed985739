"""Three sites in network namespaces, one SoT in a git repository they all follow: ams1 (3
peers, the canary), fra1 and sjc1 (1 peer each, the second wave). Real `vaq-peer serve`
processes; each site a LAN bridge behind its own router namespace; the routers joined by a
WAN bridge. The test plays the machines (one host per site, no BMC: it fetches the host's
iPXE script as firmware would and calls the phone-home URL in it) and the operators (one
approval per site).

1. A commit reaches the canary first: fra1 and sjc1 hold it (approved, blocked by the
   order) until ams1's rollout is done and soaked; `vaq-peer sites` on any peer shows all
   three sites.
2. The link fra1-sjc1 is cut: each keeps learning the other's new summaries, relayed by ams1.
3. A second commit: ams1 applies it; ams1 is cut off from everyone mid-rollout. It keeps
   serving boots (/ipxe answers in its LAN) and its rollout finishes; fra1 and sjc1 wait (the
   SoT says on_stale: wait) and say why.
4. Every link heals: the second wave applies, finishes, and every site sees every site done.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fed_sot import FedSite, write_fed_sot

from tests.support.waiting import until
from tools.rigs.netns import Netns, NetnsRig
from tools.rigs.netns import unavailable_reason as netns_unavailable

pytestmark = [pytest.mark.slow, pytest.mark.root]
EXE = str(Path(sys.executable).parent / "vaq-peer")
ADMIN = "fed-e2e-admin-token-0123456789abc"
GIT_ENV = {"GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.test",
           "GIT_COMMITTER_NAME": "Ops", "GIT_COMMITTER_EMAIL": "ops@example.test",
           "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}
SITES = [FedSite("ams1", "198.18.1", ["198.18.1.2", "198.18.1.3", "198.18.1.4"],
                 host_mac="52:54:00:fe:01:01"),
         FedSite("fra1", "198.18.2", ["198.18.2.2"], host_mac="52:54:00:fe:02:01"),
         FedSite("sjc1", "198.18.3", ["198.18.3.2"], host_mac="52:54:00:fe:03:01")]
SOAK = 3
FEDERATION = f"""\
rollout:
  waves: [[ams1], [fra1, sjc1]]
  soak: {SOAK}
  on_failure: halt_all
interval: 1
summary_ttl: 8
on_stale: wait
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True, env=GIT_ENV, timeout=30).stdout.strip()




class Federation:
    """The namespaces, the peer processes and the links between the sites."""

    def __init__(self, rig: NetnsRig, tmp: Path, bare: Path) -> None:
        self.rig, self.tmp = rig, tmp
        self.wan = rig.netns("wan")
        rig.bridge(self.wan, "wan0", "198.19.0.254/24")
        self.wan.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.lan: dict[str, Netns] = {}
        self.uplink: dict[str, str] = {}  # site -> its link's name in the wan namespace
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        secrets = tmp / "secrets"
        secrets.mkdir()
        (secrets / "admin.token").write_text(ADMIN + "\n")
        for k, site in enumerate(SITES, start=1):
            lan = self.lan[site.id] = rig.netns(f"lan{site.id}")
            rig.bridge(lan, "br0", f"{site.subnet}.1/24")
            self.uplink[site.id], _ = rig.veth(self.wan, lan, bridge="wan0", name_b="wan",
                                               cidr_b=f"198.19.0.{k}/24")
            lan.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
            lan.run("ip", "route", "add", "default", "via", "198.19.0.254")
            self.wan.run("ip", "route", "add", f"{site.subnet}.0/24", "via", f"198.19.0.{k}")
            site_dir = secrets / site.id
            site_dir.mkdir()
            for name, value in (("phone-home.key", f"cGhvbmUtaG9tZS0{site.id}LWtleQ=="),
                                ("raft.key", f"cmFmdC0{site.id}LWtleQ==")):
                (site_dir / name).write_text(value + "\n")
                (site_dir / name).chmod(0o600)
            raft = [f"{a}:7001" for a in site.peers]
            for i, address in enumerate(site.peers, start=1):
                name = f"{site.id}-vaq-{i}"
                ns = rig.netns(name.replace("-", ""))
                rig.veth(lan, ns, bridge="br0", cidr_b=f"{address}/24")
                ns.run("ip", "route", "add", "default", "via", f"{site.subnet}.1")
                config = tmp / f"{name}.yaml"
                config.write_text(f"""
site: {site.id}
peer: {name}
data_dir: {tmp / f'data-{name}'}
interface: eth0
token_secret_file: {site_dir / 'phone-home.key'}
source: {{url: "file://{bare}", ref: main, poll_interval: 1, poll_jitter: 0}}
federation: {{key_file: {tmp / f'{site.id}.key'}}}
prefetch_artifacts: false
tftp: {{enabled: false}}
dhcp: {{enabled: false}}
http: {{port: 8080}}
raft: {{address: "{raft[i - 1]}", peers: {json.dumps(raft)},
        password_file: {site_dir / 'raft.key'}}}
api:
  tokens:
    - {{name: ops, role: admin, file: {secrets / 'admin.token'}}}
""")
                self.logs[name] = tmp / f"{name}.log"
                with self.logs[name].open("w") as out:
                    self.procs[name] = ns.popen([EXE, "serve", "--config", str(config)],
                                                stdout=out, stderr=subprocess.STDOUT)

    # --- talking to the sites --------------------------------------------------------------

    def curl(self, ns: Netns, url: str, method: str = "GET", body: dict | None = None,
             token: bool = True) -> tuple[int, str]:
        argv = ["curl", "-sS", "-m", "15", "-X", method, "-w", "\n%{http_code}"]
        if token:
            argv += ["-H", f"Authorization: Bearer {ADMIN}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        try:
            out = ns.run(*argv, url, check=False, timeout=30)
        except subprocess.TimeoutExpired:
            return 0, ""
        text, _, code = out.stdout.rpartition("\n")
        return int(code) if code.isdigit() else 0, text

    def api(self, site: str, path: str, method: str = "GET", body: dict | None = None,
            ns: Netns | None = None) -> dict | None:
        """Through the first peer of the site that answers 2xx (from the site's own LAN by
        default: reachable also while the site is cut off)."""
        for address in next(s for s in SITES if s.id == site).peers:
            status, text = self.curl(ns or self.lan[site], f"http://{address}:8080{path}",
                                     method, body)
            if 200 <= status < 300:
                return json.loads(text)
        return None

    def revision_state(self, site: str, sha: str) -> str | None:
        return (self.api(site, f"/v1/revisions/{sha}") or {}).get("state")

    def rollout_state(self, site: str, sha: str) -> str | None:
        return (self.api(site, f"/v1/rollouts/{sha}") or {}).get("state")

    def view(self, site: str) -> dict[str, dict]:
        data = self.api(site, "/v1/federation") or {}
        return {s["site"]: s for s in data.get("sites", [])}

    def approve(self, site: str, sha: str) -> None:
        until(lambda: self.revision_state(site, sha) == "awaiting_approval",
              f"{site}: {sha[:12]} awaiting approval", 120, self.tails)
        assert self.api(site, f"/v1/revisions/{sha}/approve", "POST", {"note": "e2e"})

    def boot_host(self, site: FedSite) -> None:
        """Play the machine: wait until it is armed, fetch its script, phone home."""
        base = f"http://{site.peers[0]}:8080"

        def waiting() -> bool:
            record = (self.api(site.id, f"/v1/hosts/{site.host}") or {}).get("record") or {}
            return record.get("state") == "waiting"

        until(waiting, f"{site.host} waiting for its stage", 120, self.tails)
        answers: list[tuple[int, str]] = []

        def script_served() -> bool:
            # The host record is replicated before the peer asked has swapped the applied
            # revision's boot table in: until then it answers 503 with Retry-After, as a
            # machine would see it. Anything else is an answer to judge.
            answers.append(self.curl(self.lan[site.id], f"{base}/ipxe?mac={site.host_mac}",
                                     token=False))
            return answers[-1][0] != 503

        until(script_served, f"{base}/ipxe for {site.host}", 30,
              lambda: f"{answers[-3:]}\n{self.tails()}", interval=1)
        status, script = answers[-1]
        assert status == 200 and "stage 1/1" in script, (status, script)
        url = re.search(r"vaq\.phone_home=(\S+)", script).group(1)
        path = "phone-home/" + url.split("/phone-home/", 1)[1]  # the URL may name a VIP
        status, text = self.curl(self.lan[site.id], f"{base}/{path}", "POST", {}, token=False)
        assert status == 200, (status, text)

    # --- links -----------------------------------------------------------------------------

    def cut_pair(self, a: FedSite, b: FedSite) -> None:
        self.lan[a.id].run("ip", "route", "add", "blackhole", f"{b.subnet}.0/24")
        self.lan[b.id].run("ip", "route", "add", "blackhole", f"{a.subnet}.0/24")

    def heal_pair(self, a: FedSite, b: FedSite) -> None:
        self.lan[a.id].run("ip", "route", "del", "blackhole", f"{b.subnet}.0/24")
        self.lan[b.id].run("ip", "route", "del", "blackhole", f"{a.subnet}.0/24")

    def isolate(self, site: FedSite, up: bool = False) -> None:
        self.wan.run("ip", "link", "set", self.uplink[site.id], "up" if up else "down")

    def tails(self, lines: int = 12) -> str:
        return "\n".join(f"--- {n}\n" + "\n".join(p.read_text().splitlines()[-lines:])
                         for n, p in self.logs.items())

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def applied_at(fed: Federation, site: str, sha: str) -> float:
    record = fed.api(site, f"/v1/revisions/{sha}") or {}
    return next(h["at"] for h in record["history"] if h["state"] == "applied")


def canary_first(fed: Federation, rev1: str) -> None:
    """The canary applies first; the second wave holds until its rollout is done and soaked."""
    ams1, fra1, sjc1 = SITES
    for site in SITES:
        fed.approve(site.id, rev1)
    until(lambda: fed.revision_state("ams1", rev1) == "applied", "ams1 applies rev1", 60,
          fed.tails)
    time.sleep(3)  # several exchanges: the second wave must still hold
    for site in (fra1, sjc1):
        assert fed.revision_state(site.id, rev1) == "approved"
        # its own summary says so once it published the approval (a tick and a commit)
        until(lambda site=site: ((m := fed.view(site.id)[site.id])["state"], m["waits_for"],
                                 m["allowed"]) == ("blocked", ["ams1"], False),
              f"{site.id} shows itself blocked by ams1", 30,
              lambda site=site: str(fed.view(site.id)))
        assert fed.revision_state(site.id, rev1) == "approved"
    fed.boot_host(ams1)
    until(lambda: fed.rollout_state("ams1", rev1) == "done", "ams1's rollout done", 60,
          fed.tails)
    ams1_done = fed.api("ams1", f"/v1/rollouts/{rev1}")["rollout"]["updated_at"]
    for site in (fra1, sjc1):
        until(lambda site=site: fed.revision_state(site.id, rev1) == "applied",
              f"{site.id} applies rev1", 90, fed.tails)
        assert applied_at(fed, site.id, rev1) >= ams1_done + SOAK - 0.5
        fed.boot_host(site)
    for site in (fra1, sjc1):
        until(lambda site=site: fed.rollout_state(site.id, rev1) == "done",
              f"{site.id}'s rollout done", 60, fed.tails)


def every_peer_shows_every_site(fed: Federation) -> None:
    """`vaq-peer sites` on a peer of every site shows all three, done; `--site` forwards."""
    _, fra1, sjc1 = SITES
    env = {"VAQ_TOKEN": ADMIN, "PATH": "/usr/bin:/bin"}
    for site in SITES:
        def sites_json(site=site) -> dict | None:
            out = fed.wan.run(EXE, "sites", "--json", "--peer", f"http://{site.peers[-1]}:8080",
                              check=False, env=env)
            data = json.loads(out.stdout) if out.returncode == 0 else {}
            rows = {s["site"]: s for s in data.get("sites", [])}
            return data if set(rows) == {"ams1", "fra1", "sjc1"} and all(
                r["state"] == "done" for r in rows.values()) else None

        until(sites_json, f"vaq-peer sites at {site.id} shows all three done", 30, fed.tails)
    text = fed.wan.run(EXE, "sites", "--peer", f"http://{fra1.peers[0]}:8080", env=env).stdout
    assert re.search(r"^ams1 +1 +done", text, re.M), text
    assert re.search(r"^fra1 \* +2 +done", text, re.M), text
    # any command can name another site: fra1's peer forwards to sjc1 with our token
    out = fed.wan.run(EXE, "--site", "sjc1", "hosts", "--json", "--peer",
                      f"http://{fra1.peers[0]}:8080", env=env)
    assert [h["name"] for h in json.loads(out.stdout)["hosts"]] == [sjc1.host]


def relayed_around_a_cut(fed: Federation) -> None:
    """fra1 and sjc1 cannot reach each other: ams1 relays their summaries."""
    _, fra1, sjc1 = SITES
    fed.cut_pair(fra1, sjc1)
    seq = fed.view("fra1")["sjc1"]["seq"]
    relayed = until(lambda: (s := fed.view("fra1")["sjc1"])["seq"] > seq + 2
                    and s["via"].startswith("ams1") and s, "fra1 learns sjc1 via ams1", 60,
                    fed.tails)
    assert not relayed["stale"], relayed
    until(lambda: fed.view("sjc1")["fra1"]["via"].startswith("ams1"),
          "sjc1 learns fra1 via ams1", 60, fed.tails)


def cut_off_canary(fed: Federation, rev2: str) -> None:
    """The canary applies rev2 and is cut off from everyone mid-rollout: it keeps serving
    boots and finishes; the second wave waits, as the SoT says, and says why, until an admin
    overrides the gate for one site."""
    ams1, fra1, sjc1 = SITES
    for site in SITES:
        fed.approve(site.id, rev2)
    until(lambda: fed.revision_state("ams1", rev2) == "applied", "ams1 applies rev2", 60,
          fed.tails)
    fed.isolate(ams1)
    fed.boot_host(ams1)  # served from its own LAN: the data plane does not wait
    until(lambda: fed.rollout_state("ams1", rev2) == "done",
          "ams1 finishes its rollout while cut off", 60, fed.tails)
    for site in (fra1, sjc1):
        mine = until(lambda site=site: (m := fed.view(site.id)[site.id])["waits_for"]
                     == ["ams1"] and "stale" in m["reason"] and m,
                     f"{site.id} waits for the stale ams1", 60, fed.tails)
        assert "on_stale: wait" in mine["reason"], mine
        assert fed.revision_state(site.id, rev2) == "approved"
    # an admin lets sjc1 go anyway (recorded in the journal); fra1 keeps waiting
    out = fed.lan["sjc1"].run(EXE, "override", rev2[:12], "--reason", "ams1 unreachable",
                              "--peer", f"http://{sjc1.peers[0]}:8080",
                              env={"VAQ_TOKEN": ADMIN, "PATH": "/usr/bin:/bin"}, check=False)
    assert out.returncode == 0, out.stderr
    until(lambda: fed.revision_state("sjc1", rev2) == "applied", "sjc1 applies rev2 (override)",
          60, fed.tails)
    assert fed.revision_state("fra1", rev2) == "approved"
    events = (fed.api("sjc1", "/v1/events?limit=1000") or {}).get("events", [])
    assert any(e["kind"] == "federation.override" and e["revision"] == rev2 for e in events)


def heal_and_converge(fed: Federation, rev2: str) -> None:
    ams1, fra1, sjc1 = SITES
    fed.isolate(ams1, up=True)
    fed.heal_pair(fra1, sjc1)
    for site in (fra1, sjc1):
        until(lambda site=site: fed.revision_state(site.id, rev2) == "applied",
              f"{site.id} applies rev2 after the heal", 90, fed.tails)
        fed.boot_host(site)
    for site in SITES:
        until(lambda site=site: all(
            s["state"] == "done" and not s["stale"] for s in fed.view(site.id).values())
            and len(fed.view(site.id)) == 3,
            f"{site.id} sees every site done with rev2", 90, fed.tails)
        metrics = fed.curl(fed.lan[site.id], f"http://{site.peers[0]}:8080/metrics",
                           token=False)[1]
        assert 'vaquero_federation_summary_age_seconds{site="ams1"}' in metrics
    # honest sites never refuse each other's summaries as forged or foreign; a request held
    # up by the cut and delivered after the heal may carry an older summary of its sender,
    # refused as a replay (and never stored)
    for site in SITES:
        data = fed.api(site.id, "/v1/federation")
        assert set(data["refused"]) <= {"replay"}, data["refused"]


def test_three_sites_roll_in_order_relay_and_survive_a_cut_off_canary(tmp_path: Path) -> None:
    if reason := netns_unavailable():
        pytest.skip(reason)
    for site in SITES:  # as docs/federation.md says: the line to declare is printed
        out = subprocess.run([EXE, "federation-key", str(tmp_path / f"{site.id}.key")],
                             capture_output=True, text=True, check=True, timeout=60)
        site.keys = [out.stdout.strip()]
        assert (tmp_path / f"{site.id}.key").stat().st_mode & 0o777 == 0o600
    artifact = tmp_path / "artifact"
    artifact.write_bytes(b"never fetched: the test plays the machines")
    bare, work = tmp_path / "sot.git", tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True,
                   env=GIT_ENV, timeout=30)
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    git(work, "remote", "add", "origin", str(bare))

    def commit(note: str, message: str) -> str:
        write_fed_sot(work, SITES, federation=FEDERATION, artifact=artifact, note=note)
        git(work, "add", "-A")
        git(work, "commit", "-qm", message)
        git(work, "push", "-q", "origin", "main")
        return git(work, "rev-parse", "HEAD")

    with NetnsRig() as rig:
        fed = Federation(rig, tmp_path, bare)
        try:
            for site in SITES:
                until(lambda site=site: (fed.api(site.id, "/v1/leader") or {}).get("leader"),
                      f"a leader at {site.id}", 90, fed.tails)
            canary_first(fed, commit("v1", "three sites, one host each"))
            every_peer_shows_every_site(fed)
            relayed_around_a_cut(fed)
            rev2 = commit("v2", "every host reinstalls")
            cut_off_canary(fed, rev2)
            heal_and_converge(fed, rev2)
        finally:
            fed.close()
