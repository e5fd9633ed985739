"""A peer as the SoT's git remote, for air-gapped sites: `git push` to a peer, no GitHub.

Smart HTTP at `/git/sot.git` on the peer's HTTP port, on dulwich's protocol handlers. What
dulwich's own aiohttp server lacks is added here: authentication (HTTP basic or bearer, any
user name, the password one of the peer's API tokens: `read` tokens may fetch, `admin`
tokens may push), a limit on the size of a request body, and a callback after each accepted
push so the peer's poller fetches at once. A push is only stored: the revision pipeline
judges the commit like any other, and nothing reaches a machine before it is approved.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Awaitable, Callable
from io import BytesIO
from pathlib import Path
from typing import cast

import structlog
from aiohttp import web
from dulwich.errors import HangupException
from dulwich.protocol import ReceivableProtocol
from dulwich.refs import Ref
from dulwich.repo import Repo
from dulwich.server import DEFAULT_HANDLERS, BackendRepo, DictBackend

from appliance.tokens import ApiToken, match_token

log = structlog.get_logger("vaquero.source.remote")

PREFIX = "/git/sot.git"
MAX_PUSH = 256 << 20
NO_CACHE = {"Expires": "Fri, 01 Jan 1980 00:00:00 GMT", "Pragma": "no-cache",
            "Cache-Control": "no-cache, max-age=0, must-revalidate"}
UPLOAD, RECEIVE = "git-upload-pack", "git-receive-pack"


def open_remote(path: Path, branch: str = "main") -> Repo:
    """The peer's bare repository (created on first use), its HEAD on the followed branch so
    a clone checks that branch out."""
    if not (path / "objects").is_dir():
        path.mkdir(parents=True, exist_ok=True)
        repo = Repo.init_bare(str(path))
        repo.refs.set_symbolic_ref(Ref(b"HEAD"), Ref(f"refs/heads/{branch}".encode()))
        return repo
    return Repo(str(path))


class GitRemote:
    def __init__(self, path: Path, tokens: list[ApiToken],
                 on_push: Callable[[], Awaitable[None]] | None = None,
                 max_body: int = MAX_PUSH, branch: str = "main") -> None:
        self.path = path
        self.repo = open_remote(path, branch)
        self.tokens = tokens
        self.on_push = on_push
        self.max_body = max_body
        self._lock = asyncio.Lock()  # one receive-pack at a time: ref updates stay ordered

    def _authorise(self, request: web.Request, service: str) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        secret = b""
        if scheme.lower() == "basic":
            try:
                secret = base64.b64decode(value.strip()).partition(b":")[2]
            except ValueError:
                secret = b""
        elif scheme.lower() == "bearer":
            secret = value.strip().encode()
        token = match_token(self.tokens, secret) if secret else None
        challenge = {"WWW-Authenticate": 'Basic realm="vaquero sot"'}
        if token is None:
            if header:
                log.warning("git.auth_refused", service=service, client=request.remote)
            raise web.HTTPUnauthorized(text="a token is needed (any user name, the token as "
                                       "password)\n", headers=challenge)
        if service == RECEIVE and token.role != "admin":
            log.warning("git.push_forbidden", token=token.name, client=request.remote)
            raise web.HTTPForbidden(text=f"token {token.name!r} may fetch, not push\n")

    def _handler(self, service: str, proto: ReceivableProtocol, advertise: bool) -> object:
        handler_cls = DEFAULT_HANDLERS[service.encode()]
        return handler_cls(DictBackend({b".": cast(BackendRepo, self.repo)}), [b"."], proto,
                           stateless_rpc=True, advertise_refs=advertise)

    async def info_refs(self, request: web.Request) -> web.StreamResponse:
        service = request.query.get("service", "")
        if service not in (UPLOAD, RECEIVE):
            raise web.HTTPForbidden(text="only the smart HTTP protocol is served\n")
        self._authorise(request, service)
        out = BytesIO()
        proto = ReceivableProtocol(BytesIO().read, out.write)
        handler = self._handler(service, proto, advertise=True)
        proto.write_pkt_line(b"# service=" + service.encode() + b"\n")
        proto.write_pkt_line(None)
        await asyncio.to_thread(handler.handle)  # type: ignore[attr-defined]
        return web.Response(body=out.getvalue(), headers={
            "Content-Type": f"application/x-{service}-advertisement", **NO_CACHE})

    async def service(self, request: web.Request) -> web.StreamResponse:
        service = request.match_info["service"]
        self._authorise(request, service)
        if (request.content_length or 0) > self.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body,
                                                actual_size=request.content_length or 0)
        body = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > self.max_body:
                raise web.HTTPRequestEntityTooLarge(max_size=self.max_body,
                                                    actual_size=len(body))
        inf, outf = BytesIO(bytes(body)), BytesIO()

        def handle() -> None:
            proto = ReceivableProtocol(inf.read, outf.write)
            with contextlib.suppress(HangupException):  # the client went away
                self._handler(service, proto, advertise=False).handle()  # type: ignore[attr-defined]

        if service == RECEIVE:
            async with self._lock:
                before = dict(self.repo.get_refs())
                await asyncio.to_thread(handle)
                after = dict(self.repo.get_refs())
            changed = {k.decode(): v.decode() for k, v in after.items() if before.get(k) != v}
            log.info("git.push", client=request.remote, refs=changed)
            if changed and self.on_push is not None:
                await self.on_push()
        else:
            await asyncio.to_thread(handle)
        return web.Response(body=outf.getvalue(), headers={
            "Content-Type": f"application/x-{service}-result", **NO_CACHE})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/info/refs", self.info_refs)
        app.router.add_post(PREFIX + "/{service:git-upload-pack|git-receive-pack}",
                            self.service)
