"""The boot port's lean front (netboot/boot_front.py) against the aiohttp application behind it,
over real loopback connections: the front answers what aiohttp answers, byte for byte in
status, type and body; hands every request it does not parse (the API, oddly formed or
oversized requests) with the rest of the connection to aiohttp; keeps keep-alive, pipelining
and Connection: close straight; and closes idle connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from appliance.netboot import boot_front
from appliance.netboot.boot_front import MAX_CONNECTIONS_PER_CLIENT, MAX_HEAD, BootFrontServer
from appliance.netboot.boot_http import BootState, add_boot_routes

LAB01_MAC = "52:54:00:18:00:11"
WAIT = 10.0  # seconds any one answer may take on a loaded machine


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), WAIT)
    return Answer(int(lines[0].split()[1]), headers, body)


def get(path: str, *extra: str, version: str = "HTTP/1.1") -> bytes:
    return "\r\n".join([f"GET {path} {version}", "Host: peer", *extra, "", ""]).encode()


@dataclass
class Rig:
    front: BootFrontServer
    app_port: int
    state: BootState
    records: dict[str, dict]

    async def connect(self, port: int | None = None
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port or self.front.port)

    async def ask(self, request: bytes, port: int | None = None) -> Answer:
        reader, writer = await self.connect(port)
        try:
            writer.write(request)
            return await read_answer(reader)
        finally:
            writer.close()

    async def both(self, request: bytes) -> tuple[Answer, Answer]:
        """The front's answer and the aiohttp application's own."""
        return await self.ask(request), await self.ask(request, self.app_port)


@pytest.fixture
async def rig(lab_boot: tuple[BootState, dict]) -> AsyncIterator[Rig]:
    state, records = lab_boot

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    add_boot_routes(app, state)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    app_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    front = BootFrontServer(state, runner.server, idle=1.0, sweep=0.2)  # type: ignore[arg-type]
    await front.start("127.0.0.1", 0)
    try:
        yield Rig(front, app_port, state, records)
    finally:
        await front.close()
        await runner.cleanup()


def same(ours: Answer, theirs: Answer) -> None:
    assert (ours.status, ours.headers["content-type"], ours.body) == (
        theirs.status, theirs.headers["content-type"], theirs.body)


async def test_the_front_answers_every_boot_route_as_the_application_does(rig: Rig) -> None:
    paths = [f"/ipxe?mac={LAB01_MAC}&arch=x86_64", "/ipxe?mac=52:54:00:ff:ff:ff",
             "/ipxe?serial=no%20such+serial&mac=", "/boot.ipxe",
             "/boot/lab-01/1/script.ipxe", "/boot/lab-01/1/config", "/boot/lab-01/1/user-data",
             "/boot/lab-01/1/meta-data", "/boot/lab-01/2/script.ipxe", "/boot/lab-01/x/config",
             "/boot/nobody/1/script.ipxe", "/boot/lab-01/9/loaded"]
    for path in paths:
        ours, theirs = await rig.both(get(path))
        same(ours, theirs)
    served = await rig.ask(get(f"/ipxe?mac={LAB01_MAC}"))
    assert served.status == 200 and served.body.startswith(b"#!ipxe")
    assert "lab-01" in served.body.decode()
    token = rig.state.table.token("lab-01", 1, rig.state.progress.arming("lab-01"))  # type: ignore[union-attr]
    bad = b"POST /phone-home/lab-01/1/nope HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n"
    ours, theirs = await rig.both(bad)
    same(ours, theirs)
    assert ours.status == 403
    report = b"installed fine"
    done = (f"POST /phone-home/lab-01/1/{token} HTTP/1.1\r\nHost: p\r\n"
            f"Content-Length: {len(report)}\r\n\r\n").encode() + report
    first = await rig.ask(done)
    assert first.status == 200 and b'"done": 1' in first.body
    assert rig.state.counters["phone_homes"] == 1
    replay, theirs = await rig.both(done)  # a replay, through the front and through aiohttp
    same(replay, theirs)
    assert b'"replay": true' in replay.body
    # the host moved on: stage 1's script is no longer served, stage 2's is
    ours, theirs = await rig.both(get("/boot/lab-01/1/script.ipxe"))
    same(ours, theirs)
    assert ours.status == 404
    assert rig.front.handed_over == 0 and rig.front.answered == len(paths) + 5


async def test_keep_alive_pipelining_and_the_handover_share_one_connection(rig: Rig) -> None:
    reader, writer = await rig.connect()
    try:
        # three requests in one write: answered in order on the same connection
        writer.write(get("/boot.ipxe") + get(f"/ipxe?mac={LAB01_MAC}") + get("/boot.ipxe"))
        answers = [await read_answer(reader) for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 200]
        assert answers[0].body == answers[2].body and answers[1].body.startswith(b"#!ipxe")
        # an API path: aiohttp answers it and keeps the connection, boot routes included
        writer.write(get("/healthz") + get(f"/ipxe?mac={LAB01_MAC}"))
        health = await read_answer(reader)
        assert health.status == 200 and health.body == b'{"ok": true}'
        again = await read_answer(reader)
        assert again.body == answers[1].body
        assert rig.front.connections == set()  # aiohttp's now
        assert (rig.front.answered, rig.front.handed_over) == (3, 1)
    finally:
        writer.close()


async def test_requests_arriving_in_small_pieces_are_answered_as_whole_ones(rig: Rig) -> None:
    """A head and a body in 3-byte pieces, then a pipelined GET: the front keeps what it
    already scanned and parsed between pieces, and still answers both as aiohttp does."""
    post = (b"POST /phone-home/lab-01/1/nope HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\n"
            b"xxxxx")
    data = post + get("/boot.ipxe")
    reader, writer = await rig.connect()
    try:
        for i in range(0, len(data), 3):  # bounded: about 50 writes
            writer.write(data[i:i + 3])
            await writer.drain()
            await asyncio.sleep(0.002)  # separate segments, not a timing under test
        answers = [await read_answer(reader) for _ in range(2)]
    finally:
        writer.close()
    same(answers[0], await rig.ask(post, rig.app_port))
    same(answers[1], await rig.ask(get("/boot.ipxe"), rig.app_port))
    assert [a.status for a in answers] == [403, 200] and rig.front.handed_over == 0


async def test_connection_close_and_http_1_0_end_the_connection(rig: Rig) -> None:
    for request in (get("/boot.ipxe", "Connection: close"), get("/boot.ipxe", version="HTTP/1.0")):
        reader, writer = await rig.connect()
        writer.write(request)
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed by the peer
        writer.close()


@pytest.mark.parametrize("request_bytes", [
    get("/ipxe?mac=" + "a" * (MAX_HEAD + 100)),  # a head past the front's bound
    b"GET /boot.ipxe HTTP/1.1\nHost: peer\n\n",  # bare LF
    b"GET /boot.ipxe HTTP/1.1\r\nHost: peer\r\n folded\r\n\r\n",  # obs-fold
    b"POST /phone-home/lab-01/1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /phone-home/lab-01/1/x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"POST /phone-home/lab-01/1/x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    b"POST /phone-home/lab-01/1/x HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n"
    b"xxxxx",  # a second length after a 0
    b"POST /phone-home/lab-01/1/x HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    get("/boot/lab%2D01/1/script.ipxe"),  # percent-encoded path: aiohttp decodes it
    get("/boot/../boot.ipxe"),
    b"GET /boot.ipxe HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET /boot.ipxe HTTP/2.0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\xff" * 64 + b"\r\n\r\n",  # TLS hello
])
async def test_what_the_front_does_not_parse_gets_aiohttps_answer(rig: Rig,
                                                                   request_bytes: bytes) -> None:
    async def status(port: int | None) -> int | None:
        """The answer's status, or None when the server closed the connection instead."""
        try:
            return (await rig.ask(request_bytes, port)).status
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None

    handed_over = rig.front.handed_over
    assert await status(None) == await status(rig.app_port)
    assert rig.front.handed_over == handed_over + 1
    # either way the known machine is still served
    assert (await rig.ask(get(f"/ipxe?mac={LAB01_MAC}"))).status == 200


async def test_no_revision_yet_is_a_503_with_retry_after(rig: Rig) -> None:
    rig.state.table = None
    ours, theirs = await rig.both(get(f"/ipxe?mac={LAB01_MAC}"))
    same(ours, theirs)
    assert ours.status == 503 and ours.headers["retry-after"] == "10"


async def test_an_idle_connection_is_closed(rig: Rig) -> None:
    reader, writer = await rig.connect()
    writer.write(b"GET /boot.ipxe HTTP/1.1\r\n")  # a head that never ends
    assert await asyncio.wait_for(reader.read(), WAIT) == b""
    writer.close()
    assert rig.front.connections == set()


async def wait_count(rig: Rig, below: int) -> None:
    for _ in range(100):  # bounded: the server sees a close within a few turns
        if rig.front.count("127.0.0.1") < below:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {rig.front.count('127.0.0.1')} connections counted")


async def test_one_client_holds_at_most_its_share_of_connections(rig: Rig) -> None:
    held = [await rig.connect() for _ in range(MAX_CONNECTIONS_PER_CLIENT)]
    try:
        reader, writer = await rig.connect()  # one too many: closed at once, unanswered
        writer.write(get("/boot.ipxe"))
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert rig.front.refused == 1
        _, held_writer = held.pop()
        held_writer.close()
        await held_writer.wait_closed()
        # a freed place is taken again; the connections still held answer as before
        await wait_count(rig, MAX_CONNECTIONS_PER_CLIENT)
        answer = await rig.ask(get("/boot.ipxe"))
        assert answer.status == 200
    finally:
        for _, w in held:
            w.close()


async def test_connections_handed_to_aiohttp_still_count_against_the_client(rig: Rig) -> None:
    held = []
    try:
        for _ in range(MAX_CONNECTIONS_PER_CLIENT):  # each kept open by aiohttp after its answer
            reader, writer = await rig.connect()
            writer.write(get("/healthz"))
            assert (await read_answer(reader)).status == 200
            held.append((reader, writer))
        assert rig.front.connections == set() and rig.front.handed_over == len(held)
        reader, writer = await rig.connect()  # one too many, though the front holds none
        writer.write(get("/boot.ipxe"))
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()
        assert rig.front.refused == 1
        held.pop()[1].close()
        await wait_count(rig, MAX_CONNECTIONS_PER_CLIENT)
        assert (await rig.ask(get("/boot.ipxe"))).status == 200
    finally:
        for _, w in held:
            w.close()


async def test_the_port_as_a_whole_holds_at_most_its_cap(rig: Rig,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot_front, "MAX_CONNECTIONS", 4)
    held = []
    try:
        for path in ("/healthz", "/healthz", "/boot.ipxe", "/boot.ipxe"):  # handed over, front
            reader, writer = await rig.connect()
            writer.write(get(path))
            assert (await read_answer(reader)).status == 200
            held.append(writer)
        reader, writer = await rig.connect()
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()
        assert rig.front.refused == 1
        held.pop(0).close()  # a handed-over one: its place is found by pruning at connect
        for _ in range(100):  # bounded: aiohttp sees the close within a few turns
            if rig.front.admits("127.0.0.1"):
                break
            await asyncio.sleep(0.05)
        assert (await rig.ask(get("/boot.ipxe"))).status == 200
    finally:
        for w in held:
            w.close()
