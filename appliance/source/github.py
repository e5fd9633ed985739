"""GitHub as a SoT remote: push webhooks in, commit statuses out.

The webhook only *names* a commit: the pipeline still fetches it by SHA and validates it, so
a forged or replayed delivery can at worst trigger a fetch of a commit that already exists
upstream. The HMAC check keeps strangers from making us fetch at all. Statuses are
best-effort: GitHub being slow or down must never stall or crash the revision pipeline, so
every failure is logged and returned, never raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import structlog
from aiohttp import web

from appliance.errors import ApiError, StartupError

log = structlog.get_logger("vaquero.source.github")

WEBHOOK_PATH = "/v1/hooks/github"
SIGNATURE_RE = re.compile(r"^sha256=[0-9a-fA-F]{64}$")
SEEN_DELIVERIES = 4096  # deliveries remembered for de-duplication
MAX_WEBHOOK_BODY = 5 * 1024 * 1024  # GitHub caps payloads at 25 MB; a push to a SoT is tiny
MIN_SECRET_BYTES = 16
ZERO_SHA = re.compile(r"^0+$")
SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # SHA-1 and SHA-256 repositories
REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
DESCRIPTION_MAX = 140  # GitHub rejects longer status descriptions with a 422

State = Literal["error", "failure", "pending", "success"]
STATES = frozenset({"error", "failure", "pending", "success"})


# --- webhook -----------------------------------------------------------------------------

class WebhookSecretError(StartupError):
    """A webhook secret file that cannot be used, with what to do about it."""


def load_webhook_secret(path: str | Path) -> bytes:
    """Read the shared secret configured on the GitHub webhook (surrounding whitespace is
    dropped, as editors add a trailing newline that GitHub's form would not)."""
    path = Path(path)
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise WebhookSecretError(f"GitHub webhook secret: cannot read {path}: "
                                 f"{exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise WebhookSecretError(
            f"GitHub webhook secret: {path} holds {len(secret)} bytes; use at least "
            f"{MIN_SECRET_BYTES} random characters (`head -c 32 /dev/urandom | base64`) and "
            "paste the same value in the webhook's Secret field on GitHub")
    return secret


def signature(secret: bytes, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for this body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class _TooLarge(Exception):
    pass


class GithubWebhook:
    """`POST /v1/hooks/github`. Public route (GitHub has no bearer token): the HMAC of the
    raw body is the authentication, so it is checked before anything in the body is read.
    `on_push` is awaited before answering, and GitHub gives up on a delivery after 10 s: it
    should enqueue the SHA, not fetch it."""

    def __init__(self, secret: bytes, branch: str,
                 on_push: Callable[[str], Awaitable[None]], *,
                 max_body: int = MAX_WEBHOOK_BODY) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise WebhookSecretError(f"GitHub webhook secret must be at least "
                                     f"{MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.branch = branch
        self.ref = f"refs/heads/{branch}"
        self._on_push = on_push
        self.max_body = max_body
        # Deliveries already acted on, by GitHub's delivery id and by the digest of the
        # signed body (the id header is not signed: a replay may change it).
        self._seen: OrderedDict[str, None] = OrderedDict()

    async def _read_body(self, request: web.Request) -> bytes:
        # Read the stream ourselves: request.read() obeys the app-wide client_max_size,
        # which the integrator sets for other routes, and a Content-Length can be absent.
        if request.content_length is not None and request.content_length > self.max_body:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(64 * 1024)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)

    # long: the webhook's checks in the order that keeps it cheap to attack: header, size,
    # signature, de-duplication, then the event; each refusal answers where it is found.
    async def handle(self, request: web.Request) -> web.Response:
        delivery = request.headers.get("X-GitHub-Delivery", "")[:64]
        event = request.headers.get("X-GitHub-Event", "")[:64]
        client = request.remote
        presented = request.headers.get("X-Hub-Signature-256")
        if presented is None or not SIGNATURE_RE.match(presented):
            # before a byte of the body is read: an unsigned request costs nothing
            log.warning("github.webhook.refused", delivery=delivery, client=client,
                        gh_event=event, reason="no well-formed X-Hub-Signature-256 header")
            return ApiError(401, "unauthorized", "missing X-Hub-Signature-256; set a secret on "
                            "the GitHub webhook").response()
        try:
            body = await self._read_body(request)
        except _TooLarge:
            log.warning("github.webhook.too_large", delivery=delivery, client=client,
                        limit=self.max_body)
            return ApiError(413, "too_large", f"webhook bodies are limited to {self.max_body} "
                            "bytes").response()
        expected = signature(self._secret, body).encode()
        if not hmac.compare_digest(expected, presented.encode("utf-8", "replace")):
            log.warning("github.webhook.refused", delivery=delivery, client=client,
                        gh_event=event, reason="signature mismatch")
            return ApiError(401, "unauthorized", "X-Hub-Signature-256 does not match the body "
                            "and the configured secret").response()

        if event == "ping":
            log.info("github.webhook.ping", delivery=delivery, client=client)
            return web.json_response({"pong": True})
        if event != "push":
            return self._ignored(delivery, f"event {event or '(none)'!r} is not handled")

        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict):
            log.warning("github.webhook.bad_payload", delivery=delivery, client=client)
            return ApiError(400, "bad_request", "the push payload must be a JSON object "
                            "(content type application/json on the webhook)").response()
        ref = payload.get("ref")
        after = payload.get("after")
        if ref != self.ref:
            return self._ignored(delivery, f"push to {str(ref)[:200]!r}, not {self.ref!r}")
        if not isinstance(after, str) or not SHA_RE.match(after):
            log.warning("github.webhook.bad_payload", delivery=delivery, client=client,
                        reason="after is not a commit SHA")
            return ApiError(400, "bad_request",
                            "push payload without a commit SHA in `after`").response()
        if payload.get("deleted") or ZERO_SHA.match(after):
            return self._ignored(delivery, f"branch {self.branch!r} deleted")
        keys = [f"body:{hashlib.sha256(body).hexdigest()}"] + (
            [f"id:{delivery}"] if delivery else [])
        if any(k in self._seen for k in keys):
            log.info("github.webhook.duplicate", delivery=delivery, client=client, sha=after)
            return web.json_response({"duplicate": after}, status=200)

        try:
            await self._on_push(after)
        except Exception as exc:
            # Answer 500 so GitHub records a failed delivery that someone can redeliver.
            log.error("github.webhook.on_push_failed", delivery=delivery, sha=after,
                      error=f"{type(exc).__name__}: {exc}")
            return ApiError(500, "internal",
                            "the push was verified but could not be queued").response()
        for k in keys:  # remembered once acted on: a failed one may be redelivered
            self._seen[k] = None
        while len(self._seen) > SEEN_DELIVERIES:
            self._seen.popitem(last=False)
        log.info("github.webhook.push", delivery=delivery, client=client, sha=after,
                 ref=ref)
        return web.json_response({"accepted": after}, status=202)

    @staticmethod
    def _ignored(delivery: str, reason: str) -> web.Response:
        log.info("github.webhook.ignored", delivery=delivery, reason=reason)
        return web.json_response({"ignored": reason}, status=202)


# --- commit statuses ---------------------------------------------------------------------

@dataclass(frozen=True)
class ApiResult:
    """What happened to one API call, after retries. `error` is None on success."""

    ok: bool
    status: int | None  # last HTTP status, None when no answer came back
    attempts: int
    error: str | None = None
    data: Any = None


class GithubStatus:
    """Commit statuses on the SoT repository: the pipeline's verdict shows next to the
    commit on GitHub, and statuses set by others (CI, reviewers) can gate an approval."""

    def __init__(self, api_base: str, repo: str, token_file: str | Path,
                 context: str | None = None, *, site: str = "default",
                 timeout: float = 10.0, attempts: int = 4, backoff: float = 0.5) -> None:
        if not REPO_RE.match(repo):
            raise ValueError(f"GitHub repository must be 'owner/name', not {repo!r}")
        self.api_base = api_base.rstrip("/")
        self.repo = repo
        self.token_file = Path(token_file)
        self.context = context or f"vaquero/{site}"
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.attempts = max(1, attempts)
        self.backoff = backoff

    def _token(self) -> str:
        # Read on every call so a rotated token takes effect without a restart.
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise _NoToken(f"cannot read GitHub token file {self.token_file}: "
                           f"{exc.strerror}") from None
        if not token:
            raise _NoToken(f"GitHub token file {self.token_file} is empty")
        return token

    async def _call(self, method: str, path: str, body: dict | None = None) -> ApiResult:
        """One API call with retries on 5xx and network errors only: a 4xx (bad token,
        unknown SHA, validation) will not get better by asking again."""
        try:
            token = self._token()
        except _NoToken as exc:
            log.error("github.api.no_token", path=path, error=str(exc))
            return ApiResult(False, None, 0, str(exc))
        headers = {"Authorization": f"Bearer {token}",
                   "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": "2022-11-28",
                   "User-Agent": "vaquero"}
        url = self.api_base + path
        status: int | None = None
        error = ""
        attempt = 0
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            for attempt in range(1, self.attempts + 1):
                try:
                    async with session.request(method, url, json=body, headers=headers) as resp:
                        status = resp.status
                        text = await resp.text(errors="replace")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = None
                    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                else:
                    data = _json_or_none(text)
                    if status < 300:
                        return ApiResult(True, status, attempt, None, data)
                    message = data.get("message") if isinstance(data, dict) else None
                    error = f"HTTP {status}: {str(message or text)[:200]}"
                    if status < 500:
                        break
                if attempt < self.attempts:
                    log.warning("github.api.retry", method=method, path=path,
                                attempt=attempt, error=error)
                    await asyncio.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))
        log.error("github.api.failed", method=method, path=path, status=status,
                  attempts=attempt, error=error)
        return ApiResult(False, status, attempt, error)

    async def report(self, sha: str, state: State, description: str,
                     target_url: str | None = None) -> ApiResult:
        """Set this peer's status on a commit. Never raises: the result says what happened."""
        if not SHA_RE.match(sha):
            return ApiResult(False, None, 0, f"not a full commit SHA: {sha[:80]!r}")
        if state not in STATES:
            return ApiResult(False, None, 0, f"state must be one of {sorted(STATES)}")
        if len(description) > DESCRIPTION_MAX:
            description = description[:DESCRIPTION_MAX - 1] + "…"
        body: dict[str, str] = {"state": state, "description": description,
                                  "context": self.context}
        if target_url is not None:
            body["target_url"] = target_url
        result = await self._call("POST", f"/repos/{self.repo}/statuses/{sha}", body)
        if result.ok:
            log.info("github.status.reported", sha=sha, state=state, context=self.context)
        return result

    async def required_contexts_ok(self, sha: str,
                                   contexts: Iterable[str]) -> tuple[bool, list[str]]:
        """Whether every required context is `success` on the commit's combined status.
        When GitHub cannot be asked, every context counts as missing: the gate stays shut."""
        wanted = list(dict.fromkeys(contexts))
        if not SHA_RE.match(sha):
            return False, wanted
        result = await self._call("GET", f"/repos/{self.repo}/commits/{sha}/status"
                                    "?per_page=100")
        if not result.ok or not isinstance(result.data, dict):
            return False, wanted
        states = {s.get("context"): s.get("state")
                  for s in result.data.get("statuses") or [] if isinstance(s, dict)}
        missing = [c for c in wanted if states.get(c) != "success"]
        return not missing, missing


class _NoToken(Exception):
    pass


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
