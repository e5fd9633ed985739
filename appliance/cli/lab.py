"""`vaq-peer lab up|status|down`: the virtual datacenter of appliance/lab.py, from the shell.

    vaq-peer lab up [--machines N]   build it (as root), push and approve the lab SoT
    vaq-peer lab status              peers, each machine's BMC, power-ons, console, workflow
    vaq-peer lab down                remove every namespace, process and file of it
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .client import ApiError, PeerClient
from .exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE

UP_TIMEOUT = 900  # the first `lab up` builds the test OS (a kernel package, an initramfs)


def _status(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / "status.json").read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cmd_up(args: argparse.Namespace) -> int:
    from ..lab import MAX_MACHINES, REPO, rigs_reason

    if not 1 <= args.machines <= MAX_MACHINES:
        print(f"vaq-peer lab: --machines must be 1..{MAX_MACHINES}", file=sys.stderr)
        return EXIT_USAGE
    reason = rigs_reason()
    if reason:
        print(f"vaq-peer lab: {reason}", file=sys.stderr)
        return EXIT_USAGE
    directory = Path(args.dir)
    current = _status(directory)
    if current is not None or directory.exists():
        print(f"vaq-peer lab: {directory} exists (a lab is up, or was not removed): "
              "`vaq-peer lab down` first", file=sys.stderr)
        return EXIT_USAGE
    other = _other_lab()
    if other:
        print(f"vaq-peer lab: another lab is up on this machine ({other} holds the lab's host "
              "address 198.18.0.254): only one at a time; `vaq-peer lab down --dir DIR` "
              "it first", file=sys.stderr)
        return EXIT_USAGE
    directory.mkdir(parents=True, mode=0o700)
    with (directory / "lab.log").open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "appliance.lab", "run", str(directory),
                                 str(args.machines)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
    print(f"building the lab in {directory} (supervisor pid {proc.pid}; the first time "
          "builds the test OS)...", flush=True)
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        st = _status(directory) or {}
        if st.get("phase") in ("running", "failed") or proc.poll() is not None:
            break
        time.sleep(1)
    st = _status(directory) or {}
    if st.get("phase") != "running":
        print(f"vaq-peer lab: not up ({st.get('phase') or 'no status'}): "
              f"{st.get('error') or (directory / 'lab.log').read_text()[-2000:]}\n"
              "`vaq-peer lab down` removes what was built", file=sys.stderr)
        return EXIT_FAILED
    print(f"lab up: 3 peers {', '.join(st['peers'])}; {len(st['machines'])} machine(s) "
          f"behind IPMI BMCs; revision {st['revision'][:12]} pushed, approved and applied")
    print(f"\n  export VAQ_PEER={st['peers'][0]} VAQ_TOKEN_FILE={st['token_file']}")
    print("  vaq-peer rollout --follow     # the machines powered, netbooted, installed")
    print(f"  vaq-peer lab status{_dir_flag(args)}          # BMCs, power-ons, consoles")
    print(f"  vaq-peer lab down{_dir_flag(args)}            # removes all of it")
    return EXIT_OK


def _other_lab() -> str | None:
    """The veth of a lab that is up, if any: two would route 198.18.0.0/24 twice."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                         timeout=10).stdout
    return next((line.split()[1] for line in out.splitlines()
                 if " 198.18.0.254/" in line and line.split()[1].startswith("vql")), None)


def _dir_flag(args: argparse.Namespace) -> str:
    from ..lab import DEFAULT_DIR

    return "" if Path(args.dir) == DEFAULT_DIR else f" --dir {args.dir}"


def cmd_status(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    st = _status(directory)
    if st is None:
        print(f"no lab in {directory} (`vaq-peer lab up`)", file=sys.stderr)
        return EXIT_FAILED
    alive = _alive(st.get("pid"))
    print(f"lab in {directory}: {st.get('phase')}, supervisor "
          f"{'running' if alive else 'GONE'} (pid {st.get('pid')})")
    if st.get("error"):
        print(f"error: {st['error']}")
    records: dict[str, dict] = {}
    token_file = st.get("token_file")
    if token_file and alive:
        token = Path(token_file).read_text().strip()
        for url in st.get("peers", []):
            try:
                hosts = PeerClient(url, token, timeout=5).get("/v1/hosts")
            except ApiError as exc:
                print(f"peer {url}: {exc.message}")
                continue
            records = {h["name"]: h for h in hosts.get("hosts", [])}
            print(f"peers: {', '.join(st['peers'])} (asked {url})")
            break
    rows = []
    for m in st.get("machines", []):
        workdir = directory / "machines" / m["name"]
        boots = _lines(workdir / "boots.log")
        console = [text for line in _lines(workdir / "console.log")
                   if (text := _printable(line).strip())]
        rec = records.get(m["name"], {})
        rows.append((m["name"], m["bmc"], len(boots), rec.get("state", "-"),
                     f"{rec.get('done', 0)}/{rec.get('stages', '-')}",
                     (console[-1] if console else "")[:60]))
    from .peer import table

    print(table(["MACHINE", "BMC", "POWER-ONS", "STATE", "DONE", "CONSOLE (last line)"], rows))
    return EXIT_OK if alive and st.get("phase") == "running" else EXIT_FAILED


def _printable(line: str) -> str:
    """A console line without terminal escapes (iPXE and the kernel draw with them)."""
    return "".join(c for c in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) if c.isprintable())


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def cmd_down(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    st = _status(directory)
    if st is None and not directory.exists():
        print(f"no lab in {directory}")
        return EXIT_OK
    pid = (st or {}).get("pid")
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    # a supervisor that failed or was killed: sweep what it left
    if str(Path(__file__).resolve().parents[2]) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tools.rigs.netns import sweep_stale

    swept = sweep_stale("vqlab")
    if st and st.get("link"):
        subprocess.run(["ip", "link", "del", st["link"]], capture_output=True, timeout=10)
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
    print(f"lab down: {directory} removed" + (f"; swept {len(swept)} namespace(s)"
                                              if swept else ""))
    return EXIT_OK


def add_lab_command(sub: argparse._SubParsersAction) -> None:
    from ..lab import DEFAULT_DIR

    p = sub.add_parser("lab", help="a virtual datacenter on this machine: 3 peers, QEMU "
                       "machines behind IPMI BMCs (as root, from a checkout)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "status", "down"])
    p.add_argument("--machines", type=int, default=2, metavar="N",
                   help="with up: how many machines (default 2)")
    p.add_argument("--dir", default=str(DEFAULT_DIR), help=f"the lab's state (default "
                   f"{DEFAULT_DIR})")
    p.set_defaults(func=lambda a: {"up": cmd_up, "status": cmd_status,
                                   "down": cmd_down}[a.action](a))
