"""The boot port's front: a lean HTTP/1.1 protocol for the boot chain's own requests.

Why: in a boot storm every machine asks for its script, and through aiohttp's web
application (request and response objects, router, the API's middlewares) a script cost
~300 µs of the peer's CPU where nginx spends ~25 µs on the same bytes
(tools/bench/http_boot.py, py-spy: aiohttp and the middlewares were two thirds of it).
This protocol parses the plain requests iPXE and installers make (GET and POST, HTTP/1.0
and 1.1, keep-alive and pipelining, a Content-Length body) and answers the routes of
netboot/boot_http.py directly, with the same bytes, log lines and evidence.

Anything else on the connection (the API, artifacts, firmware, HEAD, a request with
Transfer-Encoding, Expect, a percent-encoded path, an oversized head or body, or bytes this
parser does not accept) is handed over, with the bytes not yet answered, to the aiohttp
server behind (`fallback`), which then serves that connection to its end with its own
limits and parser: it serves the boot routes too, so an answer never depends on which of
the two parsed the request. This parser only has to be right about what it accepts.

Bounded per connection: the buffered head (MAX_HEAD) and body (MAX_BODY), one answer
awaited at a time (reading pauses meanwhile), writes (reading pauses while the client does
not take its answers), and time: a connection that completes no request for IDLE_S seconds
is closed.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus

import structlog

from appliance.netboot.boot_http import (
    MAX_REPORT,
    BootAnswer,
    BootRequest,
    BootState,
    Refused,
    Route,
    find_route,
)

log = structlog.get_logger("vaquero.netboot.boot")

MAX_HEAD = 8192  # request line and headers; past it, aiohttp's parser decides
MAX_BODY = 65536  # a phone-home's report is read up to 4 KiB; a larger body goes to aiohttp
# One machine's iPXE keeps one or two connections open; a client holding more than this is
# refused at connect (closed at once), so one host on the boot network cannot use up the
# peer's file descriptors.
MAX_CONNECTIONS_PER_CLIENT = 64
# All the boot port's connections, the front's and those it handed to aiohttp: a flood from
# many addresses stops here, well under the peer's file descriptor limit (LimitNOFILE).
MAX_CONNECTIONS = 4096
IDLE_S = 75.0  # aiohttp's keep-alive timeout
SWEEP_S = 5.0
_TOKEN_CHARS = frozenset(b"!#$&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                         b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class _Handover(Exception):
    """This request is for the aiohttp server behind."""


class _Clock:
    """The Date header's text, made once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._date = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._date = now, formatdate(now, usegmt=True).encode()
        return self._date


def _query(text: str) -> dict[str, str]:
    """First value of each name, decoded as aiohttp decodes a query (`+` is a space)."""
    out: dict[str, str] = {}
    if "%" not in text and "+" not in text:
        for pair in text.split("&"):
            name, _, value = pair.partition("=")
            if name and name not in out:
                out[name] = value
        return out
    for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True,
                                              errors="replace"):
        if name and name not in out:
            out[name] = value
    return out


def _headers(lines: list[str], http11: bool) -> tuple[int, bool]:
    """(Content-Length, keep the connection open) from the header lines."""
    length, seen_length = 0, False
    keep_alive = host = http11
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or not _TOKEN_CHARS.issuperset(name.encode()):
            raise _Handover  # also obs-fold (a line starting with white space)
        name = name.lower()
        if name == "content-length":
            value = value.strip()
            # a second Content-Length (even after a 0) is aiohttp's to refuse; the digit count
            # is checked first: int() of thousands of digits raises instead of answering
            if not value.isdigit() or len(value) > 6 or seen_length or int(value) > MAX_BODY:
                raise _Handover
            length, seen_length = int(value), True
        elif name == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            if "close" in tokens:
                keep_alive = False
            elif "keep-alive" in tokens:
                keep_alive = True
        elif name == "host":
            host = False
        elif name in ("transfer-encoding", "expect", "upgrade"):
            raise _Handover
    if host:
        raise _Handover  # HTTP/1.1 without Host: aiohttp refuses it
    return length, keep_alive


class BootFront(asyncio.Protocol):
    """One client connection of a `BootFrontServer`."""

    def __init__(self, server: BootFrontServer) -> None:
        self.server = server
        self.state = server.state
        self.clock = server.clock
        self.connections = server.connections
        self.transport: asyncio.Transport | None = None
        self.client = "?"
        self.buffer = bytearray()
        # what _parse already knows of the buffer, so a request arriving in small pieces is
        # not scanned and parsed again from its start for every piece
        self.scanned = 0  # no end of head before this offset
        self.needed = 0  # the parsed head's request is complete at this length
        self.busy = False  # an answer is being awaited; later requests wait in the buffer
        self.write_paused = False
        self._pending: asyncio.Future[None] | None = None  # the answer being awaited
        self.active = time.monotonic()  # the connection opened or completed a request

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else "?"
        if not self.server.admits(self.client):
            self.server.refused += 1
            transport.abort()
            return
        self.connections.add(self)
        self.server.per_client[self.client] = self.server.per_client.get(self.client, 0) + 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self.transport = None

    def _forget(self) -> None:
        """Out of the server's books (closed, or handed to aiohttp), once."""
        if self in self.connections:
            self.connections.discard(self)
            self.server.release(self.client)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy and not self.write_paused:
            self._serve()
        elif len(self.buffer) > MAX_HEAD + MAX_BODY and self.transport is not None:
            self.transport.pause_reading()  # resumed once what is buffered is answered

    def eof_received(self) -> bool | None:
        return None  # close; a pending answer is dropped with the connection

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.busy:
            self.transport.resume_reading()
            self._serve()

    # -- requests -----------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer every complete request in the buffer, in order, until one must wait."""
        while self.buffer and not self.busy and not self.write_paused:
            if self.transport is None or self.transport.is_closing():
                return
            try:
                parsed = self._parse()
            except _Handover:
                self._hand_over()
                return
            if parsed is None:
                return  # incomplete: more bytes to come
            route, req, keep_alive = parsed
            self.active = time.monotonic()
            self.server.answered += 1
            try:
                result = route(self.state, req)
            except Refused as exc:
                result = exc.answer
            except Exception:
                log.exception("boot.route_failed", client=self.client)
                result = BootAnswer(500, b"internal error\n")
                keep_alive = False
            if isinstance(result, BootAnswer):
                self._write(result, keep_alive)
            else:
                self.busy = True
                self.transport.pause_reading()
                self._pending = asyncio.ensure_future(self._finish(result, keep_alive))
                return
        if self.transport is not None and not self.busy and not self.write_paused:
            self.transport.resume_reading()

    async def _finish(self, pending: object, keep_alive: bool) -> None:
        try:
            result = await pending  # type: ignore[misc]
        except Refused as exc:
            result = exc.answer
        except Exception:
            log.exception("boot.route_failed", client=self.client)
            result, keep_alive = BootAnswer(500, b"internal error\n"), False
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        self._write(result, keep_alive)
        self._serve()

    def _parse(self) -> tuple[Route, BootRequest, bool] | None:
        buffer = self.buffer
        if len(buffer) < self.needed:
            return None
        end = buffer.find(b"\r\n\r\n", max(0, self.scanned - 3))
        if end < 0:
            start = self.scanned - 1 if buffer[self.scanned - 1:self.scanned] == b"\r" \
                else self.scanned
            new = buffer[start:]
            if len(buffer) > MAX_HEAD or new.count(b"\n") != new.count(b"\r\n"):
                raise _Handover  # too long, or a bare LF: a head that never ends in CRLF CRLF
            self.scanned = len(buffer)
            return None
        if end > MAX_HEAD:
            raise _Handover
        try:
            head = buffer[:end].decode("ascii")
        except UnicodeDecodeError:
            raise _Handover from None
        lines = head.split("\r\n")
        if head.count("\r") != len(lines) - 1 or head.count("\n") != len(lines) - 1:
            raise _Handover  # a bare CR or LF
        method, _, rest = lines[0].partition(" ")
        target, _, version = rest.partition(" ")
        if (method not in ("GET", "POST") or version not in ("HTTP/1.1", "HTTP/1.0")
                or not target.startswith("/") or not target.isprintable() or " " in target):
            raise _Handover
        path, _, query = target.partition("?")
        if "%" in path or "#" in target or "/." in path or "//" in path:
            raise _Handover  # decoding and dot segments: aiohttp's, exactly
        found = find_route(method, path)
        if found is None:
            raise _Handover
        length, keep_alive = _headers(lines, version == "HTTP/1.1")
        if len(buffer) < end + 4 + length:
            self.needed = end + 4 + length
            return None
        body = bytes(buffer[end + 4:end + 4 + length])
        del buffer[:end + 4 + length]
        self.scanned = self.needed = 0
        route, params = found
        req = BootRequest(self.client, params, _query(query), body[:MAX_REPORT])
        return route, req, keep_alive

    def _write(self, result: BootAnswer, keep_alive: bool) -> None:
        assert self.transport is not None
        head = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n" % (
            result.status, _REASONS.get(result.status, "Unknown").encode(),
            result.content_type.encode(), len(result.body), self.clock.date())]
        for name, value in result.headers:
            head.append(f"{name}: {value}\r\n".encode())
        head.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + result.body)
        if not keep_alive:
            self.transport.close()
            self.buffer.clear()

    def _hand_over(self) -> None:
        """The connection, with every byte not answered yet, to the aiohttp server."""
        transport = self.transport
        assert transport is not None and not self.busy
        self._forget()
        self.transport = None
        self.server.handed_over += 1
        self.server.handed.setdefault(self.client, []).append(transport)
        self.server.handed_count += 1
        protocol = self.server.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self.buffer = bytes(self.buffer), bytearray()
        transport.resume_reading()
        if data:
            protocol.data_received(data)

    def idle_since(self) -> float:
        return self.active if not self.busy else time.monotonic()


class BootFrontServer:
    """The boot port: `BootFront` connections, and behind them the aiohttp server that
    `fallback()` makes protocols of (aiohttp's `web.Server` instance, `AppRunner.server`)."""

    def __init__(self, state: BootState, fallback: Callable[[], asyncio.Protocol],
                 idle: float = IDLE_S, sweep: float = SWEEP_S) -> None:
        self.state = state
        self.fallback = fallback
        self.idle = idle
        self.sweep = sweep
        self.connections: set[BootFront] = set()
        self.clock = _Clock()
        self.answered = 0  # requests the front answered itself
        self.per_client: dict[str, int] = {}  # open front connections by client address
        # connections handed to aiohttp, by client address, until they are seen closing: they
        # still hold a file descriptor, so they still count against the client's share
        self.handed: dict[str, list[asyncio.Transport]] = {}
        self.handed_count = 0  # the lengths of `handed`'s lists, closed ones not yet dropped
        self.refused = 0  # connections closed at connect: their client (or all) held too many
        self.handed_over = 0  # connections handed to aiohttp
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def metrics(self) -> dict[str, float]:
        """What an operator watches for a flood: connections held, refused and handed over."""
        return {"front_connections": len(self.connections),
                "front_handed_open": self.handed_count, "front_answered": self.answered,
                "front_handed_over": self.handed_over, "front_refused": self.refused}

    def count(self, client: str) -> int:
        """Connections this client holds now, the front's and the handed-over ones."""
        return self.per_client.get(client, 0) + len(self._live_handed(client))

    def admits(self, client: str) -> bool:
        """A new connection from `client` is within its share and within the port's."""
        if self.count(client) >= MAX_CONNECTIONS_PER_CLIENT:
            return False
        if len(self.connections) + self.handed_count < MAX_CONNECTIONS:
            return True
        self._prune_handed()  # closed handed-over ones are only dropped here and by the sweep
        return len(self.connections) + self.handed_count < MAX_CONNECTIONS

    def _live_handed(self, client: str) -> list[asyncio.Transport]:
        held = self.handed.get(client)
        if not held:
            return []
        live = [t for t in held if not t.is_closing()]
        self.handed_count -= len(held) - len(live)
        if live:
            self.handed[client] = live
        else:
            del self.handed[client]
        return live

    def _prune_handed(self) -> None:
        for client in list(self.handed):
            self._live_handed(client)

    def release(self, client: str) -> None:
        left = self.per_client.get(client, 0) - 1
        if left > 0:
            self.per_client[client] = left
        else:
            self.per_client.pop(client, None)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: BootFront(self),
            host, port, reuse_address=True, backlog=1024)
        self._sweeper = asyncio.create_task(self._sweep(), name="boot-front-sweep")

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep)
            self._prune_handed()
            cutoff = time.monotonic() - self.idle
            for conn in [c for c in self.connections if c.idle_since() < cutoff]:
                if conn.transport is not None:
                    conn.transport.close()

    async def close(self) -> None:
        """Stop listening and close the connections still here (the handed-over ones are
        aiohttp's: its runner's cleanup closes them)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
