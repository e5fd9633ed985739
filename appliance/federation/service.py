"""The federation on a peer: summaries kept in the site's Raft log, exchanged over HTTP, the
cross-site gate for the revision pipeline, and what the API shows.

Everything here runs beside the data plane and never in its way: the exchange is a task of
its own, a cut WAN link only makes summaries age, and the gate holds only revisions not yet
applied. The keys and the order come from the revision the site applied (before the first
one, from the revision being judged: the SoT is trusted input like any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import structlog

from appliance.cluster import Cluster
from appliance.cluster import commands as raft_commands
from appliance.cluster.errors import ClusterError, CommandRejected
from appliance.sot.models import Federation
from appliance.sot.revision import Revision

from .exchange import Directory, FederationNode, TransportError
from .gate import Standing, gate, order_text, standings
from .keys import SigningKey
from .summary import RECENT, SiteFacts
from .verify import Accepted, Keyring, Refused

log = structlog.get_logger("vaquero.federation")
EXCHANGE_PATH = "/v1/federation/exchange"
MAX_ANSWER = 4 << 20
JOURNAL_EVERY = 10.0  # seconds: at most one journal event per (site, reason) in this time


class RaftSummaryStore:
    """The last accepted summary of every site, in the site's Raft log: every peer holds it,
    and this site's own sequence survives leader changes and restarts."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def latest(self) -> Mapping[str, dict]:
        return self.cluster.node.vq_read(lambda s: s.federation_view())["summaries"]

    def overrides(self) -> Mapping[str, dict]:
        return self.cluster.node.vq_read(lambda s: s.federation_view())["overrides"]

    async def put(self, accepted: Accepted, via: str) -> None:
        with contextlib.suppress(CommandRejected):  # not_newer: another peer stored it first
            await self.cluster.submit(raft_commands.build(
                "federation.summary", time.time(), site=accepted.site, seq=accepted.seq,
                digest=accepted.digest, envelope=accepted.envelope, via=via[:200]), timeout=10)


class HttpTransport:
    """POST the exchange to the other site's peers, the last one that answered first."""

    def __init__(self, timeout: float = 5.0, connect: float = 2.0) -> None:
        # A short connect timeout: a SYN retransmitted after a cut link heals (at 3 s) would
        # deliver a request whose summaries are no longer the newest (refused as replays).
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect)
        self._session: aiohttp.ClientSession | None = None
        self._good: dict[str, str] = {}

    async def exchange(self, site: str, endpoints: list[str], request: dict) -> dict:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        first = self._good.get(site)
        order = ([first] if first in endpoints else []) + [e for e in endpoints if e != first]
        errors = []
        for url in order:
            try:
                async with self._session.post(url + EXCHANGE_PATH, json=request) as resp:
                    body = await resp.content.read(MAX_ANSWER)
                    if resp.status != 200:
                        errors.append(f"{url}: HTTP {resp.status}")
                        continue
                    answer = json.loads(body)
                    if isinstance(answer, dict):
                        self._good[site] = url
                        return answer
                    errors.append(f"{url}: not an object")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                errors.append(f"{url}: {exc.__class__.__name__}")
        raise TransportError(f"{site}: " + "; ".join(errors or ["no endpoint"]))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _directory(revision: Revision) -> Directory:
    sot = revision.sot
    keyring = Keyring.from_declared((s.id, s.federation.keys) for s in sot.sites.values())
    endpoints = {s.id: s.federation_endpoints() for s in sot.sites.values()}
    federation = sot.federation or Federation()
    return Directory(keyring, endpoints, federation.interval,
                     max(federation.interval, federation.summary_ttl / 4))


class FederationService:
    def __init__(self, site: str, cluster: Cluster, judge_by: Callable[[], Revision | None],
                 signing_key: SigningKey | None) -> None:
        """`judge_by()`: the revision whose SoT this site trusts for keys and order (the
        applied one; before any, the newest valid one)."""
        self.site, self.cluster, self.judge_by = site, cluster, judge_by
        self.store = RaftSummaryStore(cluster)
        self.transport = HttpTransport()
        self._directories: dict[str, Directory] = {}
        self._journaled: dict[tuple[str | None, str], float] = {}
        self._gate_said: dict[str, str] = {}
        self.node = FederationNode(site, self.store, self.transport, self.directory,
                                   signing_key=signing_key, facts=self.facts,
                                   is_leader=lambda: cluster.status.is_leader,
                                   on_refused=self._journal_refused)

    def directory(self) -> Directory | None:
        revision = self.judge_by()
        if revision is None:
            return None
        if revision.sha not in self._directories:
            self._directories = {revision.sha: _directory(revision)}
        return self._directories[revision.sha]

    async def facts(self) -> SiteFacts | None:
        """This site's state, read straight from the replica without copying every record:
        the leader asks twice a second, and a site may hold 10,000 host records."""
        st = self.cluster.status

        def read(state: Any) -> tuple[str | None, dict[str, str], dict | None, list[int]]:
            applied = state.applied_sha
            recent = list(state.revisions.items())[-RECENT:]
            record = state.rollouts.get(applied) if applied else None
            counts = [0, 0, 0]  # done, failed, in flight
            if record is not None:
                for host in state.hosts.values():
                    if host.get("revision") == applied and host.get("armed_seq") is not None:
                        hs = host.get("state")
                        counts[0 if hs == "done" else 1 if hs in ("failed", "aborted")
                               else 2] += 1
            rollout = ({"state": record["state"], "updated_at": record["updated_at"]}
                       if record else None)
            return applied, {sha: r["state"] for sha, r in recent}, rollout, counts

        applied, revisions, record, (done, failed, in_flight) = self.cluster.node.vq_read(read)
        rollout = None
        if applied and record is not None:
            rollout = {"revision": applied, "state": record["state"],
                       "since": round(float(record["updated_at"]), 3), "done": done,
                       "failed": failed, "in_flight": in_flight}
        return SiteFacts(applied, revisions, rollout, st.has_quorum,
                         min(len(st.members), len(st.connected) + 1), len(st.members))

    async def _journal_refused(self, exc: Refused, via: str) -> None:
        """A refused summary in the journal, at most once per (site, reason) per
        JOURNAL_EVERY: a flood of forgeries must not flood the log (the metric counts all)."""
        key, now = (exc.site, exc.reason), time.monotonic()
        if now - self._journaled.get(key, -JOURNAL_EVERY) < JOURNAL_EVERY:
            return
        self._journaled[key] = now
        with contextlib.suppress(ClusterError, asyncio.TimeoutError):
            await self.cluster.append_event(
                "federation.refused", message=f"{exc.reason}: {exc.message}"[:1000],
                data={"reason": exc.reason, "site": exc.site, "via": via[:200]})

    # --- what the pipeline, the API and the metrics ask --------------------------------------

    async def answer(self, request: dict[str, Any], via: str) -> dict[str, Any]:
        """Another site's exchange (the API's POST /v1/federation/exchange)."""
        return await self.node.answer(request, via)

    def summaries(self) -> dict[str, dict]:
        return {s: r["envelope"]["summary"] for s, r in self.store.latest().items()}

    def _federation(self, candidate: Revision | None = None) -> Any:
        revision = self.judge_by() or candidate
        return revision.sot.federation if revision is not None else None

    async def gate(self, sha: str, candidate: Revision | None = None) -> tuple[bool, str]:
        """May this site apply `sha` now? Logs the reason each time it changes."""
        override = self.store.overrides().get(sha)
        if override is not None:
            return True, f"gate overridden by {override['by']}"
        st = gate(self._federation(candidate), self.site, sha, self.summaries(), time.time())
        allowed = st.allowed
        if self._gate_said.get(sha) != st.reason:
            self._gate_said = {sha: st.reason}
            log.info("federation.gate", revision=sha, allowed=allowed, waits_for=st.waits_for,
                     reason=st.reason)
        return allowed, st.reason

    async def override(self, sha: str, by: str, reason: str | None) -> dict:
        return await self.cluster.submit(raft_commands.build(
            "federation.override", time.time(), revision=sha, by=by, reason=reason))

    def target(self) -> str | None:
        """The revision the view describes: the newest one still on its way, else the
        applied one."""
        for record in reversed(self.cluster.revisions()):
            if record["state"] in ("planned", "awaiting_approval", "approved", "applying",
                                   "applied"):
                return record["sha"]
        return self.cluster.applied_revision()

    def view(self) -> dict[str, Any]:
        revision = self.judge_by()
        federation = revision.sot.federation if revision is not None else None
        held = self.store.latest()
        summaries = {s: r["envelope"]["summary"] for s, r in held.items()}
        sites = sorted(set(revision.sot.sites) if revision else set()) or sorted(summaries)
        sha = self.target()
        now = time.time()
        rows: list[Standing] = standings(federation, sha or "0" * 40, summaries, now, sites)
        overrides = self.store.overrides()
        out = []
        for st in rows:
            record = held.get(st.site)
            row = st.to_json()
            if sha is None:  # no revision on its way: nothing to stand in line for
                row.update(state=None, waits_for=[], reason="no revision", allowed=True)
            out.append({**row, "local": st.site == self.site,
                        "seq": record["seq"] if record else None,
                        "via": record.get("via") if record else None,
                        "summary": summaries.get(st.site)})
        return {"site": self.site, "time": now, "revision": sha,
                "override": overrides.get(sha) if sha else None,
                "order": federation.model_dump(mode="json") if federation else None,
                "order_text": order_text(federation, self.site)[1:],
                "sites": out, "refused": dict(self.node.counters.rejected)}

    def endpoints(self, site: str) -> list[str]:
        directory = self.directory()
        return list(directory.endpoints.get(site, [])) if directory else []

    def metrics(self) -> dict[str, float]:
        now = time.time()
        out: dict[str, float] = {}
        for site, summary in self.summaries().items():
            out[f'summary_age_seconds{{site="{site}"}}'] = round(now - float(summary["at"]), 1)
            out[f'summary_seq{{site="{site}"}}'] = float(summary["seq"])
        for reason, n in self.node.counters.rejected.items():
            out[f'summaries_refused_total{{reason="{reason}"}}'] = float(n)
        out["summaries_accepted_total"] = float(self.node.counters.accepted)
        out["summaries_outdated_total"] = float(self.node.counters.outdated)
        out["exchanges_failed_total"] = float(self.node.counters.exchanges_failed)
        return out

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.node.run(), name="federation")

    async def close(self) -> None:
        await self.transport.close()
