"""Artifact cache against a real upstream HTTP server on loopback, fetched with real curl.

The upstream is an aiohttp server in this test process that counts the requests it gets and
can hold them back (a gate), fail the first ones, or send chunked bodies without a length.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from appliance.netboot.artifacts import ROUTE, ArtifactCache
from appliance.sot.models import Artifact

DATA = os.urandom(3 * 1024 * 1024 + 123)  # spans several 1 MiB chunks
SHA = hashlib.sha256(DATA).hexdigest()
LAST_MODIFIED = "Tue, 03 Nov 2026 10:00:00 GMT"


@dataclass
class Upstream:
    files: dict[str, bytes] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    fail_first: Counter[str] = field(default_factory=Counter)  # name -> 503s still to send
    gate: asyncio.Event | None = None
    base: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] += 1
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), 20)
        if self.fail_first[name] > 0:
            self.fail_first[name] -= 1
            return web.Response(status=503, text="busy")
        if name not in self.files:
            return web.Response(status=404)
        body = self.files[name]
        if "chunked" not in request.query:
            return web.Response(body=body, headers={"Last-Modified": LAST_MODIFIED})
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 256 * 1024):
            await resp.write(body[i:i + 256 * 1024])
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[tuple[str, web.AppRunner]]:
    # handler_cancellation: a client that hangs up cancels its handler, as it may in production.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", runner
    finally:
        await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream(files={"vmlinuz": DATA})
    app = web.Application()
    app.router.add_get("/files/{name}", up.handle)
    async with serving(app) as (base, _):
        up.base = base
        yield up


@dataclass
class Peer:
    cache: ArtifactCache
    base: str
    arrived: int = 0

    def url(self, sha: str = SHA, name: str = "vmlinuz") -> str:
        return f"{self.base}/artifacts/{sha}/{name}"


@contextlib.asynccontextmanager
async def peer_serving(cache: ArtifactCache) -> AsyncIterator[Peer]:
    peer = Peer(cache, "")

    @web.middleware
    async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
        peer.arrived += 1
        return await handler(request)

    app = web.Application(middlewares=[count])
    app.router.add_get(ROUTE, cache.handler)
    async with serving(app) as (base, _):
        peer.base = base
        try:
            yield peer
        finally:
            await cache.close()


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[Peer]:
    async with peer_serving(ArtifactCache(tmp_path / "cache", backoff=0.01)) as p:
        yield p


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]
    body: bytes


async def curl(url: str, *args: str) -> CurlResult:
    out = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "30", "-D", "-", "-o", "-",
        *args, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(out.communicate(), 40)
    assert out.returncode == 0, stderr.decode()
    head, _, body = stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return CurlResult(int(lines[0].split()[1]), headers, body)


def artifact(up: Upstream, name: str = "vmlinuz", sha: str = SHA, **kw: object) -> Artifact:
    return Artifact(url=f"{up.base}/files/{name}", sha256=sha, **kw)  # type: ignore[arg-type]


def cache_listing(cache: ArtifactCache) -> list[str]:
    return sorted(p.name for p in cache.root.iterdir())


async def test_first_request_fetches_and_verifies_then_serves_from_disk(
        upstream: Upstream, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    cache.register([artifact(upstream)])
    async with peer_serving(cache) as peer:
        first = await curl(peer.url())
        assert first.status == 200
        assert first.body == DATA
        assert first.headers["etag"] == f'"{SHA}"'
        assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert upstream.hits["vmlinuz"] == 1
        assert cache_listing(cache) == [SHA]
        assert hashlib.sha256((cache.root / SHA).read_bytes()).hexdigest() == SHA

        upstream.files.clear()  # upstream now has nothing: only the disk can answer
        second = await curl(peer.url(name="any-name"))
        assert second.status == 200
        assert second.body == DATA
        assert upstream.hits["vmlinuz"] == 1
        c = cache.counters
        assert (c.misses, c.hits, c.fetches, c.fetch_failures) == (1, 1, 1, 0)
        assert c.bytes_served == 2 * len(DATA)
        assert c.bytes_fetched == len(DATA)
        assert cache.metrics() == {
            "hits": 1, "misses": 1, "fetches": 1, "fetch_failures": 0, "not_found": 0,
            "bytes_served": 2 * len(DATA), "bytes_fetched": len(DATA),
            "fetches_in_flight": 0, "known": 1}


async def test_served_after_upstream_stopped_and_after_restart(tmp_path: Path) -> None:
    up = Upstream(files={"vmlinuz": DATA})
    app = web.Application()
    app.router.add_get("/files/{name}", up.handle)
    async with serving(app) as (base, _):
        up.base = base
        cache = ArtifactCache(tmp_path / "cache")
        cache.register([artifact(up)])
        await cache.ensure(SHA)
        await cache.close()
    # Upstream is gone. A stale partial file from a crash is cleaned at start.
    (tmp_path / "cache" / "sha256" / f".{SHA}.dead.part").write_bytes(b"partial")
    cache = ArtifactCache(tmp_path / "cache")
    assert cache_listing(cache) == [SHA]
    cache.register([artifact(up)])
    async with peer_serving(cache) as peer:
        got = await curl(peer.url())
    assert got.status == 200
    assert got.body == DATA
    assert up.hits["vmlinuz"] == 1


async def test_wrong_sum_upstream_is_502_names_both_sums_and_leaves_no_file(
        upstream: Upstream, peer: Peer) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    peer.cache.register([artifact(upstream, sha=wrong)])
    got = await curl(peer.url(sha=wrong))
    assert got.status == 502
    body = json.loads(got.body)
    assert body["url"] == f"{upstream.base}/files/vmlinuz"
    assert wrong in body["reason"]
    assert SHA in body["reason"]
    assert cache_listing(peer.cache) == []
    assert peer.cache.counters.fetch_failures == 1
    # A mismatch is not retried, and a storm of requests right after does not re-fetch.
    again = await curl(peer.url(sha=wrong))
    assert again.status == 502
    assert upstream.hits["vmlinuz"] == 1
    assert cache_listing(peer.cache) == []


async def test_twenty_concurrent_first_requests_cause_one_upstream_fetch(
        upstream: Upstream, peer: Peer) -> None:
    upstream.gate = asyncio.Event()
    peer.cache.register([artifact(upstream)])
    clients = [asyncio.create_task(curl(peer.url())) for _ in range(20)]
    deadline = time.monotonic() + 20
    while peer.arrived < 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0)  # the last arrival reaches its wait on the shared fetch
    arrived = peer.arrived
    upstream.gate.set()
    results = await asyncio.gather(*clients)
    assert arrived == 20  # all were waiting while upstream held its answer
    assert [r.status for r in results] == [200] * 20
    assert all(r.body == DATA for r in results)
    assert upstream.hits["vmlinuz"] == 1
    assert peer.cache.counters.misses == 20
    assert peer.cache.counters.fetches == 1


async def test_client_hanging_up_does_not_cancel_the_shared_fetch(
        upstream: Upstream, peer: Peer) -> None:
    upstream.gate = asyncio.Event()
    peer.cache.register([artifact(upstream)])
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "/dev/null", peer.url(), stderr=asyncio.subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while upstream.hits["vmlinuz"] < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    proc.kill()  # the only client goes away while the fetch is under way
    await proc.wait()
    upstream.gate.set()
    while not peer.cache.cached(SHA) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert peer.cache.cached(SHA)
    got = await curl(peer.url())
    assert (got.status, got.body == DATA) == (200, True)
    assert upstream.hits["vmlinuz"] == 1
    assert peer.cache.counters.hits == 1


async def test_range_and_conditional_requests(upstream: Upstream, peer: Peer) -> None:
    peer.cache.register([artifact(upstream)])
    head = await curl(peer.url(), "-r", "0-99")
    assert head.status == 206
    assert head.body == DATA[:100]
    assert head.headers["content-range"] == f"bytes 0-99/{len(DATA)}"
    assert head.headers["etag"] == f'"{SHA}"'
    tail = await curl(peer.url(), "-H", "Range: bytes=100-")
    assert tail.status == 206
    assert tail.body == DATA[100:]
    assert tail.headers["content-range"] == f"bytes 100-{len(DATA) - 1}/{len(DATA)}"
    suffix = await curl(peer.url(), "-H", "Range: bytes=-10")
    assert (suffix.status, suffix.body) == (206, DATA[-10:])
    beyond = await curl(peer.url(), "-H", f"Range: bytes={len(DATA)}-")
    assert beyond.status == 416

    # The file carries upstream's Last-Modified, so every peer answers If-Modified-Since alike.
    full = await curl(peer.url())
    assert full.headers["last-modified"] == LAST_MODIFIED
    ims = await curl(peer.url(), "-H", f"If-Modified-Since: {LAST_MODIFIED}")
    assert (ims.status, ims.body) == (304, b"")
    inm = await curl(peer.url(), "-H", f'If-None-Match: "{SHA}"')
    assert (inm.status, inm.body) == (304, b"")
    assert inm.headers["etag"] == f'"{SHA}"'
    other = await curl(peer.url(), "-H", 'If-None-Match: "0123"')
    assert other.status == 200
    im = await curl(peer.url(), "-H", f'If-Match: "{SHA}"', "-r", "0-9")
    assert (im.status, im.body) == (206, DATA[:10])
    bad = await curl(peer.url(), "-H", 'If-Match: "0123"')
    assert bad.status == 412
    headonly = await curl(peer.url(), "-I")
    assert headonly.status == 200
    assert headonly.headers["content-length"] == str(len(DATA))
    assert upstream.hits["vmlinuz"] == 1


async def test_unknown_sum_is_404_and_never_reaches_upstream(
        upstream: Upstream, peer: Peer) -> None:
    peer.cache.register([artifact(upstream)])
    other = hashlib.sha256(b"not registered").hexdigest()
    for url in (peer.url(sha=other), peer.url(sha="not-a-sum"), peer.url(sha=SHA.upper())):
        got = await curl(url)
        assert got.status == 404, url
    assert upstream.hits == Counter()
    assert peer.cache.counters.not_found == 3


async def test_file_url_upstream(tmp_path: Path, peer: Peer) -> None:
    src = tmp_path / "images" / "initrd image.img"
    src.parent.mkdir()
    src.write_bytes(DATA)
    os.utime(src, (1_700_000_000, 1_700_000_000))
    peer.cache.register([Artifact(url=src.as_uri(), sha256=SHA, size=len(DATA))])
    got = await curl(peer.url(name="initrd.img"))
    assert got.status == 200
    assert got.body == DATA
    assert (peer.cache.root / SHA).stat().st_mtime == 1_700_000_000

    missing = Artifact(url=(tmp_path / "nope").as_uri(), sha256=hashlib.sha256(b"").hexdigest())
    peer.cache.register([missing])
    got = await curl(peer.url(sha=missing.sha256))
    assert got.status == 502
    assert "FileNotFoundError" in json.loads(got.body)["reason"]


async def test_transient_upstream_failure_is_retried(upstream: Upstream, peer: Peer) -> None:
    upstream.fail_first["vmlinuz"] = 2
    peer.cache.register([artifact(upstream)])
    got = await curl(peer.url())
    assert (got.status, got.body == DATA) == (200, True)
    assert upstream.hits["vmlinuz"] == 3


async def test_persistent_upstream_failure_is_502_after_bounded_retries(
        upstream: Upstream, peer: Peer) -> None:
    upstream.fail_first["vmlinuz"] = 100
    peer.cache.register([artifact(upstream)])
    got = await curl(peer.url())
    assert got.status == 502
    assert json.loads(got.body)["reason"] == "upstream answered HTTP 503"
    assert upstream.hits["vmlinuz"] == 3
    missing = artifact(upstream, name="absent", sha=hashlib.sha256(b"x").hexdigest())
    peer.cache.register([missing])
    got = await curl(peer.url(sha=missing.sha256))
    assert got.status == 502
    assert upstream.hits["absent"] == 1  # a 404 upstream is not retried
    assert cache_listing(peer.cache) == []


@pytest.mark.parametrize("query", ["", "?chunked=1"])
async def test_declared_size_bounds_the_download(
        upstream: Upstream, peer: Peer, query: str) -> None:
    small = Artifact(url=f"{upstream.base}/files/vmlinuz{query}", sha256=SHA, size=1000)
    peer.cache.register([small])
    got = await curl(peer.url())
    assert got.status == 502
    assert "allowed" in json.loads(got.body)["reason"]
    assert cache_listing(peer.cache) == []


async def test_chunked_upstream_and_prefetch(upstream: Upstream, peer: Peer) -> None:
    other = os.urandom(5000)
    other_sha = hashlib.sha256(other).hexdigest()
    upstream.files["initrd"] = other
    bad_sha = hashlib.sha256(b"bad").hexdigest()
    peer.cache.register([
        Artifact(url=f"{upstream.base}/files/vmlinuz?chunked=1", sha256=SHA),
        artifact(upstream, name="initrd", sha=other_sha),
        artifact(upstream, name="initrd", sha=bad_sha),
    ])
    failures = await peer.cache.prefetch([SHA, other_sha, bad_sha, SHA, "f" * 64])
    assert list(failures) == [bad_sha]
    assert cache_listing(peer.cache) == sorted([SHA, other_sha])
    assert (upstream.hits["vmlinuz"], upstream.hits["initrd"]) == (1, 2)
    got = await curl(peer.url(sha=other_sha))
    assert got.body == other
    assert peer.cache.counters.hits == 1
