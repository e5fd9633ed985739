"""Serial-over-LAN consoles: what a machine printed while it was in a stage, kept on disk.

An install that fails is read, not guessed: while a host with an IPMI BMC is in a stage, the
peer that drives it (the leader) holds the BMC's SOL session (pyghmi's `Console`) and
appends everything the machine prints to `<dir>/<host>.log`, rotated at `max_bytes` into
`.log.1`... (`keep` files). A BMC offers one SOL session at a time, so only one peer records;
the API reads the log on whichever peer has it.

pyghmi is blocking and drives all its sessions from `Console.wait_for_rsp`: one thread runs
that loop for every console of this peer; opening and closing sessions happen on it too.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """Records the SOL console of each host in `want()`, until it leaves it."""

    def __init__(self, directory: Path, max_bytes: int = 1 << 20, keep: int = 3) -> None:
        self.root = directory
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.keep = max_bytes, keep
        self._wanted: dict[str, SolTarget] = {}
        self._open: dict[str, tuple[Any, tuple[int, int]]] = {}  # host -> (Console, run)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def path(self, host: str) -> Path | None:
        return self.root / f"{host}.log" if SAFE_NAME.match(host) else None

    def want(self, hosts: dict[str, SolTarget]) -> None:
        """The hosts to record from now on; the others' sessions are closed."""
        with self._lock:
            self._wanted = {h: t for h, t in hosts.items() if self.path(h) is not None}
        if self._wanted and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="sol-consoles",
                                            daemon=True)
            self._thread.start()

    def recording(self) -> list[str]:
        return sorted(self._open)

    def _loop(self) -> None:
        from pyghmi.ipmi import console

        while not self._stop.is_set():
            with self._lock:
                wanted = dict(self._wanted)
            for host in [h for h, (_, run) in self._open.items()
                         if h not in wanted or wanted[h].run != run]:
                self._close(host)
            for host, target in wanted.items():
                if host not in self._open:
                    self._connect(console, host, target)
            if self._open:
                try:
                    console.Console.wait_for_rsp(timeout=0.5)
                except Exception as exc:  # noqa: BLE001 - pyghmi's loop must not end the recorder
                    log.warning("console.loop_error", error=str(exc))
                    self._stop.wait(1)
            else:
                self._stop.wait(0.5)
        for host in list(self._open):
            self._close(host)

    def _connect(self, console: Any, host: str, target: SolTarget) -> None:
        path = self.path(host)
        assert path is not None
        sink = ConsoleLog(path, self.max_bytes, self.keep)

        def received(data: Any) -> None:
            if isinstance(data, dict):  # pyghmi's status and error reports
                if data.get("error"):
                    log.warning("console.error", host=host, error=str(data["error"]))
                return
            sink.append(data if isinstance(data, bytes) else str(data).encode())

        try:
            self._open[host] = (console.Console(
                bmc=target.address, userid=target.user, password=target.password,
                port=target.port, iohandler=received, force=True), target.run)
            log.info("console.recording", host=host, bmc=target.address, file=str(path))
        except Exception as exc:  # noqa: BLE001 - a BMC that refuses SOL: logged, retried
            log.warning("console.unavailable", host=host, bmc=target.address, error=str(exc))

    def _close(self, host: str) -> None:
        session, _ = self._open.pop(host, (None, None))
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()
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
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

