"""The bridge between pysyncobj's tick thread and asyncio: the API the rest of the
appliance uses.

- Writes never block the event loop: a command is queued to the tick thread and its
  callback resolves an asyncio future through `loop.call_soon_threadsafe`; every wait is
  bounded by `asyncio.wait_for`.
- Writes may be submitted on any peer. pysyncobj forwards a follower's command to the
  leader and calls back only once the entry is applied on the follower itself, so a caller
  reads its own write on the peer it wrote to. We use that rather than raising NotLeader
  for every write; NotLeader is raised only by leader-only operations (recording an
  intent: only the leader acts on hardware).
- Retries keep the command's op_id, and the state machine applies an op_id once, so a
  retry after an ambiguous failure (leader changed, unknown outcome) cannot apply twice.
- A peer that cannot reach a majority refuses writes at once with NoQuorum; reads always
  come from the local replica.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from typing import Any

import structlog
from pysyncobj import FAIL_REASON
from pysyncobj.syncobj import SyncObjException

import appliance.cluster.pysyncobj_fix  # noqa: F401 - repairs what importing pysyncobj did
from appliance.cluster import commands
from appliance.cluster.errors import (
    ClusterError,
    ClusterStartError,
    CommandRejected,
    CommitTimeout,
    MembershipChangeDenied,
    NoLeader,
    NoQuorum,
    NotLeader,
)
from appliance.cluster.intents import IntentRecord
from appliance.cluster.raft import ClusterSettings, RaftNode, RaftStatus, read_password
from appliance.cluster.records import (
    EventPage,
    HostRecord,
    PeerRecord,
    RevisionRecord,
    RolloutRecord,
)

log = structlog.get_logger("vaquero.cluster")

_RETRY_SAME_OP = {
    FAIL_REASON.QUEUE_FULL,
    FAIL_REASON.MISSING_LEADER,
    FAIL_REASON.DISCARDED,
    FAIL_REASON.NOT_LEADER,
    FAIL_REASON.LEADER_CHANGED,
    FAIL_REASON.UNKNOWN_OUTCOME,
}
_REASON_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}
_BACKOFF = 0.02


class Cluster:
    """A peer's membership in the Raft group, seen from asyncio."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self._node: RaftNode | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: threading.Thread | None = None
        self._stop_owner = threading.Event()
        self._changed: asyncio.Future | None = None
        self._notify_pending = threading.Event()
        self._reconciling: asyncio.Task | None = None
        self._reporting: asyncio.Task | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the node; returns once its Raft port is bound (not once a leader exists)."""
        self._loop = asyncio.get_running_loop()
        password = await asyncio.to_thread(read_password, self.settings.password_file)
        built: concurrent.futures.Future[RaftNode] = concurrent.futures.Future()

        def own() -> None:
            # pysyncobj's tick thread stops when the thread that built the node exits, so
            # this thread lives until stop().
            try:
                node = RaftNode(self.settings, password, self._on_change)
                node.waitBinded()
            except BaseException as exc:
                built.set_exception(exc)
                return
            built.set_result(node)
            self._stop_owner.wait()

        self._owner = threading.Thread(target=own, name="raft-owner", daemon=True)
        self._owner.start()
        try:
            self._node = await asyncio.wrap_future(built)
        except ClusterStartError:
            raise
        except SyncObjException as exc:
            raise ClusterStartError(
                f"raft node {self.settings.self_address}: cannot bind its address (in use, "
                f"or not an address of this host): {exc.errorCode}") from exc
        except Exception as exc:
            raise ClusterStartError(f"raft node {self.settings.self_address}: {exc}") from exc
        log.info("cluster_started", address=self.settings.self_address,
                 peers=list(self.settings.peers), durable=self.settings.durable)
        damage = self._node.vq_journal_damage
        if damage is not None:
            self._reporting = asyncio.ensure_future(self._journal_damage(damage.as_fields()))

    async def stop(self) -> None:
        node, self._node = self._node, None
        for task in (self._reconciling, self._reporting):
            if task is not None:
                task.cancel()
        if node is not None:
            await asyncio.to_thread(node.destroy_synchronous)
        self._stop_owner.set()
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    @property
    def node(self) -> RaftNode:
        if self._node is None:
            raise ClusterError("the cluster node is not running")
        return self._node

    @property
    def status(self) -> RaftStatus:
        st = self.node.vq_status
        if st is None:  # before the first tick
            return RaftStatus(self.settings.self_address, None, False, False, 0, 0, 0,
                              tuple(sorted(set(self.settings.peers))), False)
        return st

    def _on_change(self) -> None:
        # Tick thread. Coalesce: at most one pending wake-up on the loop.
        if self._loop is None or self._notify_pending.is_set():
            return
        self._notify_pending.set()
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._notify_pending.clear()
        fut, self._changed = self._changed, None
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self._node is not None and (self._reconciling is None or self._reconciling.done()):
            st = self.status
            if st.is_leader and st.ready and st.has_quorum and not self._peer_list_matches(st):
                self._reconciling = asyncio.ensure_future(self._reconcile_peer_list(st))

    def _peer_list_matches(self, st: RaftStatus) -> bool:
        listed = self.node.vq_read(lambda s: sorted(s.peers))
        return listed == sorted(st.members)

    async def _reconcile_peer_list(self, st: RaftStatus) -> None:
        """Leader only: make the replicated peer list name exactly the Raft members (first
        start, or a change made behind our back), keeping known names and API URLs."""
        known = {p["address"]: p for p in self.peers()}
        peers = [{"address": m, "name": known[m]["name"] if m in known else None,
                  "api_url": known[m]["api_url"] if m in known else None} for m in st.members]
        try:
            await self.submit({"op": "peers.set", "op_id": commands.new_op_id(),
                               "at": time.time(), "peers": peers})
        except ClusterError as exc:
            log.info("cluster_peer_list_reconcile_failed", error=str(exc))

    async def _journal_damage(self, fields: dict) -> None:
        """Put the start's journal repair in the replicated journal, once a leader is
        there to take it (bounded: the local warning stays if there never is one)."""
        for _ in range(60):
            try:
                await self.wait_for_leader(10.0)
                await self.append_event("cluster.journal_tail_dropped",
                                        message=self.settings.self_address, data=fields)
                return
            except ClusterError as exc:
                log.info("cluster_journal_damage_not_journaled_yet", error=str(exc))
                await asyncio.sleep(1.0)
        log.warning("cluster_journal_damage_not_journaled", **fields)

    async def _wait_change(self, timeout: float) -> None:
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._changed), max(timeout, 0))

    async def wait_for_leader(self, timeout: float = 10.0) -> str:
        """Wait until this node knows a leader that holds a quorum; return its address."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status
            if st.leader is not None and st.has_quorum and st.ready:
                return st.leader
            if time.monotonic() >= deadline:
                raise NoLeader(f"no leader known to {self.settings.self_address} "
                               f"after {timeout} s")
            await self._wait_change(min(0.05, deadline - time.monotonic()))

    # ---- writes -------------------------------------------------------------------------

    def _submit_raw(self, send) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def done(result: Any, reason: int) -> None:  # any thread; must never raise
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, fut, result, reason)

        try:
            send(done)
        except OSError:  # pysyncobj's wake-up pipe is full: same as a full queue
            _resolve(fut, None, FAIL_REASON.QUEUE_FULL)
        return fut

    async def _replicate(self, send, timeout: float | None, what: str) -> Any:
        """Run `send(callback)` until it succeeds, fails for good, or the deadline passes."""
        timeout = self.settings.commit_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        reason = None
        while True:
            st = self.status
            if not st.has_quorum:
                # A peer that just (re)started may still be connecting: give it one
                # reconnect period before refusing.
                grace = min(self.settings.timing.connection_retry_time + 0.1,
                            deadline - time.monotonic())
                await self._wait_quorum(grace)
                st = self.status
                if not st.has_quorum:
                    raise NoQuorum(f"{self.settings.self_address} cannot reach a majority of "
                                   f"{len(st.members)} peers; writes are refused, reads work")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            fut = self._submit_raw(send)
            try:
                result, reason = await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                raise CommitTimeout(f"{what}: no commit within {timeout} s; the outcome is "
                                    "unknown (retrying with the same op_id is safe)") from None
            if reason == FAIL_REASON.SUCCESS:
                return result
            if reason not in _RETRY_SAME_OP and reason != FAIL_REASON.REQUEST_DENIED:
                raise ClusterError(f"{what}: {_REASON_NAMES.get(reason, reason)}")
            await asyncio.sleep(min(_BACKOFF, max(deadline - time.monotonic(), 0)))
        if reason == FAIL_REASON.MISSING_LEADER:
            raise NoLeader(f"{what}: no leader elected within {timeout} s")
        if reason == FAIL_REASON.REQUEST_DENIED:
            raise MembershipChangeDenied(f"{what}: refused by the leader until {timeout} s")
        raise CommitTimeout(f"{what}: not committed within {timeout} s "
                            f"(last: {_REASON_NAMES.get(reason, reason)})")

    async def _wait_quorum(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.status.has_quorum and time.monotonic() < deadline:
            await self._wait_change(min(0.05, deadline - time.monotonic()))

    async def submit(self, cmd: dict, *, timeout: float | None = None) -> dict:
        """Replicate one command (see commands.py); return its result once committed and
        applied on this peer. Raises CommandRejected if the state machine refused it."""
        cmd = commands.validate(cmd)
        node = self.node
        result = await self._replicate(lambda cb: node.vq_submit(cmd, cb), timeout, cmd["op"])
        if not result.get("ok"):
            raise CommandRejected(result.get("error", "unknown"), result.get("message", ""))
        return result

    async def _do(self, op: str, timeout: float | None = None, **fields: Any) -> dict:
        return await self.submit(commands.build(op, time.time(), **fields), timeout=timeout)

    async def observe_revision(self, sha: str, source: str | None = None) -> dict:
        return await self._do("revision.observe", sha=sha, source=source)

    async def transition_revision(self, sha: str, state: str, *, by: str | None = None,
                                  reason: str | None = None, summary: dict | None = None,
                                  approvals_required: int | None = None) -> dict:
        return await self._do("revision.transition", sha=sha, state=state, by=by, reason=reason,
                              summary=summary, approvals_required=approvals_required)

    async def approve_revision(self, sha: str, by: str, note: str | None = None) -> dict:
        return await self._do("revision.approve", sha=sha, by=by, note=note)

    async def set_host(self, name: str, **fields: Any) -> dict:
        """Partial update: only the given fields (stage, state, last_event, revision)."""
        cmd = {"op": "host.set", "op_id": commands.new_op_id(), "at": time.time(), "name": name}
        cmd.update(fields)
        return await self.submit(cmd)

    async def arm_host(self, name: str, revision: str, stages: int, *, by: str | None = None,
                       reason: str | None = None) -> dict:
        """Arm a host for a revision: every peer serves it stage 1, then each next stage."""
        return await self._do("host.arm", name=name, revision=revision, stages=stages, by=by,
                              reason=reason)

    async def step_host(self, name: str, revision: str, state: str, stage: int, *,
                        attempt: int = 0, message: str | None = None,
                        deadline: float | None = None) -> dict:
        """The workflow engine's progress on one host (refused once the host is finished)."""
        return await self._do("host.step", name=name, revision=revision, state=state,
                              stage=stage, attempt=attempt, message=message, deadline=deadline)

    async def start_rollout(self, revision: str, base: str | None, by: str | None = None
                            ) -> dict:
        return await self._do("rollout.start", revision=revision, base=base, by=by)

    async def set_rollout(self, revision: str, state: str, *, by: str | None = None,
                          reason: str | None = None) -> dict:
        return await self._do("rollout.set", revision=revision, state=state, by=by,
                              reason=reason)

    async def record_intent(self, host: str, action: str, *, stage: str | None = None,
                            revision: str | None = None, intent_id: str | None = None) -> str:
        """Leader only: log an action before running it. Returns the intent id. The intent
        carries the leader's term; the state machine refuses it if a newer leader already
        logged intents (fencing a deposed leader that still believes it leads)."""
        st = self.status
        if not st.is_leader:
            raise NotLeader(st.leader)
        intent_id = intent_id or commands.new_op_id()
        await self._do("intent.record", intent_id=intent_id, host=host, action=action,
                       stage=stage, revision=revision, term=st.term)
        return intent_id

    async def record_result(self, intent_id: str, ok: bool, detail: str | None = None) -> dict:
        return await self._do("intent.result", intent_id=intent_id, ok=ok, detail=detail)

    async def append_event(self, kind: str, *, host: str | None = None,
                           revision: str | None = None, message: str | None = None,
                           data: dict | None = None, timeout: float | None = None) -> int:
        """Append to the event journal; returns the event's sequence number."""
        result = await self._do("event.append", timeout=timeout, kind=kind, host=host,
                                revision=revision, message=message, data=data)
        return result["seq"]

    # ---- membership ---------------------------------------------------------------------

    async def add_peer(self, address: str, *, name: str | None = None,
                       api_url: str | None = None, timeout: float | None = None) -> None:
        """Add one peer to the Raft group, then record it in the peer list. Start the new
        peer only after this returns; add the next one only after that."""
        node = self.node
        commands.build("peer.add", 0, address=address)  # validates the address
        if address not in self.status.members:
            try:
                await self._replicate(lambda cb: node.addNodeToCluster(address, callback=cb),
                                      timeout, "add peer")
            except MembershipChangeDenied:
                if address not in self.status.members:  # not a retry of our own change
                    raise
        await self._do("peer.add", timeout=timeout, address=address, name=name,
                       api_url=api_url)

    async def remove_peer(self, address: str, *, timeout: float | None = None) -> None:
        """Remove one peer from the Raft group and from the peer list.

        A peer never removes itself, and a leader cannot be removed while it leads (the
        leader applies a membership change as soon as it appends it and stops replicating
        to the removed peer, so that peer would never see its own removal commit). Hence:
        called on the peer being removed, this raises NotLeader naming the peer to ask
        instead; if that peer is the leader, it first hands leadership to the most
        up-to-date follower, and NotLeader names the new leader."""
        node = self.node
        timeout = self.settings.commit_timeout if timeout is None else timeout
        st = self.status
        if address == self.settings.self_address:
            if st.is_leader:
                await self._hand_over_leadership(timeout)
            raise NotLeader(self.status.leader)
        if address == st.leader:
            raise NotLeader(st.leader)
        if address in st.members:
            try:
                await self._replicate(
                    lambda cb: node.removeNodeFromCluster(address, callback=cb), timeout,
                    "remove peer")
            except MembershipChangeDenied:
                if address in self.status.members:
                    raise
        try:
            await self._do("peer.remove", timeout=timeout, address=address)
        except CommandRejected as exc:
            if exc.code != "unknown_peer":
                raise

    async def _hand_over_leadership(self, timeout: float) -> None:
        node = self.node
        me = self.settings.self_address
        deadline = time.monotonic() + timeout
        next_try = 0.0
        while self.status.is_leader or self.status.leader in (None, me):
            now = time.monotonic()
            if now >= deadline:
                raise CommitTimeout(f"leadership transfer away from {me} did not complete")
            if now >= next_try:  # denied while no follower is fully caught up: ask again
                node.vq_call_soon(lambda: node.transferLeadership())
                next_try = now + 0.2
            await self._wait_change(0.05)

    async def raft_details(self, timeout: float = 2.0) -> dict[str, Any]:
        """pysyncobj's own status (log length, per-peer match indexes...) for diagnostics.
        Collected on the tick thread, where that state lives."""
        node = self.node
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def collect() -> None:
            try:
                details = {k: (str(v) if v is not None and not isinstance(v, int | float | str)
                               else v) for k, v in node.getStatus().items()}
            except Exception as exc:  # never raise on the tick thread
                details = {"error": str(exc)}
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, fut, details)

        node.vq_call_soon(collect)
        return await asyncio.wait_for(fut, timeout)

    # ---- reads (local replica) ----------------------------------------------------------

    def revision(self, sha: str) -> RevisionRecord | None:
        return self.node.vq_read(lambda s: s.revision(sha))

    def revisions(self, state: str | None = None) -> list[RevisionRecord]:
        return self.node.vq_read(lambda s: s.revision_list(state))

    def applied_revision(self) -> str | None:
        return self.node.vq_read(lambda s: s.applied_sha)

    def host(self, name: str) -> HostRecord | None:
        return self.node.vq_read(lambda s: s.host(name))

    def hosts(self) -> list[HostRecord]:
        return self.node.vq_read(lambda s: s.host_list())

    def rollout(self, sha: str) -> RolloutRecord | None:
        return self.node.vq_read(lambda s: s.rollout(sha))

    def rollouts(self) -> list[RolloutRecord]:
        return self.node.vq_read(lambda s: s.rollout_list())

    async def wait_change(self, timeout: float) -> None:
        """Return after the next applied entry or leadership change, or at the timeout."""
        await self._wait_change(timeout)

    def intent(self, intent_id: str) -> IntentRecord | None:
        return self.node.vq_read(lambda s: s.intent(intent_id))

    def pending_intents(self, host: str | None = None) -> list[IntentRecord]:
        return self.node.vq_read(lambda s: s.pending_intents(host))

    def peers(self) -> list[PeerRecord]:
        return self.node.vq_read(lambda s: s.peer_list())

    def events_since(self, after_seq: int = 0, limit: int = 100) -> EventPage:
        return self.node.vq_read(lambda s: s.events_since(after_seq, limit))

    async def follow_events(self, after_seq: int, *, limit: int = 100,
                            timeout: float = 30.0) -> EventPage:
        """Long-poll: return as soon as events after `after_seq` exist, or at the timeout
        with an empty page."""
        deadline = time.monotonic() + timeout
        while True:
            page = self.events_since(after_seq, limit)
            remaining = deadline - time.monotonic()
            if page["events"] or remaining <= 0 or self._node is None:
                return page
            await self._wait_change(remaining)


def _resolve(fut: asyncio.Future, result: Any, reason: int) -> None:
    if not fut.done():
        fut.set_result((result, reason))


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    """Resolve `fut` unless it is done already (cancelled by a timeout meanwhile)."""
    if not fut.done():
        fut.set_result(value)
