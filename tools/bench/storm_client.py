"""The boot-storm client: N simulated machines, each walking the real PXE/iPXE boot chain.

Why one process with real protocols: the storm benchmark (tools/bench/storm.py) must load
a boot chain the way machines do, and the same client must load ours and the reference chain
in the same run. Each machine, from one network namespace:

  1. DHCP DORA as a PXE ROM (option 93 arch 0, PXEClient vendor class, broadcast flag)
  2. TFTP of the boot file the offer names (undionly.kpxe), lockstep, blksize 1456
  3. DHCP DORA again as iPXE (user class "iPXE"): the offer names the boot script URL
  4. HTTP GET of that script (a chain), then of the host's script it chains to, run by a
     small iPXE script interpreter (set, goto, chain, kernel, initrd, boot, `||`)
  5. HTTP GET of the kernel and initrds as the script loads them (sizes checked)
  6. HTTP POST to the phone-home URL from the kernel command line (vaq.phone_home=)

The machines of one process share one DHCP socket (replies are broadcast, so every client
process gets each; matched by xid); each has its own TFTP socket and one keep-alive HTTP
connection (iPXE pools connections too). storm.py splits the machines over several client
processes that power on from one shared wall-clock start, so that the client is not the
limit. Every wait is
bounded: a machine that does not finish by the deadline counts as a failure, by phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import resource
import socket
import struct
import time
import urllib.parse
from dataclasses import dataclass, field

from tools.bench.tftp_client import TftpError, tftp_get

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
PXE_VENDOR = b"PXEClient:Arch:00000:UNDI:002001"


class BootFailed(Exception):
    def __init__(self, phase: str, detail: str) -> None:
        super().__init__(f"{phase}: {detail}")
        self.phase = phase


@dataclass
class Machine:
    mac: str
    uuid: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    started: float = 0.0
    finished: float | None = None
    failed: str | None = None


# -- DHCP --------------------------------------------------------------------------------------


def dhcp_packet(kind: int, xid: int, mac: bytes, *, ipxe: bool, uuid: bytes,
                requested: bytes | None = None, server_id: bytes | None = None) -> bytes:
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                         b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, mac, b"", b"")
    opts = [(53, bytes([kind])), (57, struct.pack("!H", 1472)), (93, b"\0\0"),
            (94, b"\x01\x02\x01"), (97, b"\0" + uuid), (60, PXE_VENDOR),
            (55, bytes([1, 3, 6, 12, 15, 17, 43, 60, 66, 67, 119, 128, 175]))]
    if ipxe:
        opts.append((77, b"iPXE"))
    if requested:
        opts.append((50, requested))
    if server_id:
        opts.append((54, server_id))
    body = b"".join(bytes([code, len(value)]) + value for code, value in opts)
    return header + MAGIC + body + b"\xff"


@dataclass
class Reply:
    kind: int
    yiaddr: bytes
    siaddr: bytes
    file: str
    options: dict[int, bytes]


def parse_reply(data: bytes) -> tuple[int, Reply] | None:
    if len(data) < 240 or data[0] != 2 or data[236:240] != MAGIC:
        return None
    xid = struct.unpack_from("!I", data, 4)[0]
    options: dict[int, bytes] = {}
    i = 240
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        size = data[i + 1]
        options[code] = data[i + 2:i + 2 + size]
        i += 2 + size
    kind = options.get(53, b"\0")[0]
    file = data[108:236].split(b"\0")[0].decode(errors="replace")
    return xid, Reply(kind, data[16:20], data[20:24], file, options)


class DhcpClients:
    """One socket on port 68 for every machine; replies routed to waiters by xid."""

    def __init__(self, interface: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("0.0.0.0", 68))
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.waiters: dict[int, asyncio.Queue[Reply]] = {}
        self.loop.add_reader(sock.fileno(), self._on_readable)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _on_readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            parsed = parse_reply(data)
            if parsed and parsed[0] in self.waiters:
                self.waiters[parsed[0]].put_nowait(parsed[1])

    def send(self, packet: bytes) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self.sock.sendto(packet, ("255.255.255.255", 67))

    async def _exchange(self, xid: int, packet: bytes, want: int, deadline: float) -> Reply:
        """Send, resend with backoff (1, 2, 4 s ...) until a reply of kind `want` or NAK."""
        queue = self.waiters[xid]
        wait = 1.0
        while True:
            self.send(packet)
            until = min(time.monotonic() + wait, deadline)
            while (left := until - time.monotonic()) > 0:
                try:
                    reply = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
                if reply.kind == want:
                    return reply
                if reply.kind == NAK:
                    raise BootFailed("dhcp", "NAK")
            if time.monotonic() >= deadline:
                raise BootFailed("dhcp", "no answer" if want == OFFER else "no ACK")
            wait = min(wait * 2, 8.0)

    async def dora(self, mac: str, uuid: bytes, *, ipxe: bool, timeout: float) -> Reply:
        xid = random.getrandbits(32)
        while xid in self.waiters:
            xid = random.getrandbits(32)
        self.waiters[xid] = asyncio.Queue()
        raw = bytes.fromhex(mac.replace(":", ""))
        deadline = time.monotonic() + timeout
        try:
            offer = await self._exchange(xid, dhcp_packet(DISCOVER, xid, raw, ipxe=ipxe,
                                                          uuid=uuid), OFFER, deadline)
            server = offer.options.get(54, offer.siaddr)
            return await self._exchange(xid, dhcp_packet(
                REQUEST, xid, raw, ipxe=ipxe, uuid=uuid, requested=offer.yiaddr,
                server_id=server), ACK, deadline)
        finally:
            del self.waiters[xid]


# -- HTTP (a small keep-alive HTTP/1.1 client: bodies counted, not kept, unless asked) ------


class Http:
    """`source`: the machine's own address (its lease), as a real machine's connections."""

    def __init__(self, timeout: float, source: str | None = None) -> None:
        self.timeout = timeout
        self.source = source
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.netloc = ""

    async def close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            with contextlib.suppress(OSError):
                await self.conn[1].wait_closed()
            self.conn = None

    async def request(self, method: str, url: str, body: bytes = b"",
                      keep: bool = True) -> tuple[int, bytes, int]:
        """(status, body if `keep` else b"", body size); one reconnect on a stale connection."""
        for attempt in (0, 1):
            try:
                return await asyncio.wait_for(self._request(method, url, body, keep),
                                              self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _request(self, method: str, url: str, body: bytes,
                       keep: bool) -> tuple[int, bytes, int]:
        parts = urllib.parse.urlsplit(url)
        if self.conn is None or parts.netloc != self.netloc:
            await self.close()
            self.conn = await asyncio.open_connection(
                parts.hostname, parts.port or 80,
                local_addr=(self.source, 0) if self.source else None)
            self.netloc = parts.netloc
        reader, writer = self.conn
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        head = (f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: iPXE/1.0\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        writer.write(head.encode() + body)
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("closed")
        status = int(status_line.split()[1])
        length, close = None, False
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding":
                raise BootFailed("http", f"{url}: chunked answers are not expected")
        if length is None:
            raise BootFailed("http", f"{url}: no Content-Length")
        data = bytearray() if keep else None
        left = length
        while left:
            chunk = await reader.read(min(left, 1 << 20))
            if not chunk:
                raise ConnectionResetError("closed mid-body")
            left -= len(chunk)
            if data is not None:
                data += chunk
        if close:
            await self.close()
        return status, bytes(data or b""), length


IPXE_VARS = re.compile(r"\$\{([^}]+)\}")
_VALUE_OPTS = frozenset({"--name", "-n", "--timeout", "-t"})  # options that take a value


class Ipxe:
    """Just enough of iPXE's script language to walk the boot chains benchmarked here:
    `set`, labels and `goto`, `chain`, `kernel`, `initrd`/`imgfetch`/`module`, `boot`,
    `exit`, and `command || fallback` (a failed fetch runs the fallback). Every other command
    (echo, sleep, prompt ...) is skipped. Fetches happen when the command runs, as in iPXE;
    bounded in steps and chain depth."""

    def __init__(self, http: Http, mac: str, uuid: str | None) -> None:
        self.http = http
        self.vars = {"netX/mac": mac, "net0/mac": mac, "mac": mac, "uuid": uuid or "",
                     "buildarch": "i386", "platform": "pcbios"}
        self.kernel_args: list[str] = []
        self.kernel = False
        self.file_seconds = 0.0
        self.steps = 0

    def expand(self, text: str) -> str:
        return IPXE_VARS.sub(lambda m: urllib.parse.quote(
            self.vars.get(m[1].split(":")[0], ""), safe=":-/."), text)

    async def run(self, url: str, depth: int = 0) -> bool:
        """Run the script at `url`; True once it booted a kernel."""
        if depth > 4:
            raise BootFailed("script", "chains nested too deep")
        status, body, _ = await self.http.request("GET", url)
        if status != 200:
            return False
        lines = [line.strip() for line in body.decode(errors="replace").splitlines()]
        labels = {line[1:].split()[0]: i for i, line in enumerate(lines)
                  if line.startswith(":") and len(line) > 1}
        i = 0
        while i < len(lines):
            self.steps += 1
            if self.steps > 1000:
                raise BootFailed("script", "more than 1000 script steps")
            line = lines[i]
            i += 1
            if not line or line[0] in "#:":
                continue
            command, bar, fallback = line.partition("||")
            words = self.expand(command).split()
            result = await self.command(words, depth) if words else True
            if result == "booted":
                return True
            if result is False and bar:
                words = self.expand(fallback).split()
                result = await self.command(words, depth) if words else True
            if isinstance(result, tuple):  # goto
                if result[1] not in labels:
                    raise BootFailed("script", f"goto {result[1]}: no such label")
                i = labels[result[1]] + 1
            elif result is False:
                raise BootFailed("script", f"{url}: {' '.join(words)[:80]} failed")
        return False

    async def command(self, words: list[str], depth: int) -> bool | str | tuple[str, str]:
        name, rest = words[0], words[1:]
        if name == "set" and rest:
            self.vars[rest[0]] = " ".join(rest[1:])
            return True
        if name == "goto" and rest:
            return ("goto", rest[0])
        if name in ("exit", "sanboot", "reboot", "shell", "poweroff"):
            raise BootFailed("script", f"the script ran {name} instead of booting")
        if name == "boot":
            return "booted" if self.kernel else False
        if name not in ("chain", "kernel", "initrd", "imgfetch", "module"):
            return True  # echo, sleep, prompt, imgfree ...
        args, skip = [], False
        for word in rest:
            if skip:
                skip = False
            elif word.startswith("-") and not args:
                skip = word in _VALUE_OPTS
            else:
                args.append(word)
        if not args or "://" not in args[0]:
            return False
        if name == "chain":
            return "booted" if await self.run(args[0], depth + 1) else False
        started = time.monotonic()
        status, _, size = await self.http.request("GET", args[0], keep=False)
        self.file_seconds += time.monotonic() - started
        if status != 200 or size == 0:
            return False
        if name == "kernel":
            self.kernel, self.kernel_args = True, args[1:]
        return True

    def phone_home(self) -> str | None:
        return next((a.split("=", 1)[1] for a in self.kernel_args
                     if a.startswith("vaq.phone_home=")), None)


# -- one machine -------------------------------------------------------------------------------


async def boot(machine: Machine, dhcp: DhcpClients, *, deadline: float) -> None:
    uuid_raw = bytes.fromhex(machine.uuid.replace("-", "")) if machine.uuid else b"\0" * 16
    http = Http(timeout=30)
    t = time.monotonic()
    phase = "dhcp"

    def lap(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        machine.phases[name] = now - t
        t = now

    try:
        ack = await dhcp.dora(machine.mac, uuid_raw, ipxe=False, timeout=deadline - t)
        lap("dhcp")
        phase = "tftp"
        name = ack.options.get(67, b"").split(b"\0")[0].decode() or ack.file
        server = socket.inet_ntoa(ack.siaddr)
        if not name or server == "0.0.0.0":
            raise BootFailed("dhcp", "the offer names no boot file or next server")
        # from the leased address (storm.py puts every machine's on the client's interface):
        # servers see one client per machine, as in a real storm, and cap each by address
        http.source = socket.inet_ntoa(ack.yiaddr)
        await tftp_get((server, 69), name, blksize=1456, timeout=1.0, retries=8,
                       source=http.source)
        lap("tftp")
        phase = "dhcp-ipxe"
        ack = await dhcp.dora(machine.mac, uuid_raw, ipxe=True,
                              timeout=max(1.0, deadline - time.monotonic()))
        url = ack.options.get(67, b"").split(b"\0")[0].decode() or ack.file
        lap("dhcp-ipxe")
        phase = "script"
        ipxe = Ipxe(http, machine.mac, machine.uuid)
        booted = await ipxe.run(url)
        phone = ipxe.phone_home()
        if not booted or phone is None:
            raise BootFailed("script", f"{url}: no kernel booted, or no phone-home URL")
        lap("script")  # with the kernel and initrds, fetched as the script ran them:
        machine.phases["files"] = ipxe.file_seconds
        machine.phases["script"] -= ipxe.file_seconds
        phase = "phone-home"
        report = json.dumps({"mac": machine.mac}).encode()
        status, _, _ = await http.request("POST", phone, report)
        if status != 200:
            raise BootFailed("phone-home", f"HTTP {status}")
        lap("phone-home")
        machine.finished = time.monotonic()
    except BootFailed as exc:
        machine.failed = exc.phase
    except (TftpError, OSError, TimeoutError, ValueError, IndexError) as exc:
        machine.failed = f"{phase} ({exc.__class__.__name__})"
    finally:
        await http.close()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def storm(machines: list[Machine], delays: list[float], interface: str, start_at: float,
                timeout: float) -> dict:
    """Power machine i on at `start_at` (wall clock, shared by every client process) +
    delays[i]; wait for each, bounded by `timeout`. Returns this process's records."""
    dhcp = DhcpClients(interface)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    start = time.monotonic()
    deadline = start + timeout

    async def one(machine: Machine, delay: float) -> None:
        await asyncio.sleep(delay)
        machine.started = time.monotonic()
        await boot(machine, dhcp, deadline=deadline)

    try:
        tasks = [asyncio.create_task(one(m, d)) for m, d in zip(machines, delays, strict=True)]
        await asyncio.wait(tasks, timeout=timeout + 5)
        for task in tasks:
            task.cancel()
    finally:
        dhcp.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"client_cpu_s": usage.ru_utime + usage.ru_stime, "records": [
        {"started": m.started - start, "finished": None if m.finished is None
         else m.finished - start, "failed": m.failed, "phases": m.phases} for m in machines]}


def summarise(parts: list[dict]) -> dict:
    """One storm's figures from the records of every client process (times from start_at)."""
    records = [r for part in parts for r in part["records"]]
    ok = [r for r in records if r["finished"] is not None]
    failures: dict[str, int] = {}
    for r in records:
        if r["finished"] is None:
            reason = r["failed"] or "deadline"
            failures[reason] = failures.get(reason, 0) + 1
    per = [r["finished"] - r["started"] for r in ok]
    phases = {name: round(pct([r["phases"][name] for r in ok if name in r["phases"]], 50), 4)
              for name in ("dhcp", "tftp", "dhcp-ipxe", "script", "files", "phone-home")}
    return {"machines": len(records), "phoned_home": len(ok), "failures": failures,
            # near all_done_s x processes: the client, not the server, was the limit
            "client_cpu_s": round(sum(p["client_cpu_s"] for p in parts), 2),
            "client_processes": len(parts),
            "all_done_s": max(r["finished"] for r in ok) if ok else None,
            "p50_s": pct(per, 50), "p99_s": pct(per, 99), "phase_p50_s": phases}


async def fetch_scripts(base: str, hosts: list[tuple[str, str]], out: str,
                        chain: str) -> dict[str, bytes]:
    """What our peer serves, as files for the reference's nginx: {path: bytes}, its chain
    script as `chain` and each host's stage-1 script as `<out>/<mac>`."""
    http = Http(timeout=30)
    files = {}
    try:
        urls = [(f"{base}/boot.ipxe", chain)] + [
            (f"{base}/boot/{name}/1/script.ipxe", os.path.join(out, mac)) for name, mac in hosts]
        for url, path in urls:
            status, body, _ = await http.request("GET", url)
            if status != 200:
                raise RuntimeError(f"{url}: HTTP {status}")
            files[path] = body
    finally:
        await http.close()
    return files


async def wait_ready(url: str, timeout: float) -> None:
    """Until `url` answers 200 (the peer has applied its revision), bounded."""
    deadline = time.monotonic() + timeout
    while True:
        http = Http(timeout=5)
        try:
            status, _, _ = await http.request("GET", url)
            if status == 200:
                return
        except (OSError, TimeoutError):
            pass
        finally:
            await http.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout} s")
        await asyncio.sleep(0.2)
