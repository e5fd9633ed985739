"""The peer's artifact cache: kernels and initrds fetched once from upstream, served by sum.

Why a cache on every peer: in a boot storm the bottleneck is image bandwidth, and the SoT's
upstream URLs may be slow, far away or down. Each peer fetches an artifact once, checks its
sha256 before the file gets its final name (so a partial or corrupt file is never served),
and then serves it with sendfile. Files are named by their sum, so what a peer serves at
`/artifacts/<sha256>/<name>` can never change: clients may cache it forever.

Only artifacts of the applied revision (`register`) are served or fetched: a request for any
other sum is a 404, so the peer is not an open proxy. One process owns the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import hashlib
import os
import re
import secrets
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import hdrs, web

from appliance.errors import ApiError
from appliance.sot.models import Artifact

log = structlog.get_logger("vaquero.netboot.artifacts")

ROUTE = "/artifacts/{sha256}/{name}"
"""Where `ArtifactCache.handler` expects to be mounted (matches `Urls.artifact`)."""

CACHE_CONTROL = "public, max-age=31536000, immutable"
CHUNK = 1 << 20
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_PART = ".part"


class UnknownArtifact(KeyError):
    """The sum is not part of the registered set (the request answers 404)."""


class FetchError(Exception):
    """The upstream could not deliver the artifact; `permanent` ones are not retried."""

    def __init__(self, url: str, reason: str, *, permanent: bool = False) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.permanent = permanent


class ChecksumMismatch(FetchError):
    """Upstream bytes do not hash (or size) to what the SoT declares; the bytes were deleted."""

    def __init__(self, url: str, expected: str, actual: str, size: int,
                 expected_size: int | None = None) -> None:
        what = f"sha256 mismatch: expected {expected}, got {actual} ({size} bytes"
        if expected_size is not None and expected_size != size:
            what += f", expected {expected_size} bytes"
        super().__init__(url, what + ")", permanent=True)
        self.expected = expected
        self.actual = actual


@dataclass
class CacheCounters:
    """Totals since start, for /metrics."""

    hits: int = 0  # requests served from disk without waiting for upstream
    misses: int = 0  # requests that found the file absent (and fetched or waited)
    fetches: int = 0  # upstream fills that succeeded
    fetch_failures: int = 0  # upstream fills that failed after their retries
    not_found: int = 0  # requests for unknown sums
    bytes_served: int = 0
    bytes_fetched: int = 0


class _HashingWriter:
    """Write-and-hash into a temp file; runs in a worker thread, one call at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "xb")  # noqa: SIM115 (closed in finish/discard)
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray) -> None:
        self.sha.update(data)
        self.file.write(data)
        self.size += len(data)

    def finish(self, mtime: float | None) -> str:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if mtime is not None:
            # The same Last-Modified on every peer, so If-Modified-Since works across peers.
            os.utime(self.path, (mtime, mtime))
        return self.sha.hexdigest()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ArtifactCache:
    """Files stored as `<directory>/sha256/<hex>`; filled on demand or by `prefetch`."""

    def __init__(
        self,
        directory: Path,
        *,
        max_concurrent_fetches: int = 4,
        fetch_timeout: float = 900.0,
        read_timeout: float = 60.0,
        attempts: int = 3,
        backoff: float = 1.0,
        failure_ttl: float = 10.0,
        max_size: int = 16 << 30,
        log_requests: bool = True,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self.root = Path(directory) / "sha256"
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f".*{_PART}"):  # left by a crash mid-fetch
            stale.unlink(missing_ok=True)
        self.counters = CacheCounters()
        self._known: dict[str, Artifact] = {}
        self._inflight: dict[str, asyncio.Task[Path]] = {}
        self._failed: dict[str, tuple[float, FetchError]] = {}
        self._max_fetches = max(1, max_concurrent_fetches)
        self._fetch_slots = asyncio.Semaphore(self._max_fetches)
        self._timeout = aiohttp.ClientTimeout(
            total=fetch_timeout, sock_connect=min(15.0, fetch_timeout), sock_read=read_timeout)
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._failure_ttl = failure_ttl
        self._max_size = max_size
        self._log_requests = log_requests
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None

    # -- the known set ----------------------------------------------------------------------

    def register(self, artifacts: Iterable[Artifact]) -> None:
        """Replace the servable set with the applied revision's artifacts.

        Pass every artifact a host may still ask for (also those of a revision being rolled
        out of), since anything else answers 404 from now on.
        """
        known = {a.sha256: a for a in artifacts}
        self._known = known
        self._failed = {s: f for s, f in self._failed.items() if s in known}

    def known(self, sha256: str) -> Artifact | None:
        return self._known.get(sha256)

    def path(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256):
            raise UnknownArtifact(sha256)
        return self.root / sha256

    def cached(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def metrics(self) -> dict[str, int]:
        """Counters plus the current state, flat, for /metrics."""
        return {**dataclasses.asdict(self.counters), "fetches_in_flight": len(self._inflight),
                "known": len(self._known)}

    # -- filling ----------------------------------------------------------------------------

    async def ensure(self, sha256: str) -> Path:
        """The verified file for this sum, fetched first if absent.

        Single-flight: concurrent callers for one missing artifact share one fetch. A fetch
        that failed is remembered for `failure_ttl` seconds, so a boot storm on a broken
        artifact does not hammer the upstream.
        """
        return (await self._ensure(sha256))[0]

    async def _ensure(self, sha256: str) -> tuple[Path, bool]:
        artifact = self._known.get(sha256)
        if artifact is None:
            raise UnknownArtifact(sha256)
        path = self.path(sha256)
        if path.is_file():
            return path, False
        task = self._inflight.get(sha256)
        if task is None:
            failed = self._failed.get(sha256)
            if failed is not None and failed[0] > time.monotonic():
                # A new instance each time: re-raising one would grow its traceback per request.
                raise FetchError(failed[1].url, failed[1].reason, permanent=True)
            task = asyncio.create_task(self._fill(artifact), name=f"artifact-fetch-{sha256[:12]}")
            self._inflight[sha256] = task
            task.add_done_callback(lambda t: self._fill_done(sha256, t))
        # Shielded: a client that goes away must not cancel the fetch others wait for.
        return await asyncio.shield(task), True

    def _fill_done(self, sha256: str, task: asyncio.Task[Path]) -> None:
        self._inflight.pop(sha256, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is not reported twice

    async def prefetch(self, shas: Iterable[str]) -> dict[str, FetchError]:
        """Warm the cache after a revision is applied; returns the failures by sum.

        At most `max_concurrent_fetches - 1` prefetches run at once, so a slot is left for a
        host that asks for something not yet cached.
        """
        pending = [s for s in dict.fromkeys(shas) if s in self._known and not self.cached(s)]
        failures: dict[str, FetchError] = {}
        queue = iter(pending)

        async def worker() -> None:
            for sha in queue:
                try:
                    await self.ensure(sha)
                except FetchError as exc:
                    failures[sha] = exc
                except UnknownArtifact:
                    pass  # another revision was registered meanwhile

        workers = min(len(pending), max(1, self._max_fetches - 1))
        await asyncio.gather(*(worker() for _ in range(workers)))
        return failures

    async def _fill(self, artifact: Artifact) -> Path:
        url = artifact.url
        last = FetchError(url, "not fetched")
        for attempt in range(1, self._attempts + 1):
            started = time.monotonic()
            try:
                async with self._fetch_slots:
                    size = await self._fetch_once(artifact)
            except FetchError as exc:
                last = exc
                retry = not exc.permanent and attempt < self._attempts
                (log.warning if retry else log.error)(
                    "artifact.fetch_failed", url=url, sha256=artifact.sha256, attempt=attempt,
                    error=exc.reason, retry=retry)
                if not retry:
                    break
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            else:
                self.counters.fetches += 1
                self.counters.bytes_fetched += size
                self._failed.pop(artifact.sha256, None)
                log.info("artifact.fetched", url=url, sha256=artifact.sha256, bytes=size,
                         attempt=attempt, seconds=round(time.monotonic() - started, 3))
                return self.path(artifact.sha256)
        self.counters.fetch_failures += 1
        self._failed[artifact.sha256] = (time.monotonic() + self._failure_ttl, last)
        raise last

    async def _fetch_once(self, artifact: Artifact) -> int:
        """One attempt: upstream bytes into a temp file, renamed only once the sum matches."""
        final = self.path(artifact.sha256)
        tmp = self.root / f".{artifact.sha256}.{secrets.token_hex(4)}{_PART}"
        limit = artifact.size if artifact.size is not None else self._max_size
        loop = asyncio.get_running_loop()
        writer = await loop.run_in_executor(None, _HashingWriter, tmp)
        try:
            scheme = urllib.parse.urlsplit(artifact.url).scheme.lower()
            if scheme == "file":
                mtime = await loop.run_in_executor(
                    None, _copy_file, artifact.url, writer, limit)
            else:
                mtime = await self._download(artifact.url, writer, limit)
            actual = await loop.run_in_executor(None, writer.finish, mtime)
            if actual != artifact.sha256 or (
                    artifact.size is not None and writer.size != artifact.size):
                raise ChecksumMismatch(artifact.url, artifact.sha256, actual, writer.size,
                                       artifact.size)
            os.replace(tmp, final)
        except BaseException:
            await loop.run_in_executor(None, writer.discard)
            raise
        return writer.size

    async def _download(self, url: str, writer: _HashingWriter, limit: int) -> float | None:
        loop = asyncio.get_running_loop()
        session = self._client()
        pending: asyncio.Future[None] | None = None
        try:
            # identity: the sum is of the file as published, never of a compressed transfer.
            async with session.get(url, timeout=self._timeout,
                                   headers={hdrs.ACCEPT_ENCODING: "identity"}) as resp:
                if resp.status != 200:
                    permanent = 400 <= resp.status < 500 and resp.status not in (408, 429)
                    raise FetchError(url, f"upstream answered HTTP {resp.status}",
                                     permanent=permanent)
                if resp.content_length is not None and resp.content_length > limit:
                    raise FetchError(url, f"upstream announces {resp.content_length} bytes, "
                                     f"more than the {limit} allowed", permanent=True)
                received = 0
                buf = bytearray()
                async for chunk in resp.content.iter_chunked(CHUNK):
                    received += len(chunk)
                    if received > limit:
                        raise FetchError(url, f"more than the {limit} bytes allowed",
                                         permanent=True)
                    buf += chunk
                    if len(buf) >= CHUNK:
                        if pending is not None:
                            await pending  # disk and hashing overlap the next network read
                        data, buf = buf, bytearray()
                        pending = loop.run_in_executor(None, writer.write, data)
                if pending is not None:
                    await pending
                    pending = None
                if buf:
                    await loop.run_in_executor(None, writer.write, buf)
                return _http_time(resp.headers.get(hdrs.LAST_MODIFIED))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise FetchError(url, f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        finally:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    await pending

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._session_factory is not None:
                self._session = self._session_factory()
            else:
                self._session = aiohttp.ClientSession(
                    auto_decompress=False,
                    connector=aiohttp.TCPConnector(limit=self._max_fetches * 2),
                )
        return self._session

    async def close(self) -> None:
        """Stop in-flight fetches (their temp files are removed) and close the client."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- serving ----------------------------------------------------------------------------

    async def handler(self, request: web.Request) -> web.StreamResponse:
        """GET/HEAD `ROUTE`: the file with sendfile; Range and If-Modified-Since by aiohttp.

        The name segment is not checked: the sum alone identifies the content, the name is
        there for iPXE and the kernel's `initrd=<name>`.
        """
        sha = request.match_info.get("sha256", "")
        started = time.monotonic()
        if sha not in self._known:
            self.counters.not_found += 1
            unknown = ApiError(404, "unknown_artifact", "no artifact with this sha256 in the "
                               "applied revision", sha256=sha)
            return self._done(request, sha, unknown.response(), started)
        quoted = f'"{sha}"'
        base_headers = {hdrs.CACHE_CONTROL: CACHE_CONTROL, hdrs.ETAG: quoted}
        if (match := request.if_match) is not None and not _etag_in(sha, match):
            return self._done(request, sha, web.Response(status=412, headers=base_headers),
                              started)
        if (none_match := request.if_none_match) is not None and _etag_in(sha, none_match):
            # The client holds these bytes: no need to have them here.
            return self._done(request, sha, web.Response(status=304, headers=base_headers),
                              started)
        try:
            path, fetched = await self._ensure(sha)
        except FetchError as exc:
            artifact = self._known[sha]
            body = ApiError(502, "upstream_fetch_failed", "the artifact could not be fetched from "
                            "its upstream", sha256=sha, url=artifact.url,
                            reason=exc.reason).response()
            return self._done(request, sha, body, started)
        if fetched:
            self.counters.misses += 1
        else:
            self.counters.hits += 1
        return _ArtifactResponse(path, sha, lambda r, err: self._sent(request, sha, r, err,
                                                                      started, fetched),
                                 headers={hdrs.CACHE_CONTROL: CACHE_CONTROL})

    def _done(self, request: web.BaseRequest, sha: str, resp: web.Response,
              started: float) -> web.Response:
        if self._log_requests:
            log.info("artifact.request", client=request.remote, sha256=sha, status=resp.status,
                     bytes=0, ms=round((time.monotonic() - started) * 1000, 1))
        return resp

    def _sent(self, request: web.BaseRequest, sha: str, resp: web.StreamResponse,
              error: BaseException | None, started: float, fetched: bool) -> None:
        sent = 0
        if error is None and request.method != hdrs.METH_HEAD and resp.status in (200, 206):
            sent = resp.content_length or 0
        self.counters.bytes_served += sent
        if self._log_requests:
            log.info("artifact.request", client=request.remote, sha256=sha, status=resp.status,
                     bytes=sent, fetched=fetched, ms=round((time.monotonic() - started) * 1000, 1),
                     **({"error": type(error).__name__} if error is not None else {}))


class _ArtifactResponse(web.FileResponse):
    """FileResponse whose ETag is the sum, and that reports when the body is out."""

    def __init__(self, path: Path, sha256: str,
                 on_sent: Callable[[web.StreamResponse, BaseException | None], None],
                 headers: dict[str, str]) -> None:
        super().__init__(path, chunk_size=CHUNK, headers=headers)
        self._sha_etag = sha256
        self._on_sent = on_sent

    @property
    def etag(self) -> Any:
        return web.StreamResponse.etag.fget(self)  # type: ignore[attr-defined]

    @etag.setter
    def etag(self, value: Any) -> None:
        # aiohttp sets an mtime-size tag; the content is addressed by its sum, so that is ours.
        web.StreamResponse.etag.fset(self, self._sha_etag)  # type: ignore[attr-defined]

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self.prepared:
            return await web.StreamResponse.prepare(self, request)
        if hdrs.IF_MATCH in request.headers or hdrs.IF_NONE_MATCH in request.headers:
            # The handler evaluated these against the sum; aiohttp would compare them with
            # its mtime-size tag and answer 412 or 200 wrongly.
            headers = request.headers.copy()
            headers.popall(hdrs.IF_MATCH, None)
            headers.popall(hdrs.IF_NONE_MATCH, None)
            request = request.clone(headers=headers)
        try:
            writer = await super().prepare(request)
        except BaseException as exc:
            self._on_sent(self, exc)
            raise
        self._on_sent(self, None)
        return writer


def _etag_in(sha: str, etags: tuple[Any, ...]) -> bool:
    return any(e.value in (sha, "*") for e in etags)


def _http_time(value: str | None) -> float | None:
    if not value:
        return None
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return email.utils.parsedate_to_datetime(value).timestamp()
    return None


def _copy_file(url: str, writer: _HashingWriter, limit: int) -> float | None:
    """file:// upstream (a mounted share, a local build): copy and hash in a worker thread."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(url, f"file:// URL names host {parts.netloc!r}; only local paths",
                         permanent=True)
    source = urllib.request.url2pathname(parts.path)
    try:
        with open(source, "rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime
            while chunk := f.read(CHUNK):
                if writer.size + len(chunk) > limit:
                    raise FetchError(url, f"more than the {limit} bytes allowed", permanent=True)
                writer.write(chunk)
    except OSError as exc:
        raise FetchError(url, f"{type(exc).__name__}: {exc}",
                         permanent=isinstance(exc, IsADirectoryError)) from exc
    return mtime
