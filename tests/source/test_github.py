"""GitHub webhook and commit statuses, against a fake GitHub API served on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
from pathlib import Path

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.source.github import (
    WEBHOOK_PATH,
    GithubStatus,
    GithubWebhook,
    WebhookSecretError,
    load_webhook_secret,
)

SECRET = b"s3cret-webhook-value-0123456789"
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
OTHER_SHA = "89e6c98d92887913cadf06b2adb97f26cde4849b"
TOKEN = "ghp_TESTTOKEN_must_never_be_logged_1234"


# --- fake GitHub API ---------------------------------------------------------------------

class FakeGithub:
    """Records every call; `fail` holds HTTP statuses to answer before behaving normally."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.fail: list[int] = []
        self.statuses: dict[str, list[dict]] = {}
        self.hang = 0  # calls to leave unanswered until the test ends
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/repos/{owner}/{repo}/statuses/{sha}", self.post_status)
        app.router.add_get("/repos/{owner}/{repo}/commits/{sha}/status", self.combined)
        self.app = app

    async def _record(self, request: web.Request) -> web.Response | None:
        body = await request.read()
        self.calls.append({"method": request.method, "path": request.path,
                           "query": dict(request.query), "headers": dict(request.headers),
                           "body": json.loads(body) if body else None})
        if self.hang:
            self.hang -= 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 30)
        if self.fail:
            code = self.fail.pop(0)
            return web.json_response({"message": f"fake failure {code}"}, status=code)
        return None

    async def post_status(self, request: web.Request) -> web.Response:
        failed = await self._record(request)
        if failed:
            return failed
        entry = self.calls[-1]["body"]
        self.statuses.setdefault(request.match_info["sha"], []).insert(0, entry)
        return web.json_response({"id": len(self.calls), **entry}, status=201)

    async def combined(self, request: web.Request) -> web.Response:
        failed = await self._record(request)
        if failed:
            return failed
        latest: dict[str, dict] = {}
        for s in self.statuses.get(request.match_info["sha"], []):
            latest.setdefault(s["context"], s)
        return web.json_response({"state": "pending", "sha": request.match_info["sha"],
                                  "statuses": list(latest.values())})


@pytest.fixture
async def github():
    fake = FakeGithub()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    fake.base = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        fake.release.set()
        await server.close()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "github-token"
    path.write_text(TOKEN + "\n")
    return path


def client_for(github: FakeGithub, token_file: Path, **kw) -> GithubStatus:
    return GithubStatus(github.base, "acme/sot", token_file, site="dc1", timeout=5.0,
                        backoff=0.01, **kw)


def assert_no_token(logs: list[dict]) -> None:
    assert logs, "expected log lines to inspect"
    for entry in logs:
        assert TOKEN not in repr(entry)
        assert "Bearer" not in repr(entry)


# --- commit statuses ---------------------------------------------------------------------

async def test_report_posts_status(github: FakeGithub, token_file: Path):
    status = client_for(github, token_file)
    result = await status.report(SHA, "pending", "validating revision",
                                 target_url="https://vaquero.example/rev/1")
    assert result.ok and result.status == 201 and result.attempts == 1
    [call] = github.calls
    assert call["method"] == "POST"
    assert call["path"] == f"/repos/acme/sot/statuses/{SHA}"
    assert call["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert call["headers"]["Accept"] == "application/vnd.github+json"
    assert call["body"] == {"state": "pending", "description": "validating revision",
                            "context": "vaquero/dc1",
                            "target_url": "https://vaquero.example/rev/1"}


async def test_report_truncates_description_and_omits_target(github: FakeGithub,
                                                              token_file: Path):
    status = client_for(github, token_file, context="custom/ctx")
    result = await status.report(SHA, "failure", "x" * 500)
    assert result.ok
    body = github.calls[0]["body"]
    assert len(body["description"]) == 140 and body["description"].startswith("xxx")
    assert "target_url" not in body
    assert body["context"] == "custom/ctx"


async def test_report_retries_on_500(github: FakeGithub, token_file: Path):
    github.fail = [500, 502]
    status = client_for(github, token_file)
    with structlog.testing.capture_logs() as logs:
        result = await status.report(SHA, "success", "applied")
    assert result.ok and result.attempts == 3
    assert len(github.calls) == 3
    assert all(c["path"] == f"/repos/acme/sot/statuses/{SHA}" for c in github.calls)
    assert [e["event"] for e in logs].count("github.api.retry") == 2
    assert_no_token(logs)


async def test_report_gives_up_after_attempts(github: FakeGithub, token_file: Path):
    github.fail = [500] * 10
    status = client_for(github, token_file, attempts=3)
    with structlog.testing.capture_logs() as logs:
        result = await status.report(SHA, "success", "applied")
    assert not result.ok and result.status == 500 and result.attempts == 3
    assert len(github.calls) == 3
    assert "fake failure 500" in result.error
    assert any(e["event"] == "github.api.failed" for e in logs)
    assert_no_token(logs)


async def test_report_no_retry_on_404(github: FakeGithub, token_file: Path):
    github.fail = [404]
    status = client_for(github, token_file)
    with structlog.testing.capture_logs() as logs:
        result = await status.report(SHA, "error", "boom")
    assert not result.ok and result.status == 404 and result.attempts == 1
    assert len(github.calls) == 1
    failed = [e for e in logs if e["event"] == "github.api.failed"]
    assert failed and failed[0]["status"] == 404
    assert_no_token(logs)


async def test_report_network_error_is_returned_not_raised(token_file: Path):
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status = GithubStatus(f"http://127.0.0.1:{port}", "acme/sot", token_file,
                          backoff=0.01, attempts=2, timeout=5.0)
    with structlog.testing.capture_logs() as logs:
        result = await status.report(SHA, "pending", "x")
    assert not result.ok and result.status is None and result.attempts == 2
    assert result.error
    assert_no_token(logs)


async def test_report_times_out_and_retries(github: FakeGithub, token_file: Path):
    github.hang = 1
    status = GithubStatus(github.base, "acme/sot", token_file, timeout=0.3, backoff=0.01)
    with structlog.testing.capture_logs() as logs:
        result = await status.report(SHA, "pending", "x")
    assert result.ok and result.attempts == 2
    assert len(github.calls) == 2
    [retry] = [e for e in logs if e["event"] == "github.api.retry"]
    assert "Timeout" in retry["error"]
    assert_no_token(logs)


async def test_report_rejects_bad_input_without_calling(github: FakeGithub, token_file: Path,
                                                        tmp_path: Path):
    status = client_for(github, token_file)
    assert not (await status.report("../../etc", "pending", "x")).ok
    assert not (await status.report(SHA, "done", "x")).ok  # type: ignore[arg-type]
    missing = GithubStatus(github.base, "acme/sot", tmp_path / "nope")
    with structlog.testing.capture_logs() as logs:
        result = await missing.report(SHA, "pending", "x")
    assert not result.ok and "cannot read" in result.error
    assert logs and logs[0]["event"] == "github.api.no_token"
    assert github.calls == []
    with pytest.raises(ValueError):
        GithubStatus(github.base, "not-a-repo", token_file)


async def test_required_contexts(github: FakeGithub, token_file: Path):
    status = client_for(github, token_file)
    ci = client_for(github, token_file, context="ci/tests")
    review = client_for(github, token_file, context="review/approved")
    assert (await ci.report(SHA, "success", "tests pass")).ok
    assert (await review.report(SHA, "pending", "waiting")).ok

    ok, missing = await status.required_contexts_ok(SHA, ["ci/tests", "review/approved",
                                                          "lint"])
    assert not ok and missing == ["review/approved", "lint"]
    get = github.calls[-1]
    assert get["method"] == "GET" and get["path"] == f"/repos/acme/sot/commits/{SHA}/status"
    assert get["headers"]["Authorization"] == f"Bearer {TOKEN}"

    assert (await review.report(SHA, "success", "approved")).ok  # the newest status wins
    assert await status.required_contexts_ok(SHA, ["ci/tests", "review/approved"]) == (True, [])
    # Another commit has none of them.
    assert await status.required_contexts_ok(OTHER_SHA, ["ci/tests"]) == (False, ["ci/tests"])


async def test_required_contexts_closed_when_github_fails(github: FakeGithub, token_file: Path):
    github.fail = [404]
    status = client_for(github, token_file)
    assert await status.required_contexts_ok(SHA, ["ci/tests"]) == (False, ["ci/tests"])
    assert len(github.calls) == 1


# --- webhook -----------------------------------------------------------------------------

@pytest.fixture
async def hook():
    pushed: list[str] = []

    async def on_push(sha: str) -> None:
        pushed.append(sha)

    webhook = GithubWebhook(SECRET, "main", on_push, max_body=64 * 1024)
    app = web.Application()
    app.router.add_post(WEBHOOK_PATH, webhook.handle)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    client.pushed = pushed
    try:
        yield client
    finally:
        await client.close()


def signed(body: bytes, event: str, secret: bytes = SECRET) -> dict[str, str]:
    sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": sig, "X-GitHub-Event": event,
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "Content-Type": "application/json"}


def push_body(ref: str = "refs/heads/main", after: str = SHA, **extra) -> bytes:
    return json.dumps({"ref": ref, "before": OTHER_SHA, "after": after,
                       "repository": {"full_name": "acme/sot"}, **extra}).encode()


async def test_push_on_branch_accepted(hook: TestClient):
    body = push_body()
    resp = await hook.post(WEBHOOK_PATH, data=body, headers=signed(body, "push"))
    assert resp.status == 202
    assert await resp.json() == {"accepted": SHA}
    assert hook.pushed == [SHA]


async def test_wrong_signature_refused(hook: TestClient):
    body = push_body()
    with structlog.testing.capture_logs() as logs:
        resp = await hook.post(WEBHOOK_PATH, data=body,
                               headers=signed(body, "push", secret=b"another-secret-0123456789"))
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthorized"
    assert hook.pushed == []
    [line] = [e for e in logs if e["event"] == "github.webhook.refused"]
    assert line["log_level"] == "warning"
    assert line["delivery"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert line["client"] == "127.0.0.1"
    assert SECRET.decode() not in repr(logs) and "sha256=" not in repr(logs)


async def test_tampered_body_refused(hook: TestClient):
    headers = signed(push_body(), "push")
    resp = await hook.post(WEBHOOK_PATH, data=push_body(after=OTHER_SHA), headers=headers)
    assert resp.status == 401
    assert hook.pushed == []


async def test_missing_signature_refused(hook: TestClient):
    body = push_body()
    headers = signed(body, "push")
    del headers["X-Hub-Signature-256"]
    with structlog.testing.capture_logs() as logs:
        resp = await hook.post(WEBHOOK_PATH, data=body, headers=headers)
    assert resp.status == 401
    assert hook.pushed == []
    assert any(e["event"] == "github.webhook.refused" for e in logs)


async def test_push_with_curl(hook: TestClient, tmp_path: Path):
    """The same delivery from curl, as GitHub's sender would make it (not aiohttp's client)."""
    body = push_body()
    (tmp_path / "body.json").write_bytes(body)
    args = ["curl", "-sS", "--max-time", "10", "-o", str(tmp_path / "out"), "-w",
            "%{http_code}", "--data-binary", f"@{tmp_path / 'body.json'}"]
    for name, value in signed(body, "push").items():
        args += ["-H", f"{name}: {value}"]
    proc = await asyncio.create_subprocess_exec(*args, str(hook.make_url(WEBHOOK_PATH)),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert out == b"202"
    assert json.loads((tmp_path / "out").read_bytes()) == {"accepted": SHA}
    assert hook.pushed == [SHA]


async def test_ping(hook: TestClient):
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    resp = await hook.post(WEBHOOK_PATH, data=body, headers=signed(body, "ping"))
    assert resp.status == 200
    assert await resp.json() == {"pong": True}
    assert hook.pushed == []


@pytest.mark.parametrize(("event", "body", "reason"), [
    ("push", push_body(ref="refs/heads/feature"), "refs/heads/feature"),
    ("push", push_body(ref="refs/tags/v1"), "refs/tags/v1"),
    ("push", push_body(after="0" * 40, deleted=True), "deleted"),
    ("issues", b'{"action": "opened"}', "issues"),
])
async def test_ignored(hook: TestClient, event: str, body: bytes, reason: str):
    resp = await hook.post(WEBHOOK_PATH, data=body, headers=signed(body, event))
    assert resp.status == 202
    assert reason in (await resp.json())["ignored"]
    assert hook.pushed == []


async def test_signed_garbage_is_400(hook: TestClient):
    for body in (b"not json", push_body(after="main")):
        resp = await hook.post(WEBHOOK_PATH, data=body, headers=signed(body, "push"))
        assert resp.status == 400
    assert hook.pushed == []


async def test_oversize_body(hook: TestClient):
    body = push_body(padding="x" * (100 * 1024))
    resp = await hook.post(WEBHOOK_PATH, data=body, headers=signed(body, "push"))
    assert resp.status == 413
    assert hook.pushed == []


async def test_oversize_chunked_body(hook: TestClient):
    """No Content-Length: the limit is enforced while streaming."""
    body = push_body(padding="x" * (100 * 1024))

    async def chunks():
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    resp = await hook.post(WEBHOOK_PATH, data=chunks(), headers=signed(body, "push"))
    assert resp.status == 413
    assert hook.pushed == []


async def test_default_limit_is_above_aiohttp_client_max_size():
    """A 2 MiB push (a large SoT commit list) passes although aiohttp's default
    client_max_size is 1 MiB: the handler reads the stream itself, up to 5 MiB."""
    pushed: list[str] = []

    async def on_push(sha: str) -> None:
        pushed.append(sha)

    app = web.Application()
    app.router.add_post(WEBHOOK_PATH, GithubWebhook(SECRET, "main", on_push).handle)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        body = push_body(padding="x" * (2 * 1024 * 1024))
        resp = await client.post(WEBHOOK_PATH, data=body, headers=signed(body, "push"))
        assert resp.status == 202
        body = push_body(padding="x" * (6 * 1024 * 1024))
        resp = await client.post(WEBHOOK_PATH, data=body, headers=signed(body, "push"))
        assert resp.status == 413
    assert pushed == [SHA]


async def test_on_push_failure_is_500():
    async def broken(sha: str) -> None:
        raise RuntimeError("queue full")

    app = web.Application()
    app.router.add_post(WEBHOOK_PATH, GithubWebhook(SECRET, "main", broken).handle)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        body = push_body()
        resp = await client.post(WEBHOOK_PATH, data=body, headers=signed(body, "push"))
        assert resp.status == 500


def test_load_webhook_secret(tmp_path: Path):
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    assert load_webhook_secret(path) == SECRET
    path.write_bytes(b"short\n")
    with pytest.raises(WebhookSecretError, match="at least 16"):
        load_webhook_secret(path)
    with pytest.raises(WebhookSecretError, match="cannot read"):
        load_webhook_secret(tmp_path / "missing")
    with pytest.raises(WebhookSecretError):
        GithubWebhook(b"short", "main", lambda sha: None)  # type: ignore[arg-type]


async def test_replayed_delivery_triggers_one_fetch(hook: TestClient):
    """A delivery replayed 100 times (its unsigned id header changed or not) is acted on
    once; a new push after it still is."""
    body = push_body()
    for i in range(100):
        headers = signed(body, "push")
        if i % 2:
            headers["X-GitHub-Delivery"] = f"forged-{i}"
        resp = await hook.post(WEBHOOK_PATH, data=body, headers=headers)
        assert resp.status in (200, 202)
    assert hook.pushed == [SHA]
    body = push_body(after=OTHER_SHA)
    headers = {**signed(body, "push"), "X-GitHub-Delivery": "next-delivery"}
    assert (await hook.post(WEBHOOK_PATH, data=body, headers=headers)).status == 202
    assert hook.pushed == [SHA, OTHER_SHA]


async def test_unsigned_body_is_refused_before_it_is_read(hook: TestClient):
    sent: list[int] = []

    async def slow_chunks():
        for i in range(100):  # 10 MB over ~5 s, if anyone waited for it
            sent.append(i)
            yield b"x" * (100 * 1024)
            await asyncio.sleep(0.05)

    headers = {"X-GitHub-Event": "push", "Content-Type": "application/json"}
    resp = await hook.post(WEBHOOK_PATH, data=slow_chunks(), headers=headers)
    assert resp.status == 401
    assert len(sent) < 100  # answered while the body was still arriving
    body = push_body()
    assert (await hook.post(WEBHOOK_PATH, data=body,
                            headers=signed(body, "push"))).status == 202
