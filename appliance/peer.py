"""One peer process: the data plane (DHCP, TFTP, HTTP boot) serving an applied revision.

Until the peer group feeds it, the revision comes from the config (a SoT directory or a git
revision). The revision is compiled in a worker thread; the boot table is swapped into the
servers whole, so a packet never waits on a compile.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog
from aiohttp import web

from appliance.config import PeerConfig
from appliance.netboot.artifacts import ArtifactCache
from appliance.netboot.boot_http import BootState, add_boot_routes
from appliance.netboot.boottable import BootTable, compile_boot_table
from appliance.netboot.dhcp_server import DhcpServer
from appliance.netboot.dhcp_table import compile_table
from appliance.netboot.progress import LocalProgress
from appliance.netboot.tftp import TftpServer
from appliance.sot.revision import Revision, compile_tree
from appliance.sot.tree import DirectoryTree, Tree

log = structlog.get_logger("vaquero.peer")


class PeerError(Exception):
    """A condition that stops the peer from starting, with what to do about it."""


def _tree(config: PeerConfig) -> Tree:
    if config.sot.path is not None:
        return DirectoryTree(config.sot.path)
    from appliance.source.gittree import GitTree, RevisionNotFound

    try:
        return GitTree(config.sot.git, config.sot.rev)  # type: ignore[arg-type]
    except RevisionNotFound as exc:
        raise PeerError(str(exc)) from None


def read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except FileNotFoundError:
        raise PeerError(
            f"{path} does not exist: it holds the key of the per-host phone-home tokens and must "
            f"be the same on every peer of the site. Create it once with "
            f"`head -c 32 /dev/urandom | base64 > {path}; chmod 600 {path}` and copy it to the "
            "other peers") from None
    if len(secret) < 16:
        raise PeerError(f"{path} holds {len(secret)} bytes: use at least 16 random bytes")
    return secret


class Peer:
    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.revision: Revision | None = None
        self.table: BootTable | None = None
        self.progress = LocalProgress(config.data_dir)
        self.artifacts: ArtifactCache | None = None
        self._prefetch: asyncio.Task[object] | None = None
        self._runner: web.AppRunner | None = None
        self._tftp: TftpServer | None = None
        self._dhcp: DhcpServer | None = None
        self.http_port = 0

    def _address(self, revision: Revision) -> str:
        if self.config.address is not None:
            return str(self.config.address)
        site = revision.sot.sites.get(self.config.site)
        peer = next((p for p in site.peers if p.name == self.config.peer), None) if site else None
        if peer is None:
            raise PeerError(f"peer {self.config.peer!r} is not listed in sites/{self.config.site}"
                            "/env.yml; add it there or set `address` in the peer config")
        return str(peer.address)

    async def load(self) -> BootTable:
        tree = _tree(self.config)
        revision = await asyncio.to_thread(compile_tree, tree)
        if not revision.valid:
            for problem in revision.problems[:20]:
                log.error("sot.problem", problem=str(problem))
            raise PeerError(f"revision {revision.sha[:12]} of {revision.source} is not valid "
                            f"({len(revision.problems)} problem(s)); refusing to serve it")
        secret = read_secret(self.config.token_secret_file)
        try:
            table = compile_boot_table(revision, self.config.site, self.config.interface,
                                       self._address(revision), secret)
        except ValueError as exc:
            raise PeerError(str(exc)) from None
        self.revision, self.table = revision, table
        log.info("revision.loaded", revision=revision.sha, source=revision.source,
                 hosts=len(table.hosts), site=self.config.site)
        return table

    async def _artifact(self, request: web.Request) -> web.StreamResponse:
        """The cache's handler, with the requesting host's name on its log lines: each
        request runs in its own task context, so the binding stays with this request."""
        assert self.artifacts is not None and self.table is not None
        host = self.table.by_ip.get(request.remote or "")
        if host is not None:
            structlog.contextvars.bind_contextvars(host=host)
        return await self.artifacts.handler(request)

    def _on_event(self, kind: str, **fields: object) -> None:
        log.info("event", kind=kind, **fields)

    async def start(self) -> None:
        try:
            await self._start()
        except OSError as exc:
            await self.stop()
            raise PeerError(f"cannot start the data plane: {exc.strerror or exc} "
                            f"({exc.__class__.__name__}); is another server on that port, or "
                            "is the boot interface missing?") from None

    async def _start(self) -> None:
        table = await self.load()
        cfg = self.config
        state = BootState(table, self.progress, list(cfg.tftp.roots), self._on_event)
        self.artifacts = ArtifactCache(cfg.data_dir / "artifacts")
        self.artifacts.register(table.artifacts())
        app = web.Application()
        add_boot_routes(app, state)
        app.router.add_get("/artifacts/{sha256}/{name}", self._artifact)
        app.router.add_get("/healthz", lambda _: web.json_response({"ok": True}))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.http_port = cfg.http.port or table.site.netboot.http_port
        await web.TCPSite(self._runner, cfg.http.listen, self.http_port).start()
        log.info("http.listening", address=cfg.http.listen, port=self.http_port)
        if cfg.tftp.enabled:
            self._tftp = TftpServer(cfg.tftp.roots, port=cfg.tftp.port, interface=cfg.interface)
            await self._tftp.start()
        if cfg.dhcp.enabled:
            dhcp_table = compile_table(table.dhcp, cfg.interface, table.sha)
            self._dhcp = DhcpServer(lambda: dhcp_table, cfg.interface,
                                    mode=table.site.netboot.dhcp_mode,
                                    on_event=self._on_event, port=cfg.dhcp.port,
                                    pxe_port=cfg.dhcp.proxy_port)
            await self._dhcp.start()
            log.info("dhcp.listening", interface=cfg.interface, mode=table.site.netboot.dhcp_mode,
                     reservations=len(table.dhcp.reservations))
        # Warm the cache so the first boot of a storm does not wait on the upstream mirror.
        self._prefetch = asyncio.create_task(
            self.artifacts.prefetch(a.sha256 for a in table.artifacts()))

    async def stop(self) -> None:
        if self._dhcp is not None:
            await self._dhcp.close()
            self._dhcp = None
        if self._tftp is not None:
            await self._tftp.close()
            self._tftp = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._prefetch is not None:
            self._prefetch.cancel()
            self._prefetch = None
        if self.artifacts is not None:
            await self.artifacts.close()
            self.artifacts = None


async def serve(config: PeerConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    structlog.contextvars.bind_contextvars(peer=config.peer, site=config.site)
    peer = Peer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await peer.start()
    log.info("peer.ready", revision=peer.revision.sha if peer.revision else None)
    try:
        await stop.wait()
    finally:
        log.info("peer.stopping")
        await peer.stop()
        peer.progress.close()
