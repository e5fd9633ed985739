"""The exchange between sites: publish this site's summary, push it to every other site, and
take back from each what it holds that we lack. Transport-agnostic (HTTP between peers,
in-process in the benchmark) and storage-agnostic (Raft on a peer).

Every exchange is a push and a pull at once: the request carries our own newest summary and
what we hold (`have`, site -> seq); the answer carries every summary the receiver holds that
is newer than that, its own and those of third sites. That answer is the relay: signatures
make relaying safe, so if A cannot reach C but both reach B, A learns C's state from B at
its next exchange with B (within one interval). Only the leader of a site exchanges; every
peer verifies and stores (through Raft) what it receives.

Third-site summaries travel only in answers, never pushed to everyone: after a partition
heals, N sites pushing every summary they hold to every other site would move N^3 copies.
Exchanges of one round run a few at a time (CONCURRENCY), each asking with what the ones
before it brought, so each site pulls a third site's news about once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from .keys import SigningKey
from .summary import SiteFacts, build_summary, sign
from .verify import Accepted, Keyring, Refused, verify

log = structlog.get_logger("vaquero.federation")
MAX_ENVELOPES = 512  # per exchange request or answer
CONCURRENCY = 4  # exchanges in flight per round
RETRY = 1.0  # seconds before a site that did not answer is tried again (at most `interval`)
PULL_FANOUT = 3  # sites pulled from every interval when nothing changes (least recent first)


class TransportError(Exception):
    """The other site did not answer (any of its endpoints)."""


class Transport(Protocol):
    async def exchange(self, site: str, endpoints: list[str], request: dict) -> dict: ...


class SummaryStore(Protocol):
    """Where a site keeps the last accepted summary of every site (Raft on a peer)."""

    def latest(self) -> Mapping[str, dict]: ...  # site -> {seq, digest, envelope, ...}

    async def put(self, accepted: Accepted, via: str) -> None: ...


@dataclass(frozen=True)
class Directory:
    """What the SoT this site judges by says of the federation: sites, endpoints, keys."""

    keyring: Keyring
    endpoints: Mapping[str, list[str]]  # site -> API URLs of its peers
    interval: float = 5.0  # seconds between exchanges with each site
    # seconds between summaries when nothing changes: often enough that a live site never
    # looks stale (a quarter of the SoT's summary_ttl), rarely enough that N sites do not
    # spend their CPU verifying each other's heartbeats
    heartbeat: float = 30.0


@dataclass
class ExchangeCounters:
    rejected: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    outdated: int = 0  # older summaries of third sites a relay handed over (not refusals)
    exchanges_ok: int = 0
    exchanges_failed: int = 0


class FederationNode:
    """One site's side of the federation, on whichever peer runs it."""

    def __init__(self, site: str, store: SummaryStore, transport: Transport,
                 directory: Callable[[], Directory | None], *,
                 signing_key: SigningKey | None = None,
                 facts: Callable[[], Awaitable[SiteFacts | None]] | None = None,
                 is_leader: Callable[[], bool] = lambda: True,
                 on_refused: Callable[[Refused, str], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.site, self.store, self.transport = site, store, transport
        self.directory, self.signing_key, self.facts = directory, signing_key, facts
        self.is_leader, self.on_refused, self.clock = is_leader, on_refused, clock
        self.counters = ExchangeCounters()
        self._last_facts: SiteFacts | None = None
        self._last_publish = 0.0
        self._wake = asyncio.Event()
        self._last_tried: dict[str, float] = {}  # target -> when we last exchanged with it
        self._failed: set[str] = set()  # targets whose last exchange failed
        self._last_pull = 0.0

    # --- receiving -------------------------------------------------------------------------

    def _last(self) -> dict[str, tuple[int, str, str]]:
        return {s: (r["seq"], r["digest"], r["envelope"]["sig"])
                for s, r in self.store.latest().items()}

    async def receive(self, envelopes: list[Any], via: str,
                      sender: str | None = None) -> dict[str, Any]:
        """Verify each summary and store the accepted ones; refused ones are counted and
        reported, never stored. `via`: who handed them over (for the journal); `sender`: the
        site that says it sends them.

        An older summary of a third site, relayed, is outdated knowledge (relays race each
        other), not an attack: counted as `outdated`, never stored, not journaled. An older
        summary of the sender itself, or with no sender, is a replay: a site always sends
        its newest own summary."""
        directory = self.directory()
        if directory is None:
            return {"accepted": 0, "refused": [], "duplicates": 0, "verified": False}
        last = self._last()
        accepted, refused, duplicates = 0, [], 0
        fresh: list[Accepted] = []
        for envelope in envelopes[:MAX_ENVELOPES]:
            try:
                result = verify(envelope, directory.keyring, last)
            except Refused as exc:
                if exc.reason == "replay" and sender is not None and exc.site != sender:
                    self.counters.outdated += 1
                    continue
                self.counters.rejected[exc.reason] += 1
                refused.append({"site": exc.site, "reason": exc.reason})
                log.warning("federation.refused", reason=exc.reason, site=exc.site, via=via,
                            message=exc.message)
                if self.on_refused is not None:
                    await self.on_refused(exc, via)
                continue
            if result is None:
                duplicates += 1
                continue
            fresh.append(result)
            last[result.site] = (result.seq, result.digest, result.envelope["sig"])
            accepted += 1
            self.counters.accepted += 1
        # stored all at once: on a peer each is a Raft commit (~0.1 s), and a heal may bring
        # a hundred; the sender's request must not time out while they commit one by one
        await asyncio.gather(*(self.store.put(a, via) for a in fresh))
        return {"accepted": accepted, "refused": refused, "duplicates": duplicates,
                "verified": accepted + duplicates > 0}

    def have(self) -> dict[str, int]:
        return {s: r["seq"] for s, r in self.store.latest().items()}

    def newer_than(self, have: Mapping[str, Any]) -> list[dict]:
        """The envelopes we hold that are newer than what `have` says the other holds."""
        out = []
        for site, record in self.store.latest().items():
            theirs = have.get(site)
            if not isinstance(theirs, int) or record["seq"] > theirs:
                out.append(record["envelope"])
        return out[:MAX_ENVELOPES]

    async def answer(self, request: Mapping[str, Any], via: str) -> dict[str, Any]:
        """The receiving side of an exchange. What we hold goes back only to a caller that
        handed over at least one valid summary: a site, not a passer-by."""
        envelopes = request.get("summaries")
        if not isinstance(envelopes, list):
            envelopes = []
        sender = request.get("from")
        result = await self.receive(envelopes, via, sender if isinstance(sender, str) else None)
        have = request.get("have")
        if result.pop("verified") and isinstance(have, dict):
            result["summaries"] = self.newer_than(have)
        else:
            result["summaries"] = []
        result["have"] = self.have()
        return result

    # --- publishing and pushing ------------------------------------------------------------

    async def publish(self, force: bool = False) -> dict | None:
        """Sign and store a new summary of this site when its state changed or a heartbeat
        is due. The sequence follows the stored one: it survives leader changes."""
        if self.signing_key is None or self.facts is None:
            return None
        facts = await self.facts()
        directory = self.directory()
        if facts is None or directory is None:
            return None
        now = self.clock()
        if not force and facts == self._last_facts and now - self._last_publish < \
                directory.heartbeat:
            return None
        mine = self.store.latest().get(self.site)
        seq = (mine["seq"] if mine else 0) + 1
        summary = build_summary(self.site, seq, now, facts, mine["digest"] if mine else None)
        envelope = sign(summary, self.signing_key)
        result = verify(envelope, directory.keyring, {})
        if result is None:  # pragma: no cover - an empty `last` never yields a duplicate
            return None
        await self.store.put(result, "self")
        self._last_facts, self._last_publish = facts, now
        return envelope

    async def exchange_with(self, target: str, endpoints: list[str]) -> bool:
        self._last_tried[target] = self.clock()
        mine = self.store.latest().get(self.site)
        request = {"from": self.site, "summaries": [mine["envelope"]] if mine else [],
                   "have": self.have()}
        try:
            answer = await self.transport.exchange(target, endpoints, request)
        except TransportError as exc:
            self.counters.exchanges_failed += 1
            self._failed.add(target)
            log.debug("federation.unreachable", target=target, error=str(exc))
            return False
        self.counters.exchanges_ok += 1
        self._failed.discard(target)
        summaries = answer.get("summaries")
        if isinstance(summaries, list) and summaries:
            await self.receive(summaries, target, target)
        return True

    async def round(self, only: set[str] | None = None) -> None:
        """Exchange with every other site (or `only` those), CONCURRENCY at a time (each
        bounded by the transport's timeout), the ones not heard from longest first."""
        directory = self.directory()
        if directory is None:
            return
        targets = sorted(((s, e) for s, e in self._targets(directory).items()
                          if only is None or s in only),
                         key=lambda t: self._last_tried.get(t[0], 0.0))
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(site: str, endpoints: list[str]) -> None:
            async with limit:
                await self.exchange_with(site, endpoints)

        await asyncio.gather(*(one(s, e) for s, e in targets))

    def _targets(self, directory: Directory) -> dict[str, list[str]]:
        """The other sites that take part: they declare a key (a site without one publishes
        nothing) and can be reached somewhere."""
        return {s: e for s, e in directory.endpoints.items()
                if s != self.site and e and directory.keyring.by_site.get(s)}

    def _due(self, directory: Directory) -> set[str]:
        """Whom to exchange with when nothing of ours changed:
        - a site that did not answer, again after RETRY: a healed link carries news at once;
        - every interval, the PULL_FANOUT sites exchanged with least recently: any of them
          relays what it knows, so news of a site we cannot reach arrives within about an
          interval, without N sites pulling from N sites every interval;
        - a site we have heard nothing from for half its summary_ttl (two heartbeats)."""
        now = self.clock()
        others = list(self._targets(directory))
        due = {s for s in others if s in self._failed
               and now - self._last_tried.get(s, 0.0) >= min(RETRY, directory.interval)}
        if now - self._last_pull >= directory.interval:
            self._last_pull = now
            live = sorted((s for s in others if s not in self._failed),
                          key=lambda s: self._last_tried.get(s, 0.0))
            due.update(live[:PULL_FANOUT])
            held = self.store.latest()
            due.update(s for s in live if now - self._last_tried.get(s, 0.0)
                       >= directory.interval and now - float(
                           (held.get(s) or {}).get("envelope", {}).get("summary", {})
                           .get("at", 0.0)) >= 2 * directory.heartbeat)
        return due

    def wake(self) -> None:
        self._wake.set()

    async def step(self) -> None:
        await self.publish()
        await self.round()

    async def run(self, tick: float = 0.5) -> None:
        """Every peer runs this; only the leader publishes and exchanges. A new summary
        when the site's state changes (checked every `tick`), else every `interval`."""
        while True:
            try:
                # a site without a signing key publishes nothing and is answered nothing:
                # it only receives what the others push to it
                if self.is_leader() and self.signing_key is not None:
                    published = await self.publish()
                    directory = self.directory()
                    if published is not None or self._wake.is_set():
                        self._wake.clear()
                        await self.round()  # news of our own: to everyone now
                    elif directory is not None and (due := self._due(directory)):
                        await self.round(due)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no quorum, a stopping node: next tick
                log.info("federation.round_failed", error=f"{exc.__class__.__name__}: {exc}")
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # races with the wake-up, and this task would never end
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick * (0.8 + 0.4 * random.random())):
                    await self._wake.wait()
