"""Serial-over-LAN consoles: what a machine printed while it was in a stage, kept on disk.

An install that fails is read, not guessed: while a host with an IPMI BMC is in a stage, the
peer that drives it (the leader) holds the BMC's SOL session (pyghmi's `Console`) and
appends everything the machine prints to `<dir>/<host>.log`, rotated at `max_bytes` into
`.log.1`... (`keep` files). A BMC offers one SOL session at a time, so only one peer records;
the API reads the log on whichever peer has it.

When the leadership moves while a host is in a stage, its console is in two peers' logs. So
each session also notes where its run starts (`<host>.log.runs`: offset, wall-clock time,
stage, attempt, one JSON line a session) and `runs()` cuts the log into those segments: the
API gathers every peer's segments and `merge_runs` orders them by time, each under a line
naming the peer that recorded it. The notes are the peer's own, never parsed from what the
machine printed, which could forge them.

Each session runs in a process of its own (appliance/power/sol_session.py): pyghmi's session
state is per process, and a console closed in the peer's process logged out the session its
power actions to the same BMC were using.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import structlog

log = structlog.get_logger("vaquero.power.console")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_READ = 1 << 20
RETRY = 5.0  # seconds before a new attempt at a session the BMC ended or refused ...
MAX_RETRY = 300.0  # ... doubled after each one that ended again, up to this


@dataclass(frozen=True)
class SolTarget:
    address: str
    port: int
    user: str
    password: str = field(repr=False)
    # The machine's run this session belongs to (stage, attempt): a BMC connects its SOL to
    # the serial port when the session starts, so a power cycle needs a new session.
    run: tuple[int, int] = (0, 0)


class ConsoleLog:
    """One host's console file with rotation; appends come from the session's pump thread."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self.runs_path = path.with_name(f"{path.name}.runs")
        self._lock = threading.Lock()
        self._run: dict[str, Any] | None = None

    def begin(self, stage: int, attempt: int, at: float | None = None) -> None:
        """Note that a session for (stage, attempt) starts here, at the end of the file."""
        with self._lock:
            offset = self.path.stat().st_size if self.path.exists() else 0
            self._run = {"offset": offset, "at": time.time() if at is None else at,
                         "stage": stage, "attempt": attempt}
            with self.runs_path.open("a") as out:
                out.write(json.dumps(self._run) + "\n")

    def append(self, data: bytes) -> None:
        with self._lock:
            with self.path.open("ab") as out:
                out.write(data)
            if self.path.stat().st_size > self.max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.path.with_name(f"{self.path.name}.{self.keep + 1}").unlink(missing_ok=True)
        # The notes describe the current file only: its run goes on at its start.
        if self._run is None:
            self.runs_path.unlink(missing_ok=True)
        else:
            self._run = dict(self._run, offset=0)
            self.runs_path.write_text(json.dumps(self._run) + "\n")


class ConsoleRecorder:
    """Records the SOL console of each host in `want()`, until it leaves it (or its run,
    stage and attempt, changes: a new session for the new run)."""

    def __init__(self, directory: Path, max_bytes: int = 1 << 20, keep: int = 3) -> None:
        self.root = directory
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.keep = max_bytes, keep
        # host -> (session process, its run, when it started: time.monotonic())
        self._open: dict[str, tuple[subprocess.Popen[bytes], tuple[int, int], float]] = {}
        # host -> its sessions in a row that ended by themselves: a BMC without SOL refuses
        # every one, and each attempt is a login to a BMC that holds a few sessions at most
        self._ended: dict[str, int] = {}
        self._lock = threading.Lock()

    def path(self, host: str) -> Path | None:
        return self.root / f"{host}.log" if SAFE_NAME.match(host) else None

    def want(self, hosts: dict[str, SolTarget]) -> None:
        """The hosts to record from now on; the others' sessions are closed."""
        with self._lock:
            now = time.monotonic()
            # A session that ended (the BMC refused it: the previous leader still held SOL
            # after a leader change) is tried again, RETRY seconds after it started.
            for host in [h for h, (proc, run, started) in self._open.items()
                         if h not in hosts or hosts[h].run != run
                         or (proc.poll() is not None and now - started > self._delay(h))]:
                if self._open[host][0].poll() is not None:
                    self._ended[host] = self._ended.get(host, 0) + 1
                self._close(host)
            for host in [h for h in self._ended if h not in hosts]:
                del self._ended[host]
            for host, target in hosts.items():
                if host not in self._open and self.path(host) is not None:
                    self._connect(host, target)

    def _delay(self, host: str) -> float:
        return min(RETRY * 2 ** min(self._ended.get(host, 0), 16), MAX_RETRY)

    def recording(self) -> list[str]:
        return sorted(self._open)

    def _connect(self, host: str, target: SolTarget) -> None:
        path = self.path(host)
        assert path is not None
        sink = ConsoleLog(path, self.max_bytes, self.keep)
        sink.begin(*target.run)
        proc = subprocess.Popen([sys.executable, "-m", "appliance.power.sol_session"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"address": target.address, "port": target.port,
                                     "user": target.user,
                                     "password": target.password}).encode() + b"\n")
        proc.stdin.close()
        threading.Thread(target=_pump, args=(proc, sink, host), name=f"sol-{host}",
                         daemon=True).start()
        self._open[host] = (proc, target.run, time.monotonic())
        log.info("console.recording", host=host, bmc=target.address, file=str(path),
                 stage=target.run[0], attempt=target.run[1])

    def _close(self, host: str) -> None:
        proc, _, _ = self._open.pop(host)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.info("console.stopped", host=host)

    def runs(self, host: str) -> list[dict[str, Any]] | None:
        """This peer's recording of the host cut into its sessions, oldest first: each with
        its start time, stage, attempt and text (the last MAX_READ bytes of the current file
        at most); None when this peer holds no console of that host."""
        path = self.path(host)
        if path is None or not path.exists():
            return None
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            first = f.seek(max(0, size - MAX_READ))
            data = f.read(size - first)
        size = first + len(data)
        notes = _read_runs(path.with_name(f"{path.name}.runs"), size)
        if not notes or notes[0]["offset"] > first:  # text from before any note
            notes.insert(0, {"offset": first, "at": path.stat().st_mtime if not notes
                             else notes[0]["at"], "stage": None, "attempt": None})
        out = []
        for note, after in zip(notes, [*notes[1:], {"offset": size}], strict=True):
            start, end = max(note["offset"], first), after["offset"]
            if end > start:
                out.append({"at": note["at"], "stage": note["stage"],
                            "attempt": note["attempt"],
                            "text": data[start - first:end - first].decode(errors="replace")})
        return out

    def close(self) -> None:
        with self._lock:
            for host in list(self._open):
                self._close(host)


def merge_runs(by_peer: dict[str, list[dict[str, Any]]]) -> str:
    """Every peer's sessions of one host as one console, oldest first (by the time each
    started: the peers' clocks, which `vaq-peer doctor` checks for skew), each under a line
    naming the peer that recorded it. Text is only ever added at the end as sessions grow or
    start, so an offset into the result stays valid for following it."""
    runs = sorted(((run["at"], peer, run) for peer, peer_runs in by_peer.items()
                   for run in peer_runs), key=lambda item: (item[0], item[1]))
    parts: list[str] = []
    for at, peer, run in runs:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        what = (f"stage {run['stage']} attempt {run['attempt']}, " if run["stage"] is not None
                else "")
        if parts and not parts[-1].endswith("\n"):
            parts.append("\n")
        parts.append(f"--- vaquero: console recorded by {peer}: {what}from {when} ---\n")
        parts.append(run["text"])
    return "".join(parts)


def _read_runs(path: Path, size: int) -> list[dict[str, Any]]:
    """The session notes that fit the file (offsets rising, within its size)."""
    notes: list[dict[str, Any]] = []
    try:
        lines = path.read_text().splitlines()[-10000:]
    except OSError:
        return notes
    for line in lines:
        try:
            note = json.loads(line)
            offset, at = int(note["offset"]), float(note["at"])
        except (ValueError, KeyError, TypeError):
            continue
        if 0 <= offset <= size and (not notes or offset >= notes[-1]["offset"]):
            notes.append({"offset": offset, "at": at, "stage": note.get("stage"),
                          "attempt": note.get("attempt")})
    return notes


def _pump(proc: subprocess.Popen[bytes], sink: ConsoleLog, host: str) -> None:
    """The session's output into the host's log; its complaints into ours."""
    assert proc.stdout is not None and proc.stderr is not None
    stdout = cast(io.BufferedReader, proc.stdout)  # Popen's pipes are buffered readers
    while chunk := stdout.read1(65536):
        sink.append(chunk)
    error = proc.stderr.read(2000).decode(errors="replace").strip()
    try:
        code = proc.wait(timeout=10)  # its pipes are closed: it is exiting
    except subprocess.TimeoutExpired:
        code = None
    if error and code not in (0, -15):  # 0: stopped (SIGTERM) and logged out
        log.warning("console.session_ended", host=host, error=error.splitlines()[-1])

