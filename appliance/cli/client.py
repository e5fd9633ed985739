"""A small client for a running peer's REST API, for the `vaq-peer` commands.

Plain urllib, synchronous: a CLI command makes a handful of requests, one at a time, so an
event loop would buy nothing. Every failure becomes an ApiError whose exit code tells a
script what kind of failure it was (see EXIT_* below). The bearer token is sent in a header
and is never part of a message: error texts carry the URL, the status and the API's own
message only.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exits import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_NO_QUORUM,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)

# A peer's API is served on its boot HTTP port unless `api.port` says otherwise, and a site's
# `netboot.http_port` defaults to 80: on a peer with the defaults, the CLI needs no VAQ_PEER.
DEFAULT_PEER = "http://127.0.0.1"
NO_QUORUM_CODES = frozenset({"no_quorum", "no_leader"})


class ApiError(Exception):
    """A request that did not succeed, with the exit code a CLI command should return."""

    def __init__(self, message: str, exit_code: int, status: int = 0,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.status = status
        self.body = body or {}


def read_token(token_file: str | None) -> str | None:
    """--token-file, else $VAQ_TOKEN_FILE (a file holding the token), else $VAQ_TOKEN (the
    token itself). An unreadable file is a usage error (exit 2), and so is a VAQ_TOKEN that
    names a file: sending a path as the token would only earn a 401."""
    token_file = token_file or os.environ.get("VAQ_TOKEN_FILE", "").strip() or None
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ApiError(f"cannot read the token file {token_file}: {exc.strerror}",
                           EXIT_USAGE) from None
        if not token:
            raise ApiError(f"the token file {token_file} is empty", EXIT_USAGE)
        return token
    value = os.environ.get("VAQ_TOKEN", "").strip()
    if value.startswith(("/", "./", "~")) and Path(value).expanduser().is_file():
        raise ApiError(f"VAQ_TOKEN holds the token itself, and {value} is a file: use "
                       f"VAQ_TOKEN_FILE={value} (or --token-file {value})", EXIT_USAGE)
    return value or None


def peer_url(value: str | None) -> str:
    """--peer wins over VAQ_PEER, else the default (this machine, port 80); a bare host:port
    gets http://."""
    url = (value or os.environ.get("VAQ_PEER") or DEFAULT_PEER).strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiError(f"--peer {url!r} is not an http(s) URL", EXIT_USAGE)
    return url


@dataclass
class Probe:
    """One request that is allowed to fail (doctor): what came back and how long it took."""

    url: str
    status: int  # 0: no HTTP answer
    body: dict[str, Any]
    error: str | None
    sent: float  # wall clock when the request left
    received: float  # wall clock when the answer was read
    rtt: float  # monotonic seconds


def _reason(exc: BaseException) -> str:
    """What went wrong on the wire, in words (never with headers)."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
        if isinstance(exc, str):
            return exc
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"text": raw.decode(errors="replace")[:500]}
    return data if isinstance(data, dict) else {"value": data}


class PeerClient:
    """The API of one peer. `timeout` bounds connecting and each read."""

    def __init__(self, url: str, token: str | None, timeout: float = 10.0,
                 site: str | None = None) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.site = site  # another site's: the peer forwards every request to a peer of it

    def at(self, url: str) -> PeerClient:
        """The same credentials against another peer: to follow the leader for an action."""
        return PeerClient(url, self._token, self.timeout, self.site)

    @property
    def has_token(self) -> bool:
        """Whether a token was given (the doctor says so before the checks that need one)."""
        return bool(self._token)

    def __repr__(self) -> str:  # never show the token, also not in a traceback
        return f"PeerClient({self.url!r}, token={'set' if self._token else 'none'})"

    def _request(self, method: str, path: str, query: dict[str, Any] | None,
                 body: dict[str, Any] | None, token: bool) -> urllib.request.Request:
        url = self.url + path
        if self.site:
            query = {**(query or {}), "site": self.site}
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items()
                                                 if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token and self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        return req

    def call(self, method: str, path: str, *, query: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None, token: bool = True) -> dict[str, Any]:
        """One request; the parsed JSON answer, or ApiError."""
        req = self._request(method, path, query, body, token)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return _parse(resp.read())
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc.code, _parse(exc.read()), method, path) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(self._unreachable(exc), EXIT_UNREACHABLE) from None

    def _unreachable(self, exc: BaseException) -> str:
        text = f"peer {self.url} unreachable: {_reason(exc)}"
        if self.url == DEFAULT_PEER and not os.environ.get("VAQ_PEER"):
            text += (" (the default: no VAQ_PEER or --peer given; set VAQ_PEER to the peer's "
                     "api.url, e.g. VAQ_PEER=http://10.0.0.11:8443)")
        return text

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.call("GET", path, query=query or None)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", path, body=body)

    def _http_error(self, status: int, body: dict[str, Any], method: str,
                    path: str) -> ApiError:
        code = body.get("error", "")
        message = body.get("message") or body.get("text") or f"HTTP {status}"
        where = f"{method} {self.url}{path}"
        if status in (401, 403):
            hint = ""
            if status == 401 and not self._token:
                hint = (" (no token given: use --token-file FILE, or set VAQ_TOKEN_FILE to a "
                        "file holding it, or VAQ_TOKEN to the token itself)")
            return ApiError(f"{where}: refused ({status} {code}): {message}{hint}", EXIT_AUTH,
                            status, body)
        if status == 503 and code in NO_QUORUM_CODES:
            return ApiError(f"{where}: {message}.\nThis peer cannot reach a majority of the "
                            "group: reads still work on this peer; for writes, try another "
                            "peer (--peer URL).", EXIT_NO_QUORUM, status, body)
        if status == 404:
            return ApiError(f"{message}", EXIT_FAILED, status, body)
        if status == 400:
            return ApiError(f"{where}: {message}", EXIT_USAGE, status, body)
        return ApiError(f"{where}: {status} {code or 'error'}: {message}", EXIT_FAILED, status,
                        body)

    def stream(self, path: str, query: dict[str, Any], read_timeout: float
               ) -> Iterator[dict[str, Any]]:
        """Newline-delimited JSON, one object per line, as it arrives. Blank lines are the
        server's keep-alives and are skipped; `read_timeout` must exceed their period."""
        req = self._request("GET", path, query, None, True)
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc.code, _parse(exc.read()), "GET", path) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(self._unreachable(exc), EXIT_UNREACHABLE) from None
        with resp:
            if resp.fp is not None and hasattr(resp.fp, "raw"):
                # urlopen's timeout covered the connect; a quiet stream may wait longer.
                sock = getattr(resp.fp.raw, "_sock", None)
                if sock is not None:
                    sock.settimeout(read_timeout)
            while True:
                try:
                    line = resp.readline()
                except (OSError, ValueError) as exc:
                    raise ApiError(f"peer {self.url}: the event stream broke: {_reason(exc)}",
                                   EXIT_UNREACHABLE) from None
                if not line:
                    return
                if line.strip():
                    yield _parse(line)

    def probe(self, path: str, *, base: str | None = None, token: bool = False,
              timeout: float | None = None) -> Probe:
        """A GET that reports failure instead of raising, timed for clock-skew estimates."""
        client = self if base is None else PeerClient(base, self._token, self.timeout)
        req = client._request("GET", path, None, None, token)
        sent, start = time.time(), time.monotonic()
        status, body, error = 0, {}, None
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                status, body = resp.status, _parse(resp.read())
        except urllib.error.HTTPError as exc:
            status, body = exc.code, _parse(exc.read())
            error = body.get("message") or f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            error = _reason(exc)
        return Probe(client.url + path, status, body, error, sent, time.time(),
                     time.monotonic() - start)
