"""Source mode: a peer that follows a git remote through the revision pipeline.

It owns the local mirror, the poller, the leader's pipeline and the task that makes this
peer serve whatever revision the group applied (read by SHA from its own mirror). The peer
gives it the Raft group, the outbox, the revision cache and `install(revision)`, which swaps
the data plane to a compiled revision.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from appliance.cluster import Cluster
from appliance.cluster import commands as raft_commands
from appliance.cluster.outbox import EventOutbox
from appliance.config import PeerConfig
from appliance.sot.revision import Revision, RevisionCache
from appliance.sot.tree import Tree
from appliance.source.fetch import GitMirror, Poller, redact_url
from appliance.source.gittree import GitTree
from appliance.source.pipeline import PipelineSettings, RevisionPipeline

log = structlog.get_logger("vaquero.source")


class SourceFollower:
    def __init__(self, config: PeerConfig, cluster: Cluster, outbox: EventOutbox,
                 revisions: RevisionCache, install: Callable[[Revision], Awaitable[None]],
                 serving: Callable[[], str | None]) -> None:
        src = config.source
        assert src is not None
        self.config, self.cluster, self.outbox = config, cluster, outbox
        self.revisions, self.install, self.serving = revisions, install, serving
        url = src.url if src.url != "local" else f"file://{config.data_dir / 'remote.git'}"
        self.mirror = GitMirror(config.data_dir / "sot.git", url, src.ref, src.token_file)
        self.pipeline = RevisionPipeline(cluster, self.tree_for, self._settings(), revisions)
        self.poller = Poller(self.mirror, src.poll_interval, src.poll_jitter,
                             self._on_new_commit, last_sha=cluster.applied_revision())
        self.routes: list[tuple[str, Any]] = []
        gh = config.github
        if gh.webhook_secret_file:
            from appliance.source.github import GithubWebhook, load_webhook_secret

            async def on_push(sha: str) -> None:
                self.poller.trigger()  # fetch now; the poller observes what it finds

            hook = GithubWebhook(load_webhook_secret(gh.webhook_secret_file), src.ref, on_push)
            self.routes.append(("/v1/hooks/github", hook.handle))

    def _settings(self) -> PipelineSettings:
        cfg = self.config
        settings = PipelineSettings(site=cfg.site,
                                    require_manual_approval=cfg.pipeline.require_manual_approval,
                                    approvals_required=cfg.pipeline.approvals_required,
                                    require_signed_commits=cfg.pipeline.require_signed_commits)
        if cfg.pipeline.signing_keys_file or cfg.pipeline.gpg_keys_file:
            from appliance.source.signatures import (
                CommitVerifier,
                import_gpg_keys,
                load_signing_keys,
            )

            ssh_keys = (load_signing_keys(cfg.pipeline.signing_keys_file)
                        if cfg.pipeline.signing_keys_file else [])
            gpg_home = None
            if cfg.pipeline.gpg_keys_file:
                gpg_home = cfg.data_dir / "trusted-gnupg"
                import_gpg_keys(cfg.pipeline.gpg_keys_file, gpg_home)
            verifier = CommitVerifier(ssh_keys, gpg_home)
            settings.verify_signature = lambda sha: verifier.verify(self.mirror.path, sha)
        gh = cfg.github
        if gh.repo and gh.token_file:
            from appliance.source.github import GithubStatus

            status = GithubStatus(gh.api_base, gh.repo, gh.token_file, site=cfg.site)
            settings.report_status = status.report
            if gh.required_contexts:
                contexts = list(gh.required_contexts)
                settings.status_gate = lambda sha: status.required_contexts_ok(sha, contexts)
        return settings

    def tree_for(self, sha: str) -> Tree:
        """Blocking (called in a worker thread): the agreed commit, fetched if we lack it."""
        self.mirror.ensure(sha)
        return GitTree(self.mirror.path, sha)

    async def _on_new_commit(self, sha: str) -> None:
        """The followed ref moved. Queued through the outbox: observed even if the group is
        out of reach right now."""
        self.outbox.put_command(raft_commands.build(
            "revision.observe", time.time(), sha=sha, source=redact_url(self.mirror.url)))
        log.info("source.new_commit", revision=sha)
        self.pipeline.wake()

    def trigger(self) -> None:
        self.poller.trigger()

    async def _follow_applied(self) -> None:
        """Every peer serves the revision the group applied, read by SHA from its mirror."""
        failed: str | None = None
        while True:
            sha = self.cluster.applied_revision()
            if sha and sha != self.serving() and sha != failed:
                try:
                    def load(sha: str = sha) -> Revision:
                        return self.revisions.get(self.tree_for(sha))

                    revision = await asyncio.to_thread(load)
                    await self.install(revision)
                except Exception as exc:  # noqa: BLE001 - keep serving the last good revision
                    failed = sha
                    log.error("revision.cannot_serve", revision=sha, error=str(exc))
            await asyncio.sleep(0.5)

    def start(self) -> list[asyncio.Task[Any]]:
        self.poller.start()
        log.info("source.following", url=redact_url(self.mirror.url), ref=self.mirror.ref,
                 poll_interval=self.poller.interval)
        return [asyncio.create_task(self.pipeline.run(), name="pipeline"),
                asyncio.create_task(self._follow_applied(), name="follow-applied")]

    def info(self) -> dict[str, Any]:
        """How following the git remote goes: fetch failures are reported, not only logged."""
        p = self.poller
        return {"url": redact_url(self.mirror.url), "ref": self.mirror.ref,
                "last_fetched_sha": p.last_sha, "last_success": p.last_success,
                "last_error": p.last_error, "consecutive_failures": p.consecutive_failures}

    def metrics(self) -> dict[str, float]:
        return {"fetch_consecutive_failures": float(self.poller.consecutive_failures),
                "fetch_last_success": float(self.poller.last_success or 0)}

    async def close(self) -> None:
        await self.poller.close()
