"""Test rig: one real Raft peer (appliance.cluster) in its own process, driven by line-JSON.

Run as a program, it starts a node and answers one JSON line on stdout per JSON line read
on stdin; a write is acknowledged only after it is committed and applied on this node.
Imported, it gives the driver (`RigNode`, `free_ports`) that tests and tools/bench/raft.py
use, so the protocol lives in one file.

Requests: {"id": 1, "cmd": "event", "message": "m", "timeout": 5}
          {"id": 2, "cmd": "host", "name": "n1", "state": "booting"}
          {"id": 3, "cmd": "read", "what": "events" | "hosts" | "host", "name": ...}
          {"id": 4, "cmd": "status"}  {"id": 5, "cmd": "wait_leader", "timeout": 10}
          {"id": 6, "cmd": "add_peer" | "remove_peer", "address": "127.0.0.1:4001"}
          {"id": 7, "cmd": "wait_seq", "seq": 120, "timeout": 10}
Answers:  {"id": 1, "ok": true, ...} or {"id": 1, "ok": false, "error": "NoQuorum",
          "message": "...", "leader": "127.0.0.1:4002" | null}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

RIG = Path(__file__).resolve()
REPO = RIG.parents[2]


# ---- the node process -------------------------------------------------------------------


async def _handle(cluster, req: dict) -> dict:  # noqa: C901 - a branch per rig command
    from appliance.cluster import NotLeader

    cmd = req.get("cmd")
    timeout = req.get("timeout")
    try:
        if cmd == "event":
            t0 = time.perf_counter()
            seq = await cluster.append_event(req.get("kind", "rig"), message=req.get("message"),
                                             data=req.get("data"), timeout=timeout)
            return {"ok": True, "seq": seq, "commit_ms": (time.perf_counter() - t0) * 1e3}
        if cmd == "host":
            fields = {k: req[k] for k in ("stage", "state", "last_event", "revision") if k in req}
            return {"ok": True, **await cluster.set_host(req["name"], **fields)}
        if cmd == "read":
            what = req.get("what")
            if what == "events":
                out, after = [], 0
                while True:
                    page = cluster.events_since(after, 1000)
                    out += page["events"]
                    if not page["events"]:
                        return {"ok": True, "events": out, "first_seq": page["first_seq"],
                                "last_seq": page["last_seq"]}
                    after = page["events"][-1]["seq"]
            if what == "hosts":
                return {"ok": True, "hosts": cluster.hosts()}
            if what == "host":
                return {"ok": True, "host": cluster.host(req["name"])}
            if what == "peers":
                return {"ok": True, "peers": cluster.peers()}
            return {"ok": False, "error": "BadRequest", "message": f"unknown read {what!r}"}
        if cmd == "status":
            return {"ok": True, **asdict(cluster.status)}
        if cmd == "wait_leader":
            return {"ok": True, "leader": await cluster.wait_for_leader(timeout or 10.0)}
        if cmd == "wait_seq":
            deadline = time.monotonic() + (timeout or 10.0)
            while True:
                last = cluster.events_since(0, 0)["last_seq"]
                if last >= req["seq"] or time.monotonic() >= deadline:
                    return {"ok": last >= req["seq"], "last_seq": last, "error": "Timeout"}
                await cluster.follow_events(last, limit=1, timeout=deadline - time.monotonic())
        if cmd == "add_peer":
            await cluster.add_peer(req["address"], timeout=timeout)
            return {"ok": True}
        if cmd == "remove_peer":
            await cluster.remove_peer(req["address"], timeout=timeout)
            return {"ok": True}
        return {"ok": False, "error": "BadRequest", "message": f"unknown cmd {cmd!r}"}
    except Exception as exc:  # noqa: BLE001 - every failure is the test's answer
        return {"ok": False, "error": type(exc).__name__, "message": str(exc),
                "leader": exc.leader if isinstance(exc, NotLeader) else cluster.status.leader}


async def _serve(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from appliance.cluster import PYSYNCOBJ_DEFAULT, TUNED, Cluster, ClusterSettings

    settings = ClusterSettings(
        self_address=args.self_address,
        peers=tuple(args.peers.split(",")),
        data_dir=Path(args.data_dir),
        password_file=Path(args.password_file),
        timing=TUNED if args.timing == "tuned" else PYSYNCOBJ_DEFAULT,
        durable=not args.no_durable,
        log_compaction_entries=args.compaction,
    )
    cluster = Cluster(settings)
    await cluster.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = _PROTOCOL_OUT

    def reply(msg: dict) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    reply({"event": "ready", "address": args.self_address, "pid": os.getpid()})
    tasks: set[asyncio.Task] = set()

    async def one(req: dict) -> None:
        reply({"id": req.get("id"), **await _handle(cluster, req)})

    while line := await reader.readline():
        try:
            req = json.loads(line)
        except ValueError:
            reply({"ok": False, "error": "BadRequest", "message": "not JSON"})
            continue
        task = asyncio.create_task(one(req))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in list(tasks):
        task.cancel()
    await cluster.stop()


_PROTOCOL_OUT = sys.stdout


def main() -> None:
    # The protocol owns the real stdout; anything else printed there (structlog's default
    # output, pysyncobj) goes to stderr instead, which the driver keeps in node.log.
    global _PROTOCOL_OUT
    _PROTOCOL_OUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--self", dest="self_address", required=True)
    p.add_argument("--peers", required=True, help="comma-separated host:port of all members")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--password-file", required=True)
    p.add_argument("--timing", choices=("tuned", "default"), default="tuned")
    p.add_argument("--no-durable", action="store_true")
    p.add_argument("--compaction", type=int, default=5000)
    asyncio.run(_serve(p.parse_args()))


# ---- the driver -------------------------------------------------------------------------


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n ports free right now on host (the kernel picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class RigError(RuntimeError):
    pass


class RigNode:
    """One rig process. `prefix` runs it inside something, e.g. ["ip", "netns", "exec", ns]."""

    def __init__(self, address: str, peers: list[str], data_dir: Path, password_file: Path,
                 *, timing: str = "tuned", durable: bool = True, compaction: int = 5000,
                 prefix: list[str] | None = None) -> None:
        self.address = address
        self.peers = list(peers)
        self.data_dir = Path(data_dir)
        self.password_file = password_file
        self.timing = timing
        self.durable = durable
        self.compaction = compaction
        self.prefix = prefix or []
        self.proc: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._next = 0
        self._reader: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def command(self) -> list[str]:
        """The node's exact command line (benchmarks print it)."""
        args = [*self.prefix, sys.executable, str(RIG), "--self", self.address,
                "--peers", ",".join(self.peers), "--data-dir", str(self.data_dir),
                "--password-file", str(self.password_file), "--timing", self.timing,
                "--compaction", str(self.compaction)]
        return [*args, "--no-durable"] if not self.durable else args

    async def start(self, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = self.command()
        stderr = open(self.data_dir / "node.log", "ab")  # noqa: SIM115, ASYNC230 (lives with the process)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=stderr, limit=2**24)
        finally:
            stderr.close()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line or json.loads(line).get("event") != "ready":
            raise RigError(f"{self.address} did not start: {line!r}; see {self.data_dir}/node.log")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            fut = self._pending.pop(msg.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RigError(f"{self.address} exited"))
        self._pending.clear()

    async def call(self, cmd: str, *, wait: float = 30.0, **fields: Any) -> dict:
        """Send one request; return the answer (ok true or false). Raises RigError if the
        process is gone or silent for `wait` seconds."""
        if not self.running:
            raise RigError(f"{self.address} is not running")
        self._next += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        self.proc.stdin.write((json.dumps({"id": self._next, "cmd": cmd, **fields}) + "\n")
                              .encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(fut, wait)

    def signal(self, sig: int) -> None:
        if self.running:
            os.kill(self.proc.pid, sig)

    async def kill(self) -> None:
        """kill -9, as a crash or a power cut of this peer would."""
        if self.running:
            self.proc.kill()
            await self.proc.wait()
        await self._drain_reader()

    async def stop(self, timeout: float = 10.0) -> None:
        """Clean stop: close stdin; the node destroys its Raft state and exits."""
        if self.running:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._drain_reader()

    async def _drain_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
            self._reader = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.data_dir / "node.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""


async def find_leader(nodes: list[RigNode], timeout: float = 15.0) -> RigNode:
    """The running node that all running nodes agree is the leader."""
    deadline = time.monotonic() + timeout
    while True:
        live = [n for n in nodes if n.running]
        statuses = await asyncio.gather(*(n.call("status", wait=5) for n in live))
        leaders = {s.get("leader") for s in statuses}
        for n, s in zip(live, statuses, strict=True):
            if s.get("is_leader") and leaders == {n.address} and s.get("ready"):
                return n
        if time.monotonic() >= deadline:
            raise RigError(f"no agreed leader after {timeout} s: {statuses}")
        await asyncio.sleep(0.05)


def stop_all_signal(nodes: list[RigNode]) -> None:
    """Last-resort cleanup (SIGKILL), for finally blocks."""
    for n in nodes:
        with contextlib.suppress(ProcessLookupError):
            n.signal(signal.SIGCONT)
            n.signal(signal.SIGKILL)


if __name__ == "__main__":
    main()
