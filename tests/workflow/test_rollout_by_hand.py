"""The workflow engine in a real peer process following a real git remote, with hosts that
have no BMC: the engine arms them in the order the rollout policy says and waits for each
stage's phone-home; the test plays the machines (it fetches the host's iPXE script as the
firmware would, and calls the phone-home URL found in it, as the booted OS does).

Shows: waves (workers only after etcd), batches of max_concurrent, stages served in order
and the disk after the last, pause holding the next batch, resume, a stage that never
reports retried then failed, the failure halting the rollout, `vaq-peer rollout` output.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from wf_sot import LabHost, init_repo, push, write_sot

from tests.support.waiting import until
from tools.rigs.peer_proc import ADMIN, EXE, call, free_tcp_ports, single_peer

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
HOSTS = [LabHost("etcd-1", "etcd", "52:54:00:77:00:01", "198.18.0.31"),
         LabHost("work-1", "workers", "52:54:00:77:00:02", "198.18.0.32"),
         LabHost("work-2", "workers", "52:54:00:77:00:03", "198.18.0.33"),
         LabHost("work-3", "workers", "52:54:00:77:00:04", "198.18.0.34")]
MAC = {h.name: h.mac for h in HOSTS} | {"work-9": "52:54:00:77:00:09",
                                         "svc-1": "52:54:00:77:00:21",
                                         "svc-2": "52:54:00:77:00:22"}




def api(base: str, path: str, method: str = "GET", body: dict | None = None) -> dict:
    status, text = call(f"{base}{path}", method,
                        json.dumps(body).encode() if body is not None else None, AUTH)
    assert status in (200, 201), (path, status, text)
    return json.loads(text)


def record(base: str, name: str) -> dict:
    status, text = call(f"{base}/v1/hosts/{name}", headers=AUTH)
    if status == 404:  # not served yet, and no record
        return {}
    assert status == 200, (name, status, text)
    return json.loads(text)["record"] or {}


def boot_as_machine(base: str, name: str) -> tuple[int | None, str]:
    """What the firmware would get: (stage served or None for the disk, script)."""
    # 503 until this peer serves the applied revision (it swaps within a second)
    status, script = until(lambda: (r := call(f"{base}/ipxe?mac={MAC[name]}"))[0] != 503 and r,
                           "the applied revision served")
    assert status == 200, (name, status, script)
    m = re.search(r"stage (\d+)/\d+", script)
    return (int(m.group(1)) if m and "boot from the local disk" not in script else None), script


def phone_home(base: str, script: str) -> None:
    url = re.search(r"vaq\.phone_home=(\S+)", script).group(1)
    path = "phone-home/" + url.split("/phone-home/", 1)[1]  # via this peer, on loopback
    status, _ = call(f"{base}/{path}", "POST", b"{}")
    assert status == 200, url


def run_stages(base: str, name: str, stages: int = 2, final: str = "done") -> None:
    for stage in range(1, stages + 1):
        until(lambda stage=stage: record(base, name).get("state") == "waiting"
              and record(base, name).get("stage") == stage, f"{name} waiting for stage {stage}")
        served, script = boot_as_machine(base, name)
        assert served == stage, script
        phone_home(base, script)
    until(lambda: record(base, name).get("state") == final, f"{name} {final}")
    assert boot_as_machine(base, name)[0] is None  # no install loop: the disk from now on


def armed(base: str) -> set[str]:
    hosts = api(base, "/v1/hosts")["hosts"]
    return {h["name"] for h in hosts if h.get("armed_seq") is not None}


def lab_repo(tmp_path: Path, hosts: list[LabHost], message: str, **sot) -> tuple[Path, Path, str]:
    """(work tree, bare remote, SHA) of a pushed SoT whose artifacts are never fetched."""
    work, bare = init_repo(tmp_path)
    write_lab(tmp_path, work, hosts, **sot)
    return work, bare, push(work, message)


def write_lab(tmp_path: Path, work: Path, hosts: list[LabHost], **sot) -> None:
    blob = tmp_path / "never-fetched"
    blob.write_bytes(b"artifacts are not fetched in this test")
    write_sot(work, hosts, blob, blob, peers=["198.18.0.2"], http_port=8080, **sot)


def following(tmp_path: Path, bare: Path):
    """A one-peer group following the bare repository."""
    return single_peer(tmp_path, f'source: {{url: "file://{bare}", ref: main, '
                                 'poll_interval: 1, poll_jitter: 0}')


def wait_planned(base: str, sha: str) -> None:
    until(lambda: call(f"{base}/v1/revisions/{sha}", headers=AUTH)[0] == 200
          and api(base, f"/v1/revisions/{sha}")["state"] == "awaiting_approval",
          f"{sha[:12]} planned", timeout=60)


def approve_when_planned(base: str, sha: str) -> None:
    wait_planned(base, sha)
    api(base, f"/v1/revisions/{sha}/approve", "POST", {"note": "go"})


def vaq(base: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args, "--peer", base], capture_output=True, text=True,
                          timeout=60, env={"VAQ_TOKEN": ADMIN, "PATH": "/usr/bin:/bin"})


def test_rollout_order_pause_resume_and_a_failed_stage(tmp_path: Path) -> None:
    _, bare, sha = lab_repo(tmp_path, HOSTS, "lab with etcd and workers", stage_timeout=10,
                            retries=1)
    with following(tmp_path, bare) as peer:
        base = peer.base
        wait_planned(base, sha)
        assert armed(base) == set()  # nothing moves before the approval
        approve_when_planned(base, sha)
        until(lambda: armed(base) == {"etcd-1"}, "etcd armed first")
        progress = api(base, "/v1/rollouts/current")
        assert progress["state"] == "running" and progress["revision"] == sha
        assert [c["cluster"] for c in progress["clusters"]] == ["etcd", "workers"]
        assert progress["clusters"][1]["state"] == "waiting"
        # armed first, then its runner's step message: two Raft entries
        until(lambda: record(base, "etcd-1")["message"].endswith("power it on into PXE by hand"),
              "etcd-1 waiting to be powered by hand", 10)
        run_stages(base, "etcd-1")

        # wave 2: batches of two, work-3 only after both of the first batch finished
        until(lambda: armed(base) >= {"work-1", "work-2"}, "first worker batch armed")
        assert "work-3" not in armed(base)
        shown = vaq(base, "rollout")
        assert "next: work-3 (cluster workers batch 2, once batch 1 is finished)" in \
            shown.stdout, shown.stdout
        run_stages(base, "work-1")
        assert "work-3" not in armed(base)
        paused = vaq(base, "rollout", "pause", "--reason", "look at work-1 first")
        assert paused.returncode == 0 and "running -> paused" in paused.stdout, paused
        run_stages(base, "work-2")  # in flight: finishes while paused
        time.sleep(3)  # several engine rounds: a paused rollout arms nothing new
        assert "work-3" not in armed(base)
        shown = vaq(base, "rollout")
        assert shown.returncode == 0 and "paused" in shown.stdout, shown
        assert "batch 2: work-3 pending" in shown.stdout, shown.stdout
        assert "armed on resume: work-3" in shown.stdout, shown.stdout
        assert "  hosts: 2 done, 1 pending" in shown.stdout, shown.stdout
        assert vaq(base, "rollout", "resume").returncode == 0
        until(lambda: "work-3" in armed(base), "work-3 armed after resume")

        # work-3 never reports: retried once after 10 s, failed after 10 more, rollout halts
        until(lambda: record(base, "work-3").get("attempt") == 1, "work-3 retried", 40)
        until(lambda: record(base, "work-3").get("state") == "failed", "work-3 failed", 40)
        until(lambda: api(base, "/v1/rollouts/current")["state"] == "failed",
              "the rollout halted")
        follow = vaq(base, "rollout", "--follow", "--for", "5")
        assert follow.returncode == 1, follow  # ended, not done
        assert "FAILED work-3 (cluster workers, stage 1): stage 1 firmware: no phone-home " \
               "within 10 s; no retries left" in follow.stdout, follow.stdout
        assert "HALTED: cluster workers: 1 host(s) failed, max_fail is 0" in follow.stdout
        assert boot_as_machine(base, "work-3")[0] is None  # failed: left on its disk
        # the cause is fixed: resume retries the failed host, and the rollout completes
        resumed = vaq(base, "rollout", "resume", "--reason", "cable replaced")
        assert resumed.returncode == 0 and "armed again: work-3" in resumed.stdout, resumed
        run_stages(base, "work-3")
        until(lambda: api(base, "/v1/rollouts/current")["state"] == "done", "rollout done")

        kinds = [e["kind"] for e in api(base, "/v1/events?limit=1000")["events"]]
        assert "rollout.started" in kinds and "rollout.paused" in kinds
        assert kinds.index("rollout.failed") > kinds.index("rollout.running")
        assert "rollout.done" in kinds


def test_abort_then_a_site_that_installs_new_hosts_only_when_armed(tmp_path: Path) -> None:
    hosts = [*HOSTS[:3], LabHost("work-3", "workers", HOSTS[3].mac, HOSTS[3].ipv4,
                                 never_provision=True)]
    work, bare, rev1 = lab_repo(tmp_path, hosts, "lab", stage_timeout=60)
    with following(tmp_path, bare) as peer:
        base = peer.base
        approve_when_planned(base, rev1)
        until(lambda: record(base, "etcd-1").get("state") == "waiting", "etcd-1 waiting")
        assert boot_as_machine(base, "work-3")[0] is None  # never_provision: always the disk
        aborted = vaq(base, "rollout", "abort", "--reason", "wrong image")
        assert aborted.returncode == 0 and "running -> aborted" in aborted.stdout, aborted
        until(lambda: record(base, "etcd-1").get("state") == "aborted", "etcd-1 aborted")
        assert "rollout aborted by ops: wrong image" in record(base, "etcd-1")["message"]
        assert boot_as_machine(base, "etcd-1")[0] is None  # no further stage served
        time.sleep(2)  # engine rounds: nothing else is armed under an aborted rollout
        assert armed(base) == {"etcd-1"}
        assert vaq(base, "rollout", "--follow", "--for", "3").returncode == 1

        # the site now installs new hosts only when an operator arms them
        extra = LabHost("work-9", "workers", MAC["work-9"], "198.18.0.39")
        write_lab(tmp_path, work, [*hosts, extra], stage_timeout=60, install_new_hosts=False)
        rev2 = push(work, "work-9, installed by hand")
        approve_when_planned(base, rev2)
        assert api(base, f"/v1/revisions/{rev2}")["summaries"]["planned"]["counts"] == {
            "hold": 1, "unchanged": 4}
        until(lambda: api(base, "/v1/rollouts/current")["revision"] == rev2
              and api(base, "/v1/rollouts/current")["state"] == "done", "rev2 rollout done")
        until(lambda: api(base, "/v1/status")["boot"]["revision"] == rev2, "rev2 served")
        assert boot_as_machine(base, "work-9")[0] is None  # held by the site policy
        refused = vaq(base, "arm", "work-3")
        assert refused.returncode == 1 and "never_provision" in refused.stderr, refused
        armed_out = vaq(base, "arm", "work-9", "--reason", "rack 4 is cabled")
        assert armed_out.returncode == 0, armed_out
        run_stages(base, "work-9")
        assert record(base, "work-9")["revision"] == rev2


def test_the_health_gate_holds_a_host_until_its_service_answers(tmp_path: Path) -> None:
    """Two hosts whose boot addresses are on loopback, so the test can be their service:
    svc-1's port opens after its last stage, svc-2's never does."""
    (port,) = free_tcp_ports(1)
    hosts = [LabHost("svc-1", "workers", MAC["svc-1"], "127.0.0.1", subnet="loop"),
             LabHost("svc-2", "workers", MAC["svc-2"], "127.0.0.2", subnet="loop")]
    _, bare, sha = lab_repo(tmp_path, hosts, "services behind a health gate", stage_timeout=60,
                            depends=False, health=f"{{type: tcp, port: {port}, timeout: 8}}")
    with following(tmp_path, bare) as peer:
        base = peer.base
        approve_when_planned(base, sha)
        run_stages(base, "svc-1", final="checking")
        assert record(base, "svc-1")["message"] == f"health: tcp 127.0.0.1:{port}"
        run_stages(base, "svc-2", final="checking")
        with socket.create_server(("127.0.0.1", port)) as service:
            service.settimeout(0.2)
            until(lambda: record(base, "svc-1").get("state") == "done", "svc-1 healthy")
        # svc-2's address never answers on that port: failed when the check's timeout ends
        until(lambda: record(base, "svc-2").get("state") == "failed", "svc-2 unhealthy", 30)
        assert record(base, "svc-2")["message"].startswith(
            f"health check failed for 8 s: tcp 127.0.0.2:{port}"), record(base, "svc-2")
        until(lambda: api(base, "/v1/rollouts/current")["state"] == "failed", "halted")


def test_a_revision_applied_mid_rollout_carries_its_unfinished_work(tmp_path: Path) -> None:
    """R2 (a change no host sees) is applied while R1's rollout has etcd-1 in flight and the
    workers not yet armed: etcd-1 finishes the stage work it started (armed once), and R2's
    rollout installs the workers R1 never reached instead of stranding them."""
    work, bare, rev1 = lab_repo(tmp_path, HOSTS, "lab", stage_timeout=60)
    with following(tmp_path, bare) as peer:
        base = peer.base
        approve_when_planned(base, rev1)
        until(lambda: record(base, "etcd-1").get("state") == "waiting", "etcd-1 in flight")
        (work / "notes").mkdir()
        (work / "notes" / "README.md").write_text("rack 4 cabling plan\n")
        rev2 = push(work, "notes only")
        approve_when_planned(base, rev2)
        until(lambda: api(base, "/v1/rollouts/current")["revision"] == rev2
              and api(base, "/v1/rollouts/current")["rollout"], "rev2's rollout started")
        progress = api(base, "/v1/rollouts/current")
        assert progress["base"] == "0" * 40, progress  # R1 never finished: its work carried
        # the engine opens R2's rollout and marks R1's superseded in two Raft entries
        until(lambda: api(base, f"/v1/rollouts/{rev1}")["rollout"]["state"] == "superseded",
              "rev1's rollout superseded", 10)
        assert [c["state"] for c in progress["clusters"]] == ["running", "waiting"], progress
        run_stages(base, "etcd-1")  # finished under R1 by the same runner, not re-armed
        assert record(base, "etcd-1")["revision"] == rev1
        for name in ("work-1", "work-2", "work-3"):
            until(lambda name=name: name in armed(base), f"{name} armed for R2")
            run_stages(base, name)
            assert record(base, name)["revision"] == rev2
        until(lambda: api(base, "/v1/rollouts/current")["state"] == "done", "rev2 done")
        arms = [e["host"] for e in api(base, "/v1/events?limit=1000")["events"]
                if e["kind"] == "host.armed"]
        assert sorted(arms) == ["etcd-1", "work-1", "work-2", "work-3"], arms


def test_force_provision_reinstalls_every_host_on_each_revision(tmp_path: Path) -> None:
    """The original Vaquero's `policy.force_provision`: R2 changes nothing any host sees,
    yet every host (never_provision excepted) is reinstalled for it, in the plan's order."""
    hosts = [HOSTS[0], HOSTS[1], LabHost("work-3", "workers", HOSTS[3].mac, HOSTS[3].ipv4,
                                         never_provision=True)]
    work, bare, rev1 = lab_repo(tmp_path, hosts, "lab", stage_timeout=60, force_provision=True)
    with following(tmp_path, bare) as peer:
        base = peer.base
        approve_when_planned(base, rev1)
        for name in ("etcd-1", "work-1"):
            run_stages(base, name)
        until(lambda: api(base, "/v1/rollouts/current")["state"] == "done", "rev1 done")
        (work / "notes").mkdir()
        (work / "notes" / "README.md").write_text("rack 4 cabling plan\n")
        rev2 = push(work, "notes only")
        approve_when_planned(base, rev2)
        planned = api(base, f"/v1/revisions/{rev2}")["summaries"]["planned"]
        assert planned["counts"] == {"reinstall": 2, "unchanged": 1}, planned
        for name in ("etcd-1", "work-1"):
            until(lambda name=name: record(base, name).get("revision") == rev2,
                  f"{name} armed again for R2")
            run_stages(base, name)
        until(lambda: api(base, "/v1/rollouts/current")["revision"] == rev2
              and api(base, "/v1/rollouts/current")["state"] == "done", "rev2 done")
        assert boot_as_machine(base, "work-3")[0] is None  # never_provision: left alone
        arms = [e["host"] for e in api(base, "/v1/events?limit=1000")["events"]
                if e["kind"] == "host.armed"]
        assert sorted(arms) == ["etcd-1", "etcd-1", "work-1", "work-1"], arms


def test_a_stage_health_check_holds_the_next_stage_until_it_passes(tmp_path: Path) -> None:
    """The original's per-boot `validate`: the firmware stage carries a TCP check of the
    host's address. svc-1's port opens after its phone-home, and only then is its install
    stage started; svc-2's never does: failed at the check, its install never started."""
    (port,) = free_tcp_ports(1)
    hosts = [LabHost("svc-1", "workers", MAC["svc-1"], "127.0.0.1", subnet="loop"),
             LabHost("svc-2", "workers", MAC["svc-2"], "127.0.0.2", subnet="loop")]
    _, bare, sha = lab_repo(tmp_path, hosts, "a stage behind a health check", stage_timeout=60,
                            depends=False,
                            firmware_health=f"{{type: tcp, port: {port}, timeout: 8}}")
    with following(tmp_path, bare) as peer:
        base = peer.base
        approve_when_planned(base, sha)
        for name in ("svc-1", "svc-2"):
            until(lambda name=name: record(base, name).get("state") == "waiting",
                  f"{name} waiting for stage 1")
            served, script = boot_as_machine(base, name)
            assert served == 1, script
            phone_home(base, script)
            until(lambda name=name: record(base, name).get("state") == "checking",
                  f"{name} checking after stage 1")
        ip = {"svc-1": "127.0.0.1", "svc-2": "127.0.0.2"}
        for name in ("svc-1", "svc-2"):
            assert record(base, name)["message"] == f"stage 1 health: tcp {ip[name]}:{port}"
            assert record(base, name)["stage"] == 1  # stage 2 not started while checking
        with socket.create_server(("127.0.0.1", port)) as service:
            service.settimeout(0.2)
            until(lambda: record(base, "svc-1").get("state") == "waiting"
                  and record(base, "svc-1").get("stage") == 2, "svc-1 on to stage 2")
        served, script = boot_as_machine(base, "svc-1")
        assert served == 2, script
        phone_home(base, script)
        until(lambda: record(base, "svc-1").get("state") == "done", "svc-1 done")
        until(lambda: record(base, "svc-2").get("state") == "failed", "svc-2 unhealthy", 30)
        rec = record(base, "svc-2")
        assert rec["stage"] == 1 and rec["message"].startswith(
            f"stage 1 health: health check failed for 8 s: tcp 127.0.0.2:{port}"), rec
        assert boot_as_machine(base, "svc-2")[0] is None  # failed: the disk, no stage 2


class _Recorder(BaseHTTPRequestHandler):
    """The hosts' drain endpoint: answers 200 and remembers (address, method, path)."""

    calls: ClassVar[list[tuple[str, str, str]]] = []

    def _answer(self) -> None:
        self.calls.append((self.server.server_address[0], self.command, self.path))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_before_shutdown_hooks_run_before_the_leader_powers_a_machine_out(
        tmp_path: Path) -> None:
    """The original's per-boot `before_shutdown`: the firmware stage asks the host to drain
    (POST) before the leader powers it into the install stage, the install stage asks for a
    handoff (PUT) before a reinstall powers it out of its installed system. svc-1 answers;
    svc-2 (its address has no listener) is held, failed and unpowered, with the reason, and
    arming it again (the next revision) runs the hook of what it still runs again. The next
    revision moves svc-1 to another address: the handoff goes to the address of the system
    it still runs, the new install's drain to its new one."""
    (port,) = free_tcp_ports(1)
    hosts = [LabHost("svc-1", "workers", MAC["svc-1"], "127.0.0.1", subnet="loop"),
             LabHost("svc-2", "workers", MAC["svc-2"], "127.0.0.2", subnet="loop")]
    hooks = {"firmware": f"[{{name: drain, type: http, port: {port}, path: /drain, "
                         "timeout: 8}]",
             "install": f"[{{name: handoff, type: http, method: PUT, port: {port}, "
                        "path: /handoff, timeout: 8}]"}
    work, bare, rev1 = lab_repo(tmp_path, hosts, "hosts that drain before a reboot",
                                stage_timeout=60, depends=False, before_shutdown=hooks)
    calls = _Recorder.calls
    calls.clear()
    servers = [ThreadingHTTPServer((address, port), _Recorder)
               for address in ("127.0.0.1", "127.0.0.3")]  # 127.0.0.2: nothing listens
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True).start()
    old, new = "127.0.0.1", "127.0.0.3"
    try:
        with following(tmp_path, bare) as peer:
            base = peer.base
            approve_when_planned(base, rev1)
            for name in ("svc-1", "svc-2"):
                until(lambda name=name: record(base, name).get("state") == "waiting",
                      f"{name} waiting for stage 1")
                assert not [e for e in api(base, "/v1/events?limit=1000")["events"]
                            if e.get("host") == name and  # a first install runs no hook
                            (e.get("message") or "").startswith("hook.")]
                served, script = boot_as_machine(base, name)
                assert served == 1, script
                phone_home(base, script)
            until(lambda: record(base, "svc-1").get("state") == "waiting"
                  and record(base, "svc-1").get("stage") == 2, "svc-1 on to stage 2")
            assert calls == [(old, "POST", "/drain")], calls  # before stage 2 was powered
            served, script = boot_as_machine(base, "svc-1")
            assert served == 2, script
            phone_home(base, script)
            until(lambda: record(base, "svc-1").get("state") == "done", "svc-1 done")
            assert calls == [(old, "POST", "/drain")], calls  # the last stage's: not yet

            until(lambda: record(base, "svc-2").get("state") == "failed", "svc-2 held", 40)
            held = record(base, "svc-2")
            assert held["message"].startswith(
                f"stage 1 before_shutdown drain (POST :{port}/drain): hook failed for 8 s: "
                f"POST http://127.0.0.2:{port}/drain: "), held
            assert held["message"].endswith("not powered: it still runs stage 1; arming it "
                                            "again runs the hooks again"), held
            assert boot_as_machine(base, "svc-2")[0] is None  # held: no stage 2 served
            journal = [(e["kind"], e.get("host"), e.get("message") or "")
                       for e in api(base, "/v1/events?limit=1000")["events"]]
            action = f"hook.before_shutdown drain (POST :{port}/drain)"
            assert ("intent.recorded", "svc-1", action) in journal, journal
            assert ("intent.recorded", "svc-2", action) in journal, journal
            assert any(k == "intent.ok" and h == "svc-1" for k, h, _ in journal), journal
            assert any(k == "intent.failed" and h == "svc-2" and "hook failed for 8 s" in m
                       for k, h, m in journal), journal

            # a reinstall of both: svc-1's installed system hands off first; svc-2 still
            # runs stage 1 of rev1, so its drain runs again (and fails again: still held)
            moved = [LabHost("svc-1", "workers", MAC["svc-1"], new, subnet="loop"), hosts[1]]
            write_lab(tmp_path, work, moved, stage_timeout=60, depends=False,
                      before_shutdown=hooks, install_note="v2")
            rev2 = push(work, "install v2")
            approve_when_planned(base, rev2)
            until(lambda: record(base, "svc-1").get("revision") == rev2
                  and record(base, "svc-1").get("state") == "waiting", "svc-1 reinstalling")
            assert calls == [(old, "POST", "/drain"), (old, "PUT", "/handoff")], calls
            until(lambda: record(base, "svc-2").get("revision") == rev2
                  and record(base, "svc-2").get("state") == "failed", "svc-2 held again", 40)
            assert record(base, "svc-2")["message"].startswith(
                f"stage 1 of revision {rev1[:12]} before_shutdown drain (POST :{port}/drain)"
                ": hook failed for 8 s"), record(base, "svc-2")
            run_stages(base, "svc-1")  # the drain of its new stage 1 answers again
            assert calls[2:] == [(new, "POST", "/drain")], calls
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
