"""A peer as the SoT's git remote, for air-gapped sites: `git push` to a peer, no GitHub.

Smart HTTP at `/git/sot.git` on the peer's HTTP port, on dulwich's protocol handlers. What
dulwich's own aiohttp server lacks is added here: authentication (HTTP basic or bearer, any
user name, the password one of the peer's API tokens: `read` tokens may fetch, `admin`
tokens may push), a limit on the size of a push, and a callback after each accepted push so
the peer's poller fetches at once. A push is only stored: the revision pipeline judges the
commit like any other, and nothing reaches a machine before it is approved.

Nothing is held whole in memory: the protocol handler runs in a thread on one end of a
socket pair, the request body is streamed into the other end (counted against the limit)
and its output streamed back to the client, so a 200 MB push or clone costs socket buffers,
not 200 MB (dulwich spools a received pack to a temporary file). Every ref a push changes
is reported with its old and new SHA, whether it was forced (history rewritten) or deleted,
and the token's name, for the replicated journal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import Awaitable, Callable
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import structlog
from aiohttp import web
from dulwich.errors import HangupException
from dulwich.graph import can_fast_forward
from dulwich.objects import ObjectID
from dulwich.protocol import ReceivableProtocol
from dulwich.refs import Ref
from dulwich.repo import Repo
from dulwich.server import DEFAULT_HANDLERS, BackendRepo, DictBackend

from appliance.tokens import ApiToken, match_token

log = structlog.get_logger("vaquero.source.remote")

PREFIX = "/git/sot.git"
MAX_PUSH = 256 << 20
MAX_NEGOTIATION = 8 << 20  # a fetch's wants and haves; its answer (the pack) is streamed
MAX_CLONES = 4  # fetches served at once: each holds a thread and dulwich's object walk
ZERO_SHA = "0" * 40
CHUNK = 1 << 16
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


class _TooLarge(Exception):
    pass


RefChange = dict[str, Any]  # ref, old, new, forced, deleted, created


class GitRemote:
    """`on_refs(changes, token_name, client)` is called (on the loop) after every push that
    changed refs, before `on_push`: the peer journals it (replicated)."""

    def __init__(self, path: Path, tokens: list[ApiToken],
                 on_push: Callable[[], Awaitable[None]] | None = None,
                 max_body: int = MAX_PUSH, branch: str = "main",
                 on_refs: Callable[[list[RefChange], str, str], None] | None = None) -> None:
        self.path = path
        self.repo = open_remote(path, branch)
        self.tokens = tokens
        self.on_push = on_push
        self.on_refs = on_refs
        self.max_body = max_body
        self._lock = asyncio.Lock()  # one receive-pack at a time: ref updates stay ordered
        self._clones = asyncio.Semaphore(MAX_CLONES)

    def _authorise(self, request: web.Request, service: str) -> ApiToken:
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
        return token

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
        token = self._authorise(request, service)
        limit = self.max_body if service == RECEIVE else MAX_NEGOTIATION
        if (request.content_length or 0) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit,
                                                actual_size=request.content_length or 0)
        if service == RECEIVE:
            async with self._lock:
                before = dict(self.repo.get_refs())
                response = await self._run(request, service, limit)
                after = dict(self.repo.get_refs())
                changes = await asyncio.to_thread(self._describe, before, after)
            log.info("git.push", client=request.remote, token=token.name, refs=changes)
            if changes:
                if self.on_refs is not None:
                    self.on_refs(changes, token.name, request.remote or "?")
                if self.on_push is not None:
                    await self.on_push()
            return response
        async with self._clones:
            return await self._run(request, service, limit)

    async def _run(self, request: web.Request, service: str, limit: int
                   ) -> web.StreamResponse:
        """Run the protocol handler in a thread on one end of a socket pair; stream the body
        into the other end and the handler's output out to the client."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        response = web.StreamResponse(headers={
            "Content-Type": f"application/x-{service}-result", **NO_CACHE})

        def handle() -> None:
            try:
                proto = ReceivableProtocol(theirs.recv, theirs.sendall)
                with contextlib.suppress(HangupException, OSError):  # the client went away
                    self._handler(service, proto, advertise=False).handle()  # type: ignore[attr-defined]
            finally:
                with contextlib.suppress(OSError):
                    theirs.shutdown(socket.SHUT_WR)

        async def feed() -> None:
            size = 0
            async for chunk in request.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _TooLarge(size)
                await loop.sock_sendall(ours, chunk)
            ours.shutdown(socket.SHUT_WR)

        async def drain() -> None:
            while chunk := await loop.sock_recv(ours, CHUNK):
                if not response.prepared:
                    await response.prepare(request)
                await response.write(chunk)

        worker = asyncio.ensure_future(asyncio.to_thread(handle))
        feeder, drainer = asyncio.ensure_future(feed()), asyncio.ensure_future(drain())
        try:
            await asyncio.wait({feeder, drainer}, return_when=asyncio.FIRST_EXCEPTION)
            if feeder.done() and isinstance(feeder.exception(), _TooLarge):
                log.warning("git.too_large", service=service, client=request.remote,
                            limit=limit)
                if response.prepared:  # the status is sent: cut the stream short instead
                    raise ConnectionResetError("request body over the limit")
                raise web.HTTPRequestEntityTooLarge(max_size=limit,
                                                    actual_size=int(str(feeder.exception())))
            await drainer
            await feeder
        finally:
            for task in (feeder, drainer):
                task.cancel()
            ours.close()  # the handler sees the end of its input and returns
            await asyncio.gather(worker, feeder, drainer, return_exceptions=True)
            theirs.close()
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
        return response

    def _describe(self, before: dict[Ref, ObjectID], after: dict[Ref, ObjectID]
                  ) -> list[RefChange]:
        """What a push changed, ref by ref; `forced`: the old commit is not an ancestor of
        the new one (history was rewritten)."""
        changes = []
        for ref in sorted(set(before) | set(after)):
            old, new = before.get(ref), after.get(ref)
            if old == new or ref == b"HEAD":
                continue
            forced = False
            if old is not None and new is not None:
                try:
                    forced = not can_fast_forward(self.repo, old, new)
                except KeyError:
                    forced = True
            changes.append({"ref": ref.decode(errors="replace"),
                            "old": old.decode() if old else ZERO_SHA,
                            "new": new.decode() if new else ZERO_SHA,
                            "forced": forced, "deleted": new is None, "created": old is None})
        return changes

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/info/refs", self.info_refs)
        app.router.add_post(PREFIX + "/{service:git-upload-pack|git-receive-pack}",
                            self.service)
