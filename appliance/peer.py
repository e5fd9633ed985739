"""One peer process: Raft, the REST API and the data plane (DHCP, TFTP, HTTP boot).

Start order matters: the Raft node first (its port proves we are the only peer of that
address), then the revision (compiled in a worker thread), then the servers. The data plane
reads only the boot table and local state: a peer cut off from the majority keeps booting
machines and queues what it learns (phone-homes, unknown machines) in an outbox that is
replicated when the group is reachable again.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from appliance import __version__, revalidate
from appliance.api.app import make_api_app
from appliance.api.auth import ApiToken, load_tokens
from appliance.api.context import ApiContext
from appliance.api.read_model import PeerReadModel, PowerActions
from appliance.cluster import Cluster, ClusterSettings
from appliance.cluster import commands as raft_commands
from appliance.cluster.data_plane_events import DataPlaneEvents
from appliance.cluster.outbox import EventOutbox
from appliance.cluster.records import HostRecord
from appliance.config import PeerConfig
from appliance.errors import StartupError
from appliance.host_archive import HostArchive
from appliance.netboot import rogue_dhcp
from appliance.netboot.artifacts import ArtifactCache
from appliance.netboot.boot_front import BootFrontServer
from appliance.netboot.boot_http import BootState, add_boot_routes
from appliance.netboot.boottable import BootTable, compile_boot_table
from appliance.netboot.dhcp_server import DhcpServer
from appliance.netboot.dhcp_table import compile_table
from appliance.netboot.evidence import BootEvidence
from appliance.netboot.progress import LocalProgress, ReplicatedProgress
from appliance.netboot.tftp import TftpServer
from appliance.power.manager import PowerManager
from appliance.sot.revision import Revision, RevisionCache, compile_tree
from appliance.sot.revision_store import RevisionStore
from appliance.sot.tree import DirectoryTree, Tree
from appliance.source.gittree import GitTree, RevisionNotFound

if TYPE_CHECKING:
    from appliance.federation.service import FederationService
    from appliance.power.console import ConsoleRecorder
    from appliance.source.follow import SourceFollower
    from appliance.source.remote import GitRemote
    from appliance.workflow import WorkflowEngine

log = structlog.get_logger("vaquero.peer")
# Host states in which a machine runs one of its stages (powered on for it): its console is
# worth recording. Not while it is being powered: a BMC attaches SOL to a running machine.
STAGE_STATES = frozenset({"booting", "waiting", "checking"})


class PeerError(StartupError):
    """A condition that stops the peer from starting, with what to do about it. `start`
    raises only this: any other StartupError (config, secrets, keys) becomes one."""


def _tree(config: PeerConfig) -> Tree:
    assert config.sot is not None
    if config.sot.path is not None:
        return DirectoryTree(config.sot.path)
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
    """The wiring of one peer: what to start, in which order, and what each part is handed.
    What the API shows is in `api.read_model`, what the data plane tells the group in
    `cluster.data_plane_events`; each part counts its own metrics."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.revision: Revision | None = None
        self.table: BootTable | None = None
        self.local_progress = LocalProgress(config.data_dir)
        self.progress = ReplicatedProgress(self._host_record, self.local_progress)
        self.cluster: Cluster | None = None
        self.outbox: EventOutbox | None = None
        self.evidence: BootEvidence | None = None
        self.artifacts: ArtifactCache | None = None
        self.boot_state: BootState | None = None
        self.revisions = RevisionCache()
        self.follower: SourceFollower | None = None  # following a git remote (`source:`)
        self.power: PowerManager | None = None  # when the config names BMC secrets
        self.git_remote: GitRemote | None = None  # when `remote.enabled`
        self.engine: WorkflowEngine | None = None  # following a git remote
        self.consoles: ConsoleRecorder | None = None  # with BMCs and `console.enabled`
        self.history = HostArchive(config.data_dir / "hosts", config.history.max_events_per_host,
                                   config.history.max_age_days)
        self.federation: FederationService | None = None
        self.events = DataPlaneEvents()  # replicated once the cluster runs (outbox)
        self.view = PeerReadModel(config, lambda: self.table, self.progress,
                                  self.local_progress, lambda: self.http_port,
                                  lambda: self.follower.info() if self.follower else None)
        self._candidate: Revision | None = None  # judged by before any revision is applied
        self._tasks: list[asyncio.Task[object]] = []
        self._runner: web.AppRunner | None = None
        self._front: BootFrontServer | None = None
        self._tftp: TftpServer | None = None
        self._dhcp: DhcpServer | None = None
        self.http_port = 0

    def _host_record(self, name: str) -> HostRecord | None:
        cluster = self.cluster
        try:
            return cluster.host(name) if cluster is not None else None
        except Exception:  # the node is stopping: local records only
            return None

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
        """The configured revision's table: from the compiled copy on disk when there is a
        sound one (checked again in the background), else compiled now and then stored."""
        tree = _tree(self.config)
        store = RevisionStore(self.config.data_dir / "revisions")
        cached = await asyncio.to_thread(store.load, tree.revision_id)
        if cached is not None and cached[0].valid:
            assert self.config.sot is not None

            async def install(revision: Revision) -> None:
                await self._install(self._table_for(revision))

            self._tasks.append(asyncio.create_task(revalidate.confirm(
                self.config.sot, cached[0], cached[1], store, install), name="revalidate"))
            return self._table_for(cached[0])
        revision = await asyncio.to_thread(compile_tree, tree)
        if revision.valid:
            self._tasks.append(asyncio.create_task(asyncio.to_thread(store.save, revision),
                                                   name="store-revision"))
        return self._table_for(revision)

    def _table_for(self, revision: Revision) -> BootTable:
        if not revision.valid:
            for problem in revision.problems[:20]:
                log.error("sot.problem", problem=str(problem))
            raise PeerError(f"revision {revision.sha[:12]} of {revision.source} is not valid "
                            f"({len(revision.problems)} problem(s)); refusing to serve it")
        secret = read_secret(self.config.token_secret_file)
        try:
            table = compile_boot_table(revision, self.config.site, self.config.interface,
                                       self._address(revision), secret,
                                       http_port=self.config.http.port)
        except ValueError as exc:
            raise PeerError(str(exc)) from None
        log.info("revision.loaded", revision=revision.sha, source=revision.source,
                 hosts=len(table.hosts), site=self.config.site)
        return table

    async def _install(self, table: BootTable) -> None:
        """Serve `table` from now on: one reference swap per server, no packet waits."""
        cfg, old = self.config, self.table
        assert self.boot_state is not None and self.artifacts is not None
        self.revision, self.table = table.revision, table
        self.boot_state.table = table
        # Hosts still booting the previous revision may ask for its artifacts.
        self.artifacts.register([*table.artifacts(), *(old.artifacts() if old else [])])
        if cfg.dhcp.enabled:
            dhcp_table = await asyncio.to_thread(compile_table, table.dhcp, cfg.interface,
                                                 table.sha)  # ~0.4 s per 10,000 hosts
            mode = table.site.netboot.dhcp_mode
            if self._dhcp is not None and self._dhcp.mode != mode:
                await self._dhcp.close()
                self._dhcp = None
            if self._dhcp is None:
                self._dhcp = DhcpServer(lambda: dhcp_table, cfg.interface, mode=mode,
                                        on_event=self.events, port=cfg.dhcp.port,
                                        pxe_port=cfg.dhcp.proxy_port)
                await self._dhcp.start()
                log.info("dhcp.listening", interface=cfg.interface, mode=mode,
                         reservations=len(table.dhcp.reservations))
            else:
                self._dhcp.swap_table(dhcp_table)
        if cfg.prefetch_artifacts:  # a boot storm should not wait on the upstream mirror
            self._tasks.append(asyncio.create_task(
                self.artifacts.prefetch(a.sha256 for a in table.artifacts()), name="prefetch"))
        log.info("revision.serving", revision=table.sha, hosts=len(table.hosts),
                 previous=old.sha if old else None)

    async def _rollout_progress(self, sha: str) -> dict[str, Any]:
        assert self.engine is not None and self.cluster is not None
        progress = await self.engine.progress(sha)
        return {"rollout": self.cluster.rollout(sha), **progress.to_json()}

    async def _watch_consoles(self) -> None:
        """The leader records the SOL console of every host in a stage (a BMC serves one
        SOL session: only the peer that drives the machines holds it)."""
        from appliance.power.console import SolTarget
        from appliance.power.manager import NoBmc, target_for
        from appliance.power.secrets import SecretsError

        assert self.consoles is not None
        consoles = self.consoles
        while True:
            wanted: dict[str, SolTarget] = {}
            cluster, table, power = self.cluster, self.table, self.power
            secrets = power.secrets if power is not None else None
            if (cluster is not None and table is not None and secrets is not None
                    and cluster.status.is_leader):
                for record in cluster.hosts():
                    entry = table.hosts.get(record.get("name", ""))
                    if entry is None or record.get("state") not in STAGE_STATES:
                        continue
                    try:
                        target = target_for(entry)
                        creds = secrets.lookup(target.credentials)
                    except (NoBmc, SecretsError):
                        continue
                    if target.type == "ipmi":
                        run = (int(record.get("stage") or 0), int(record.get("attempt") or 0))
                        wanted[entry.host.name] = SolTarget(target.address, target.port or 623,
                                                            creds.user, creds.password, run)
            await asyncio.to_thread(consoles.want, wanted)
            await asyncio.sleep(1)

    async def _announce(self) -> None:
        """Keep this peer's name and API URL in the replicated peer list, so operators and
        `vaq-peer doctor` can reach every peer. Re-checked: the leader's first
        reconciliation of the list may race with the first announcement."""
        assert self.cluster is not None and self.outbox is not None
        me = self.config.raft.address
        while True:
            url = self.view.api_url()  # the boot address is known once a revision is served
            mine = next((p for p in self.cluster.peers() if p["address"] == me), None)
            if mine is None or mine.get("api_url") != url or mine.get("name") != self.config.peer:
                self.outbox.put_command(raft_commands.build(
                    "peer.add", time.time(), address=me, name=self.config.peer, api_url=url))
            await asyncio.sleep(5)

    def _metrics(self) -> dict[str, Callable[[], dict[str, float]]]:
        """Each part's own metrics, by prefix, read at scrape time (absent parts: none)."""
        def of(*parts: Callable[[], Any]) -> Callable[[], dict[str, float]]:
            def read() -> dict[str, float]:
                out: dict[str, float] = {}
                for part in parts:
                    if (component := part()) is not None:
                        out.update(component.metrics())
                return out
            return read

        return {"boot": of(lambda: self.boot_state, lambda: self.evidence),
                "outbox": of(lambda: self.outbox), "dhcp": of(lambda: self._dhcp),
                "source": of(lambda: self.follower), "federation": of(lambda: self.federation),
                "workflow": of(lambda: self.engine), "tftp": of(lambda: self._tftp),
                "artifacts": of(lambda: self.artifacts), "http": of(lambda: self._front)}

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything or nothing: whatever fails, what was started is stopped again
        (a Raft node left running would hold its port and confuse its group)."""
        try:
            await self._start()
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, PeerError):
                raise
            if isinstance(exc, StartupError):  # written for the operator: no traceback
                raise PeerError(str(exc)) from None
            if isinstance(exc, OSError):
                raise PeerError(f"cannot start: {exc.strerror or exc} "
                                f"({exc.__class__.__name__}); is another server on that "
                                "port, or is the boot interface missing?") from None
            if isinstance(exc, Exception):
                log.exception("peer.start_failed")
                raise PeerError(f"cannot start: {exc}") from None
            raise

    async def _start(self) -> None:
        """Raft first (its port proves this is the only peer of that address), then the
        parts the data plane needs, the revision, and last the servers."""
        tokens = load_tokens((t.name, t.role, t.file) for t in self.config.api.tokens)
        await self._start_cluster()
        self._start_parts(tokens)
        await self._start_revisions()
        self._start_federation()
        await self._serve_http(tokens)
        await self._serve_boot_network()
        self._tasks.append(asyncio.create_task(self._announce(), name="announce"))
        if not tokens:
            log.warning("api.no_tokens", hint="the API refuses every request without a token; "
                        "add api.tokens to the config (`vaq-peer init` writes one)")

    async def _start_cluster(self) -> None:
        """The Raft node, the outbox the data plane writes through, the hosts' archive."""
        cfg = self.config
        peers = tuple(cfg.raft.peers) or (cfg.raft.address,)
        self.cluster = Cluster(ClusterSettings(
            self_address=cfg.raft.address, peers=peers, data_dir=cfg.data_dir / "raft",
            password_file=cfg.raft.password_file))
        await self.cluster.start()
        self.outbox = EventOutbox(self.cluster)
        self._tasks.append(asyncio.create_task(self.outbox.run(), name="outbox"))
        self.evidence = BootEvidence(self._host_record, self.outbox.put_command)
        self.events.outbox, self.events.served = self.outbox, self.evidence.served
        log.info("raft.started", address=cfg.raft.address, peers=list(peers))
        self._tasks.append(asyncio.create_task(
            self.history.follow(self.cluster, self.view.host_names), name="history"))

    def _start_parts(self, tokens: list[ApiToken]) -> None:
        """What serves before any revision: boot state, artifact cache, the git remote, the
        power manager and the console recorder (each only when configured)."""
        cfg = self.config
        self.boot_state = BootState(None, self.progress, list(cfg.tftp.roots), self.events)
        self.artifacts = ArtifactCache(cfg.data_dir / "artifacts")
        if cfg.remote.enabled:
            from appliance.source.remote import GitRemote

            async def pushed() -> None:
                if self.follower is not None:
                    self.follower.trigger()  # fetch what was just pushed, now

            self.git_remote = GitRemote(cfg.data_dir / "remote.git", tokens, pushed,
                                        max_body=cfg.remote.max_push_mb << 20,
                                        branch=cfg.source.ref if cfg.source else "main",
                                        on_refs=self.events.ref_changes)
        if cfg.bmc.secrets_file is not None:
            self.power = PowerManager(cfg.bmc.secrets_file, cfg.bmc.max_sessions)
            if cfg.console.enabled:
                from appliance.power.console import ConsoleRecorder

                self.consoles = ConsoleRecorder(cfg.data_dir / "consoles",
                                                cfg.console.max_bytes, cfg.console.keep)
                self._tasks.append(asyncio.create_task(self._watch_consoles(),
                                                       name="consoles"))

    async def _start_revisions(self) -> None:
        """A fixed revision, served at once; or follow a git remote and serve what the
        group applies (503 until then), with the workflow engine."""
        cfg = self.config
        assert self.cluster is not None and self.outbox is not None
        if cfg.sot is not None:
            await self._install(await self.load())
            return
        from appliance.source.follow import SourceFollower
        from appliance.workflow import WorkflowEngine

        async def install(revision: Revision) -> None:
            await self._install(self._table_for(revision))

        self.follower = SourceFollower(cfg, self.cluster, self.outbox, self.revisions,
                                       install, lambda: self.table.sha if self.table
                                       else None)
        self._tasks += self.follower.start()
        self.engine = WorkflowEngine(
            self.cluster, cfg.site, self.follower.tree_for, self.revisions, self.power,
            runner_options={"evidence_window": cfg.workflow.evidence_window,
                            "silence_window": cfg.workflow.silence_window})
        self._tasks.append(asyncio.create_task(self.engine.run(), name="workflow"))

    async def _serve_http(self, tokens: list[ApiToken]) -> None:
        """One aiohttp application: the API and the boot endpoints, on the boot HTTP port
        and (when `api.port` differs) on the API's own."""
        cfg, view = self.config, self.view
        assert self.cluster is not None
        power = PowerActions(self.cluster, self.power, lambda: self.table) if self.power else None
        context = ApiContext(cfg.peer, cfg.site, __version__, self.cluster,
                             federation=self.federation,
                             metrics=self._metrics(), host_facts=view.host_facts,
                             sites=view.sites, boot=view.boot_info, power=power,
                             rollout_progress=self._rollout_progress if self.engine else None,
                             local_done=view.local_done, host_events=self.history.read,
                             console_runs=self.consoles.runs if self.consoles else lambda _: None)
        extra = self.follower.routes if self.follower else []

        def boot_routes(app: web.Application) -> None:
            assert self.boot_state is not None
            add_boot_routes(app, self.boot_state)
            app.router.add_get("/artifacts/{sha256}/{name}", self._artifact)
            for path, handler in extra:
                app.router.add_post(path, handler)
            if self.git_remote is not None:
                self.git_remote.add_routes(app)

        app = make_api_app(context, tokens, boot_routes)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.http_port = cfg.http.port or (self.table.site.netboot.http_port if self.table
                                           else 80)
        # The boot port: the boot chain's plain requests answered by the lean front, every
        # other request (the API, artifacts) by the application (netboot/boot_front.py).
        server = self._runner.server
        assert server is not None, "AppRunner.setup() creates the server"
        assert self.boot_state is not None, "_start_parts runs before _serve_http"
        self._front = BootFrontServer(self.boot_state, server)
        await self._front.start(cfg.http.listen, self.http_port)
        log.info("http.listening", address=cfg.http.listen, port=self.http_port,
                 serves="boot" + ("" if cfg.api.port else " and API"))
        if cfg.api.port and cfg.api.port != self.http_port:
            await web.TCPSite(self._runner, cfg.api.listen, cfg.api.port).start()
            log.info("api.listening", address=cfg.api.listen, port=cfg.api.port,
                     tokens=[t.name for t in tokens])

    async def _serve_boot_network(self) -> None:
        """TFTP, and the watch for another DHCP server where ours serve (journalled now and
        then). DHCP itself starts with the first revision installed (`_install`)."""
        cfg = self.config
        if cfg.tftp.enabled:
            self._tftp = TftpServer(cfg.tftp.roots, port=cfg.tftp.port, interface=cfg.interface)
            await self._tftp.start()
        if cfg.dhcp.enabled:
            self._tasks.append(asyncio.create_task(rogue_dhcp.watch(
                cfg.interface, lambda: self.table is None
                or self.table.site.netboot.dhcp_mode == "proxy", self.events), name="rogue"))

    def _start_federation(self) -> None:
        """Signed site summaries with the other sites, and (following a git remote) the
        cross-site order as a gate of the revision pipeline. Never in the data plane's way."""
        from appliance.federation.keys import load_signing_key
        from appliance.federation.service import FederationService

        assert self.cluster is not None
        key = None
        if self.config.federation.key_file is not None:  # SiteKeyError: a StartupError
            key = load_signing_key(self.config.federation.key_file)
        self.federation = FederationService(self.config.site, self.cluster,
                                            lambda: self.revision or self._candidate, key)
        self._tasks.append(self.federation.start())
        if self.follower is None:
            return
        service, follower = self.federation, self.follower

        async def federation_gate(sha: str) -> tuple[bool, str]:
            candidate = None
            if self.revision is None:  # nothing applied yet: the revision judged tells
                candidate = await asyncio.to_thread(
                    lambda: self.revisions.get(follower.tree_for(sha)))
                self._candidate = candidate
            return await service.gate(sha, candidate)

        follower.pipeline.settings.federation_gate = federation_gate

    async def _artifact(self, request: web.Request) -> web.StreamResponse:
        """The cache's handler, with the requesting host's name on its log lines: each
        request runs in its own task context, so the binding stays with this request."""
        assert self.artifacts is not None
        host = self.table.by_ip.get(request.remote or "") if self.table else None
        if host is not None:
            structlog.contextvars.bind_contextvars(host=host)
        return await self.artifacts.handler(request)

    async def stop(self) -> None:
        if self._dhcp is not None:
            await self._dhcp.close()
            self._dhcp = None
        if self._tftp is not None:
            await self._tftp.close()
            self._tftp = None
        if self._front is not None:
            await self._front.close()
            self._front = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if self.follower is not None:
            await self.follower.close()
        if self.consoles is not None:
            await asyncio.to_thread(self.consoles.close)
        if self.federation is not None:
            await self.federation.close()
        if self.power is not None:
            self.power.close()
        if self.artifacts is not None:
            await self.artifacts.close()
            self.artifacts = None
        if self.cluster is not None:
            await self.cluster.stop()
            self.cluster = None


async def serve(config: PeerConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    structlog.contextvars.bind_contextvars(peer=config.peer, site=config.site)
    if config.clock_offset_s:
        from appliance.workflow.clock import offset_wall_clock

        offset_wall_clock(config.clock_offset_s)
        log.warning("peer.clock_offset", seconds=config.clock_offset_s,
                    reason="clock_offset_s is set: this peer's wall clock is skewed (tests)")
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
        peer.local_progress.close()
