"""Keep a local bare mirror of the SoT remote, and poll it for new commits.

Peers never trust a branch name: the group agrees on a commit SHA, and each peer makes sure
that exact commit is in its own mirror (`GitMirror.ensure`) before reading it with
`GitTree`. The mirror only ever adds objects, so a SHA once fetched stays readable even if
the remote branch is force-pushed away from it.

Remote branches are stored as `refs/remotes/origin/<branch>` and tags as `refs/tags/<tag>`
(git's own layout), so `GitTree(path, "origin/main")` and `GitTree(path, "v1")` resolve.

Credentials for http(s) remotes come from `token_file`, read at every fetch (so a rotated
token is picked up) and sent as the password of HTTP basic auth with the user name
`x-access-token` (what GitHub accepts for app and fine-grained tokens). The token is never
logged and is scrubbed from every error this module raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import structlog
from dulwich.client import get_transport_and_path
from dulwich.config import ConfigDict
from dulwich.errors import ChecksumMismatch
from dulwich.objects import Commit, ObjectID, ShaFile, Tag
from dulwich.refs import Ref
from dulwich.repo import Repo

log = structlog.get_logger("vaquero.source")

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_HTTP_USER = "x-access-token"
_HTTP_TIMEOUT_S = 60
_LOCK_TIMEOUT_S = 120


class FetchError(RuntimeError):
    """A fetch failed, or the followed ref is not on the remote. The message has no secret."""


class CommitNotFound(LookupError):
    """The agreed commit is neither in the mirror nor obtainable from the remote."""


def redact_url(url: str) -> str:
    """The URL without any user:password part, safe for logs."""
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc="***@" + host))
    return url


class GitMirror:
    """A bare repository at `path` that follows `ref` of the remote at `url`.

    Thread-safe: `fetch` and `ensure` serialise on a lock, because the poller runs them in
    a worker thread while a Raft apply may call `ensure` from another one.
    """

    def __init__(self, path: Path, url: str, ref: str = "main",
                 token_file: Path | None = None) -> None:
        self.path = Path(path)
        self.url = url
        self.ref = ref
        self.token_file = token_file
        self._lock = threading.Lock()
        self.lock_timeout = _LOCK_TIMEOUT_S
        if not (self.path / "objects").is_dir():
            self.path.mkdir(parents=True, exist_ok=True)
            Repo.init_bare(str(self.path)).close()

    # -- fetching -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # git:// has no socket timeout in dulwich: a remote that stops answering holds a
        # fetch (and this lock) forever. Later callers fail instead of piling up threads.
        if not self._lock.acquire(timeout=self.lock_timeout):
            raise FetchError(f"a previous fetch from {redact_url(self.url)} is still running")
        try:
            yield
        finally:
            self._lock.release()

    def _token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise FetchError(f"cannot read token file {self.token_file}: {exc.strerror}") from None
        return token or None

    def _scrub(self, text: str, token: str | None) -> str:
        if token:
            text = text.replace(token, "***")
        return text.replace(self.url, redact_url(self.url))

    def fetch(self) -> str:
        """Fetch every branch and tag; return the commit SHA the followed ref points to."""
        token = self._token()
        with self._locked():
            try:
                refs = self._fetch_refs(token, wants=None)
            except FetchError:
                raise
            except Exception as exc:  # noqa: BLE001 - dulwich and urllib3 raise many kinds
                # `from None`: the original exception (and its args) may carry the token.
                raise FetchError(
                    f"fetch from {redact_url(self.url)} failed: "
                    f"{self._scrub(f'{type(exc).__name__}: {exc}', token)}") from None
            with Repo(str(self.path)) as repo:
                self._store_refs(repo, refs)
                return self._followed_sha(repo, refs)

    def _fetch_refs(self, token: str | None, wants: list[ObjectID] | None
                    ) -> dict[Ref, ObjectID]:
        kwargs: dict[str, object] = {}
        if token is not None and urlsplit(self.url).scheme in ("http", "https"):
            kwargs = {"username": _HTTP_USER, "password": token}
        config = ConfigDict()
        config.set((b"http",), b"timeout", str(_HTTP_TIMEOUT_S).encode())
        client, remote_path = get_transport_and_path(self.url, config=config, quiet=True,
                                                     **kwargs)  # type: ignore[arg-type]
        with Repo(str(self.path)) as repo:
            if wants is None:
                result = client.fetch(remote_path, repo)
            else:
                def determine_wants(refs: object, depth: int | None = None) -> list[ObjectID]:
                    return wants

                result = client.fetch(remote_path, repo, determine_wants=determine_wants)
        return {name: sha for name, sha in result.refs.items() if sha is not None}

    def _store_refs(self, repo: Repo, refs: dict[Ref, ObjectID]) -> None:
        heads: dict[Ref, ObjectID] = {}
        for name, sha in refs.items():
            if name.endswith(b"^{}"):
                continue
            if name.startswith(b"refs/heads/"):
                heads[Ref(b"refs/remotes/origin/" + name[len(b"refs/heads/"):])] = sha
            elif name.startswith(b"refs/tags/"):
                heads[name] = sha
        current = repo.refs.as_dict()
        for name, sha in heads.items():
            if sha in repo.object_store and current.get(name) != sha:
                repo.refs[name] = sha
        # Prune remote branches that are gone; their objects stay (an agreed SHA may need them).
        for name in list(repo.refs.keys(base=Ref(b"refs/remotes/origin/"))):
            full = Ref(b"refs/remotes/origin/" + name)
            if full not in heads:
                del repo.refs[full]

    def _followed_sha(self, repo: Repo, refs: dict[Ref, ObjectID]) -> str:
        ref = self.ref.encode()
        names = [Ref(ref)] if ref.startswith(b"refs/") else [Ref(b"refs/heads/" + ref),
                                                              Ref(b"refs/tags/" + ref)]
        for name in names:
            if name in refs:
                obj: ShaFile = repo[refs[name]]
                for _ in range(16):  # tags of tags are legal; a loop of them is not
                    if not isinstance(obj, Tag):
                        break
                    obj = repo[obj.object[1]]
                if not isinstance(obj, Commit):
                    raise FetchError(f"ref {self.ref!r} points to a "
                                     f"{obj.type_name.decode()}, not a commit")
                return obj.id.decode()
        raise FetchError(f"ref {self.ref!r} is not on {redact_url(self.url)}")

    # -- the agreed commit ----------------------------------------------------------------

    def has_commit(self, sha: str) -> bool:
        with Repo(str(self.path)) as repo:
            return ObjectID(sha.encode()) in repo.object_store

    def ensure(self, sha: str) -> None:
        """Make the commit `sha` present and verified, fetching if needed; else raise."""
        if not _SHA_RE.match(sha):
            raise CommitNotFound(f"{sha!r} is not a full lowercase commit SHA")
        if not self.has_commit(sha):
            log.info("source.ensure_fetch", sha=sha, url=redact_url(self.url))
            self.fetch()
        if not self.has_commit(sha):
            # Not reachable from any ref: ask for it by id (GitHub allows that; git-daemon
            # only with uploadpack.allowAnySHA1InWant).
            token = self._token()
            with self._locked():
                try:
                    self._fetch_refs(token, wants=[ObjectID(sha.encode())])
                except Exception as exc:  # noqa: BLE001 - logged; has_commit() decides
                    log.info("source.fetch_by_sha_failed", sha=sha,
                             reason=self._scrub(f"{type(exc).__name__}: {exc}", token))
        if not self.has_commit(sha):
            raise CommitNotFound(f"commit {sha} is not on {redact_url(self.url)}")
        self._verify(sha)

    def _verify(self, sha: str) -> None:
        """Re-hash the stored object: what we read under this SHA must be this SHA."""
        with Repo(str(self.path)) as repo:
            try:
                obj = repo[sha.encode()]
            except ChecksumMismatch as exc:  # dulwich re-hashes loose objects as it reads
                raise CommitNotFound(f"object {sha} is corrupt: {exc}") from None
            if not isinstance(obj, Commit):
                raise CommitNotFound(f"{sha} is a {obj.type_name.decode()}, not a commit")
            raw = obj.as_raw_string()
            actual = hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()
            if actual != sha:
                raise CommitNotFound(f"object {sha} is corrupt: its content hashes to {actual}")
            if obj.tree not in repo.object_store:
                raise CommitNotFound(f"commit {sha} is present but its tree is missing")


class Poller:
    """Fetch every `interval` (+ up to `jitter`) seconds; call `on_new(sha)` when the ref moves.

    Failures never end the task: they are logged and retried with exponential backoff from
    `min_backoff` to `max_backoff`. `last_sha` is the SHA `on_new` last accepted: pass the
    currently applied one so a restart does not report it again (None reports the first
    fetch). If `on_new` raises, the SHA is offered again at the next poll. A fetch that
    takes longer than `fetch_timeout` counts as a failure (dulwich's git:// has no timeout).
    """

    def __init__(self, mirror: GitMirror, interval: float, jitter: float,
                 on_new: Callable[[str], Awaitable[None]], *, last_sha: str | None = None,
                 min_backoff: float = 1.0, max_backoff: float = 300.0,
                 fetch_timeout: float = 600.0) -> None:
        self.mirror = mirror
        self.interval = interval
        self.jitter = jitter
        self.on_new = on_new
        self.last_sha = last_sha
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.fetch_timeout = fetch_timeout
        self.last_success: float | None = None  # time.time() of the last good fetch
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Poller:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="source-poller")
        return self

    def trigger(self) -> None:
        """Fetch now (a webhook said the remote changed), also in the middle of a backoff."""
        self._wake.set()

    async def close(self) -> None:
        # A fetch already in its worker thread finishes on its own; we just stop waiting.
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def backoff(self) -> float:
        exp = min(self.consecutive_failures - 1, 32)
        return min(self.max_backoff, self.min_backoff * 2 ** exp)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            await self.poll_once()
            delay = self.backoff() if self.consecutive_failures else self.interval
            delay += random.uniform(0, self.jitter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def poll_once(self) -> None:
        """One fetch and, if the ref moved, one `on_new`. Never raises (but on cancel)."""
        try:
            # On timeout the worker thread stays blocked (threads cannot be cancelled); the
            # mirror's lock makes the next polls fail fast until it returns.
            sha = await asyncio.wait_for(asyncio.to_thread(self.mirror.fetch),
                                         timeout=self.fetch_timeout)
        except Exception as exc:  # noqa: BLE001 - a poll never raises: counted, retried
            self.consecutive_failures += 1
            self.last_error = (f"fetch timed out after {self.fetch_timeout} s"
                               if isinstance(exc, TimeoutError) else str(exc))
            log.warning("source.fetch_failed", url=redact_url(self.mirror.url),
                        reason=self.last_error, failures=self.consecutive_failures,
                        retry_in_s=round(self.backoff(), 3))
            return
        if self.consecutive_failures:
            log.info("source.fetch_recovered", url=redact_url(self.mirror.url),
                     after_failures=self.consecutive_failures)
        self.consecutive_failures = 0
        self.last_error = None
        self.last_success = time.time()
        if sha == self.last_sha:
            return
        log.info("source.new_commit", sha=sha, previous=self.last_sha, ref=self.mirror.ref)
        try:
            await self.on_new(sha)
        except Exception as exc:  # noqa: BLE001 - the next poll tries this commit again
            log.warning("source.on_new_failed", sha=sha, reason=f"{type(exc).__name__}: {exc}")
            return
        self.last_sha = sha
