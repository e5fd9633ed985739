"""Serial-over-LAN consoles: what a machine printed while it was in a stage, kept on disk.

An install that fails is read, not guessed: while a host with an IPMI BMC is in a stage, the
peer that drives it (the leader) holds the BMC's SOL session (pyghmi's `Console`) and
appends everything the machine prints to `<dir>/<host>.log`, rotated at `max_bytes` into
`.log.1`... (`keep` files). A BMC offers one SOL session at a time, so only one peer records;
the API reads the log on whichever peer has it.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import structlog

log = structlog.get_logger("vaquero.power.console")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_READ = 1 << 20


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
    """One host's console file with rotation; appends come from the pyghmi thread."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self._lock = threading.Lock()

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


class ConsoleRecorder:
    """Records the SOL console of each host in `want()`, until it leaves it (or its run,
    stage and attempt, changes: a new session for the new run)."""

    def __init__(self, directory: Path, max_bytes: int = 1 << 20, keep: int = 3) -> None:
        self.root = directory
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.keep = max_bytes, keep
        self._open: dict[str, tuple[subprocess.Popen[bytes], tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def path(self, host: str) -> Path | None:
        return self.root / f"{host}.log" if SAFE_NAME.match(host) else None

    def want(self, hosts: dict[str, SolTarget]) -> None:
        """The hosts to record from now on; the others' sessions are closed."""
        with self._lock:
            for host in [h for h, (_, run) in self._open.items()
                         if h not in hosts or hosts[h].run != run]:
                self._close(host)
            for host, target in hosts.items():
                if host not in self._open and self.path(host) is not None:
                    self._connect(host, target)

    def recording(self) -> list[str]:
        return sorted(self._open)

    def _connect(self, host: str, target: SolTarget) -> None:
        path = self.path(host)
        assert path is not None
        sink = ConsoleLog(path, self.max_bytes, self.keep)
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
        self._open[host] = (proc, target.run)
        log.info("console.recording", host=host, bmc=target.address, file=str(path),
                 stage=target.run[0], attempt=target.run[1])

    def _close(self, host: str) -> None:
        proc, _ = self._open.pop(host)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.info("console.stopped", host=host)

    def read(self, host: str, offset: int | None = None, tail: int = 65536
             ) -> dict[str, Any] | None:
        """The console text from `offset` (bytes into the current file), or its last `tail`
        bytes; None when this peer holds no console of that host."""
        path = self.path(host)
        if path is None or not path.exists():
            return None
        size = path.stat().st_size
        start = max(0, size - min(tail, MAX_READ)) if offset is None else min(offset, size)
        if offset is not None and offset > size:  # rotated since: start over
            start = 0
        with path.open("rb") as f:
            f.seek(start)
            data = f.read(MAX_READ)
        return {"host": host, "offset": start, "next_offset": start + len(data),
                "text": data.decode(errors="replace")}

    def close(self) -> None:
        with self._lock:
            for host in list(self._open):
                self._close(host)


def _pump(proc: subprocess.Popen[bytes], sink: ConsoleLog, host: str) -> None:
    """The session's output into the host's log; its complaints into ours."""
    assert proc.stdout is not None and proc.stderr is not None
    stdout = cast(io.BufferedReader, proc.stdout)  # Popen's pipes are buffered readers
    while chunk := stdout.read1(65536):
        sink.append(chunk)
    error = proc.stderr.read(2000).decode(errors="replace").strip()
    if error and proc.returncode not in (None, -15):
        log.warning("console.session_ended", host=host, error=error.splitlines()[-1])

