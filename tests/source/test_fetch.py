"""The peer's mirror of the SoT remote, against real git: `git daemon` on loopback and file://.

Commits are made and pushed with the git CLI; the mirror fetches with dulwich and must be
readable by GitTree at the fetched SHA.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import http.server
import os
import signal
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from appliance.source.fetch import CommitNotFound, FetchError, GitMirror, Poller
from appliance.source.gittree import GitTree

GIT_ENV = {"GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.test",
           "GIT_COMMITTER_NAME": "Ops", "GIT_COMMITTER_EMAIL": "ops@example.test",
           "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=GIT_ENV, timeout=30).stdout.strip()


class Remote:
    """A bare repository and a work tree that pushes to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bare = root / "sot.git"
        self.work = root / "work"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.bare)],
                       check=True, env=GIT_ENV, timeout=30)
        subprocess.run(["git", "init", "-q", "-b", "main", str(self.work)],
                       check=True, env=GIT_ENV, timeout=30)
        self.n = 0

    def commit(self, files: dict[str, str] | None = None, push: bool = True) -> str:
        self.n += 1
        for name, text in (files or {"hosts.yml": f"revision: {self.n}\n"}).items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-qm", f"change {self.n}")
        if push:
            git(self.work, "push", "-q", str(self.bare), "main")
        return git(self.work, "rev-parse", "HEAD")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`git daemon` serving the remote's folder on 127.0.0.1; stoppable and restartable."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"git://127.0.0.1:{self.port}/sot.git"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", f"--base-path={self.base}", "--export-all",
             "--listen=127.0.0.1", f"--port={self.port}", str(self.base)],
            env=GIT_ENV, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("git daemon did not start listening")

    def stop(self) -> None:
        if self.proc is not None:
            # Its own session: the per-connection children go with it.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path / "remote")


@pytest.fixture
def daemon(remote: Remote) -> Iterator[Daemon]:
    d = Daemon(remote.root)
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(params=["git-daemon", "file"])
def url(request: pytest.FixtureRequest, remote: Remote) -> str:
    if request.param == "file":
        return f"file://{remote.bare}"
    return request.getfixturevalue("daemon").url


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


def test_fetch_returns_pushed_sha_and_gittree_reads_it(
        url: str, remote: Remote, tmp_path: Path) -> None:
    first = remote.commit({"sites/lab/env.yml": "site: lab\n", "os/a.yml": "id: a\n"})
    mirror = GitMirror(tmp_path / "mirror.git", url)
    assert mirror.fetch() == first
    tree = GitTree(mirror.path, first)
    assert list(tree.files()) == ["os/a.yml", "sites/lab/env.yml"]
    assert tree.read("sites/lab/env.yml") == b"site: lab\n"
    assert GitTree(mirror.path, "origin/main").sha == first

    second = remote.commit({"os/a.yml": "id: a2\n"})
    assert mirror.fetch() == second
    assert GitTree(mirror.path, second).read("os/a.yml") == b"id: a2\n"
    assert GitTree(mirror.path, first).read("os/a.yml") == b"id: a\n"  # old SHA still readable
    assert (tmp_path / "mirror.git" / "objects").is_dir()
    assert not (tmp_path / "mirror.git" / ".git").exists()  # bare


def test_ensure_fetches_a_sha_not_yet_fetched(url: str, remote: Remote, tmp_path: Path) -> None:
    remote.commit()
    mirror = GitMirror(tmp_path / "mirror.git", url)
    mirror.fetch()
    agreed = remote.commit({"hosts.yml": "agreed\n"})
    assert not mirror.has_commit(agreed)
    mirror.ensure(agreed)
    assert mirror.has_commit(agreed)
    assert GitTree(mirror.path, agreed).read("hosts.yml") == b"agreed\n"
    mirror.ensure(agreed)  # already there: no error


def test_ensure_rejects_what_is_not_the_agreed_commit(
        daemon: Daemon, remote: Remote, tmp_path: Path) -> None:
    head = remote.commit({"hosts.yml": "x\n"})
    mirror = GitMirror(tmp_path / "mirror.git", daemon.url)
    with pytest.raises(CommitNotFound, match="is not on"):
        mirror.ensure("0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(CommitNotFound, match="full lowercase commit SHA"):
        mirror.ensure(head[:12])
    blob = git(remote.work, "rev-parse", "HEAD:hosts.yml")
    with pytest.raises(CommitNotFound, match="not a commit"):
        mirror.ensure(blob)  # present in the mirror after the fetch, but a blob
    mirror.ensure(head)


def test_ensure_detects_a_corrupt_object(remote: Remote, tmp_path: Path) -> None:
    head = remote.commit()
    mirror = GitMirror(tmp_path / "mirror.git", f"file://{remote.bare}")
    mirror.fetch()
    # Store a different commit's bytes under the agreed SHA as a loose object.
    other = remote.commit(push=False)
    raw_other = subprocess.run(["git", "-C", str(remote.work), "cat-file", "commit", other],
                               check=True, capture_output=True, timeout=30).stdout
    for pack in (mirror.path / "objects" / "pack").glob("*"):
        pack.unlink()
    loose = mirror.path / "objects" / head[:2] / head[2:]
    loose.parent.mkdir(parents=True, exist_ok=True)
    loose.write_bytes(zlib.compress(b"commit %d\0" % len(raw_other) + raw_other))
    with pytest.raises(CommitNotFound, match="corrupt"):
        mirror.ensure(head)


def test_an_annotated_tag_is_followed_and_peeled(daemon: Daemon, remote: Remote,
                                                 tmp_path: Path) -> None:
    first = remote.commit()
    git(remote.work, "tag", "-a", "release", "-m", "release 1")
    git(remote.work, "push", "-q", str(remote.bare), "release")
    mirror = GitMirror(tmp_path / "mirror.git", daemon.url, ref="release")
    assert mirror.fetch() == first
    assert GitTree(mirror.path, "release").sha == first

    second = remote.commit()
    assert mirror.fetch() == first  # a branch push does not move the tag
    git(remote.work, "tag", "-f", "-a", "release", "-m", "release 2")
    git(remote.work, "push", "-q", "-f", str(remote.bare), "release")
    assert mirror.fetch() == second
    full = GitMirror(tmp_path / "mirror.git", daemon.url, ref="refs/tags/release")
    assert full.fetch() == second


def test_a_ref_missing_on_the_remote_is_an_error(daemon: Daemon, remote: Remote,
                                                 tmp_path: Path) -> None:
    remote.commit()
    mirror = GitMirror(tmp_path / "mirror.git", daemon.url, ref="production")
    with pytest.raises(FetchError, match="'production' is not on"):
        mirror.fetch()


def test_a_deleted_remote_branch_is_pruned_but_its_commits_stay(
        remote: Remote, tmp_path: Path) -> None:
    remote.commit()
    git(remote.work, "checkout", "-qb", "topic")
    topic = remote.commit(push=False)
    git(remote.work, "push", "-q", str(remote.bare), "topic")
    mirror = GitMirror(tmp_path / "mirror.git", f"file://{remote.bare}")
    mirror.fetch()
    assert GitTree(mirror.path, "origin/topic").sha == topic
    git(remote.work, "push", "-q", str(remote.bare), ":topic")
    mirror.fetch()
    assert "refs/remotes/origin/topic" not in git(mirror.path, "for-each-ref")
    mirror.ensure(topic)


def test_the_token_never_appears_in_errors_or_logs(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-t0ken\n")
    port = free_port()  # nothing listens there
    url = f"http://ops:pw-in-url@127.0.0.1:{port}/sot.git"
    mirror = GitMirror(tmp_path / "mirror.git", url, token_file=token_file)
    with capture_logs() as logs, pytest.raises(FetchError) as info:
        mirror.ensure("0123456789abcdef0123456789abcdef01234567")
    exc = info.value
    text = " ".join([str(exc), repr(exc), repr(exc.__cause__), repr(exc.__context__),
                     repr(logs)])
    assert "127.0.0.1" in text
    assert "s3cr3t-t0ken" not in text and "pw-in-url" not in text


async def test_poller_reports_each_push_once(daemon: Daemon, remote: Remote,
                                             tmp_path: Path) -> None:
    first = remote.commit()
    seen: list[str] = []

    async def on_new(sha: str) -> None:
        seen.append(sha)

    poller = Poller(GitMirror(tmp_path / "mirror.git", daemon.url), 0.2, 0.05, on_new).start()
    try:
        assert await wait_until(lambda: seen == [first])
        second = remote.commit()
        assert await wait_until(lambda: len(seen) == 2)
        assert seen == [first, second]
        # Several more polls with nothing new must not report anything again.
        for _ in range(3):
            stamp = poller.last_success
            assert await wait_until(lambda s=stamp: poller.last_success != s)
        assert seen == [first, second]
        assert poller.consecutive_failures == 0 and poller.last_error is None
    finally:
        await poller.close()


async def test_trigger_fetches_at_once(remote: Remote, tmp_path: Path) -> None:
    first = remote.commit()
    seen: list[str] = []

    async def on_new(sha: str) -> None:
        seen.append(sha)

    mirror = GitMirror(tmp_path / "mirror.git", f"file://{remote.bare}")
    poller = Poller(mirror, 3600, 0, on_new, last_sha=first).start()
    try:
        assert await wait_until(lambda: poller.last_success is not None)
        assert seen == []  # the applied SHA was given: not reported again
        second = remote.commit()
        poller.trigger()
        assert await wait_until(lambda: seen == [second])
    finally:
        await poller.close()


async def test_on_new_failure_is_retried(remote: Remote, tmp_path: Path) -> None:
    head = remote.commit()
    calls: list[str] = []

    async def on_new(sha: str) -> None:
        calls.append(sha)
        if len(calls) == 1:
            raise RuntimeError("raft busy")

    mirror = GitMirror(tmp_path / "mirror.git", f"file://{remote.bare}")
    poller = Poller(mirror, 0.05, 0, on_new).start()
    try:
        assert await wait_until(lambda: len(calls) >= 2)
        assert calls[:2] == [head, head]
        assert poller.last_sha == head
    finally:
        await poller.close()


def test_backoff_doubles_and_is_capped(tmp_path: Path) -> None:
    async def on_new(sha: str) -> None:
        pass

    poller = Poller(GitMirror(tmp_path / "m.git", "file:///nonexistent"), 10, 0, on_new,
                    min_backoff=1, max_backoff=300)
    delays = []
    for n in range(1, 12):
        poller.consecutive_failures = n
        delays.append(poller.backoff())
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


async def test_poller_survives_the_remote_going_away(daemon: Daemon, remote: Remote,
                                                     tmp_path: Path) -> None:
    first = remote.commit()
    seen: list[str] = []

    async def on_new(sha: str) -> None:
        seen.append(sha)

    mirror = GitMirror(tmp_path / "mirror.git", daemon.url)
    poller = Poller(mirror, 0.1, 0.02, on_new, min_backoff=0.05, max_backoff=0.4).start()
    try:
        assert await wait_until(lambda: seen == [first])
        daemon.stop()
        with capture_logs() as logs:
            assert await wait_until(lambda: poller.consecutive_failures >= 4)
        assert poller.last_error and "127.0.0.1" in poller.last_error
        failures = [e for e in logs if e["event"] == "source.fetch_failed"]
        assert len(failures) >= 4
        assert all(e["reason"] for e in failures)
        retry = [e["retry_in_s"] for e in failures[:4]]
        assert retry == [0.05, 0.1, 0.2, 0.4]  # the planned delays, not measured ones
        assert poller._task is not None and not poller._task.done()

        second = remote.commit()  # pushed to the bare repo while the daemon is down
        daemon.start()
        assert await wait_until(lambda: seen == [first, second])
        assert poller.consecutive_failures == 0 and poller.last_error is None
    finally:
        await poller.close()


class AuthGitHTTP(http.server.BaseHTTPRequestHandler):
    """Smart HTTP through the real `git http-backend` CGI, behind a basic-auth check."""

    root: Path
    expected: str
    seen_auth: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _serve(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.seen_auth.append(auth)
        if not hmac.compare_digest(auth, self.expected):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="sot"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {**GIT_ENV, "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": "x-access-token",
               "GATEWAY_INTERFACE": "CGI/1.1"}
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, capture_output=True,
                             env=env, timeout=30, check=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            else:
                headers.append((name, value))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve


@pytest.fixture
def http_remote(remote: Remote) -> Iterator[tuple[str, type[AuthGitHTTP]]]:
    token = "ghs_t0ken-for-test"
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    handler = type("Handler", (AuthGitHTTP,), {"root": remote.root,
                                               "expected": f"Basic {basic}", "seen_auth": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/sot.git", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_https_token_is_sent_as_basic_auth(http_remote: tuple[str, type[AuthGitHTTP]],
                                           remote: Remote, tmp_path: Path) -> None:
    url, handler = http_remote
    head = remote.commit({"hosts.yml": "over http\n"})
    token_file = tmp_path / "token"
    token_file.write_text("ghs_t0ken-for-test\n")
    mirror = GitMirror(tmp_path / "mirror.git", url, token_file=token_file)
    assert mirror.fetch() == head
    assert GitTree(mirror.path, head).read("hosts.yml") == b"over http\n"

    token_file.write_text("ghs_wr0ng\n")  # rotated to a bad one: read again at each fetch
    with capture_logs() as logs, pytest.raises(FetchError) as info:
        mirror.fetch()
    text = " ".join([str(info.value), repr(info.value.__context__), repr(logs)])
    assert "ghs_wr0ng" not in text and "ghs_t0ken" not in text
    assert any(a and a != handler.expected for a in handler.seen_auth)  # it was sent

    anonymous = GitMirror(tmp_path / "anon.git", url)
    with pytest.raises(FetchError):
        anonymous.fetch()


async def test_poller_survives_a_remote_that_stops_answering(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts (in the kernel) and never says a word
    port = listener.getsockname()[1]

    async def on_new(sha: str) -> None:
        raise AssertionError("nothing to report")

    mirror = GitMirror(tmp_path / "mirror.git", f"git://127.0.0.1:{port}/sot.git")
    mirror.lock_timeout = 0.05
    poller = Poller(mirror, 0.05, 0, on_new, min_backoff=0.05, max_backoff=0.1,
                    fetch_timeout=0.3).start()
    try:
        with capture_logs() as logs:
            assert await wait_until(lambda: poller.consecutive_failures >= 3)
        reasons = [e["reason"] for e in logs if e["event"] == "source.fetch_failed"]
        assert reasons[0] == "fetch timed out after 0.3 s"
        assert any("still running" in r for r in reasons[1:])
        assert poller._task is not None and not poller._task.done()
    finally:
        await poller.close()
        listener.close()  # the hung fetch gets a reset and its thread ends
