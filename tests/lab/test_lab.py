"""The virtual lab as the README shows it: its lines run exactly as written (from the
checkout, as root, the `export` included), then docs/lab.md's commands with that
environment. `lab up --machines 2`: 3 peers in namespaces, 2 QEMU machines behind their
own ipmi_sim BMCs, the lab SoT pushed and approved; `rollout --follow` until both machines
are installed through their BMCs; `lab down` leaves no namespace, process or file behind."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.lab import DEFAULT_DIR, rigs_reason

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = str(Path(sys.executable).parent)


def sh_block(doc: str, first: str) -> list[str]:
    """The command lines of the doc's first ```sh block that contains `first`, comments
    dropped."""
    block = next(b for b in re.findall(r"```sh\n(.*?)```", (REPO / doc).read_text(), re.S)
                 if first in b)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def run_lines(lines: list[str], env: dict[str, str], timeout: float
              ) -> tuple[dict[int, int], str]:
    """Run the lines in one bash, as a reader pastes them (an `export` holds for the lines
    after it); each line's exit code, and everything printed. The bash and whatever it
    started are killed if it outlives `timeout`."""
    script = "".join(f"{line}\nprintf '\\n@@ {n} %s\\n' $?\n" for n, line in enumerate(lines))
    proc = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    codes = {int(n): int(c) for n, c in re.findall(r"^@@ (\d+) (\d+)$", out, re.M)}
    return codes, out


def exported(lines: list[str]) -> dict[str, str]:
    line = next(x for x in lines if x.startswith("export "))
    return dict(word.split("=", 1) for word in shlex.split(line)[1:])


def test_the_readme_lab_lines_install_two_machines_and_down_removes_it() -> None:
    reason = rigs_reason()
    if reason:
        pytest.skip(reason)
    if DEFAULT_DIR.exists():
        pytest.skip(f"{DEFAULT_DIR} exists: a lab is up on this machine")
    readme = sh_block("README.md", "lab up")
    assert readme[-1] == ".venv/bin/vaq-peer lab down", readme
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    for key in ("VAQ_PEER", "VAQ_TOKEN", "VAQ_TOKEN_FILE"):
        env.pop(key, None)
    pid = None
    try:
        codes, out = run_lines(readme[:-1], env, timeout=2000)
        status = json.loads((DEFAULT_DIR / "status.json").read_text())
        pid = status.get("pid")
        assert codes == {n: 0 for n in range(len(readme) - 1)}, out[-4000:]
        assert "lab-01 done" in out and "lab-02 done" in out, out[-4000:]
        env.update(exported(readme))
        assert env["VAQ_PEER"] == status["peers"][0]
        assert env["VAQ_TOKEN_FILE"] == status["token_file"]
        _check_what_docs_lab_md_shows(env, status)
        codes, out = run_lines(readme[-1:], env, timeout=300)
        assert codes == {0: 0}, out
    finally:
        if DEFAULT_DIR.exists():
            subprocess.run([f"{VENV_BIN}/vaq-peer", "lab", "down"], timeout=300, env=env,
                           capture_output=True)
    assert not DEFAULT_DIR.exists()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                text=True).stdout
    assert f"vqlab-{pid}-" not in namespaces, namespaces
    processes = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True,
                               text=True).stdout
    left = [line for line in processes.splitlines()
            if str(DEFAULT_DIR) in line or f"vqbmc{pid}x" in line]
    assert not left, left
    assert f"vql{pid}" not in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                             text=True).stdout


def vaq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([f"{VENV_BIN}/vaq-peer", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def _check_what_docs_lab_md_shows(env: dict[str, str], status: dict) -> None:
    """docs/lab.md's lines between the export and `lab down`, as written; then what they
    show, read closely: each machine powered by its BMC once per stage, the power intents
    in the journal, lab-01's history, and its serial console from every peer."""
    lines = sh_block("docs/lab.md", "lab up")
    middle = lines[lines.index(next(x for x in lines if x.startswith("export "))) + 2:-1]
    assert [x.split()[1] for x in middle] == ["lab", "host", "console"], middle
    codes, out = run_lines(middle, env, timeout=300)
    assert codes == {n: 0 for n in range(len(middle))}, out
    shown = vaq("lab", "status", env=env)
    for name in ("lab-01", "lab-02"):
        row = next(line for line in shown.stdout.splitlines() if line.startswith(name))
        # powered on for stage 1, power-cycled for stage 2: by its BMC, twice
        assert row.split()[2:5] == ["2", "done", "2/2"], shown.stdout
    # One power-on intent per stage, each with its outcome journaled: ok, or, when the
    # leadership moved while it ran (2 busy cores), "outcome unknown" and not repeated (the
    # BMC's own count above says the machine was powered on all the same).
    events = json.loads(vaq("events", "--limit", "1000", "--json", env=env).stdout)
    boots = {(e["host"], e["data"]["intent_id"]) for e in events["events"]
             if e["kind"] in ("intent.ok", "intent.failed")
             and e.get("data", {}).get("action") == "power.boot"}
    intents = [(e["kind"], e.get("host"), e.get("message"), e.get("data"))
               for e in events["events"] if e["kind"].startswith("intent.")]
    assert sorted(host for host, _ in boots) == ["lab-01", "lab-01", "lab-02", "lab-02"], intents
    assert all((m or "").startswith("outcome unknown") for kind, _, m, _ in intents
               if kind == "intent.failed"), intents
    history = json.loads(vaq("host", "lab-01", "--events", "--json", env=env).stdout)
    assert "host.done" in [e["kind"] for e in history["events"]]
    # the guest's serial port, read through its BMC's SOL by the leader, from any peer
    for peer in status["peers"]:
        console = vaq("console", "lab-01", "--peer", peer, env=env)
        assert console.returncode == 0, console
        assert "VAQ-TEST: PHONED-HOME 52:54:00:18:00:01" in console.stdout, console.stdout
