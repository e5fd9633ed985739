"""One Raft node (pysyncobj 0.3.17) holding the ClusterState; everything here runs on
pysyncobj's tick thread unless a docstring says otherwise.

Choices, each checked against pysyncobj 0.3.17's source:
- Timing: pysyncobj batches new entries until the next heartbeat (`appendEntriesPeriod`,
  0.1 s), which is where its ~100 ms commit comes from. `appendEntriesUseBatch=False` sends
  an entry as soon as it is queued (a pipe wakes the tick thread) and re-sends the commit
  index as soon as it moves, so a loopback commit is a couple of round trips.
- Durability: 0.3.17 has no `flushJournal` option: the journal is an mmap that is never
  msync'ed, so it survives a process crash (the page cache holds it) but not a power loss.
  With `durable=True` the journal is msync'ed before any message leaves the node (a
  follower's acknowledgement, a leader's append) and term/vote are fsync'ed when they
  change: an acknowledged write survives the loss of power of every peer. Group commit
  keeps the cost at one msync per outgoing burst, not per entry. Measured with
  tools/bench/raft.py (3 peers, loopback, shared 2-core VM): commit p50 2.1 ms durable vs
  1.1 ms page-cache only; 32 concurrent writers 530 vs 980 writes/s. The appliance writes
  tens to hundreds of small records per second at most, and losing an approval or an
  intent in a site-wide power cut costs far more, so durable is the default.
- Snapshots use our own serializer (plain data, fsync'ed) instead of pysyncobj's gzip of
  the whole object; `useFork=False` because forking a threaded asyncio process is unsafe.
  Hardening the journal uses two pysyncobj internals (the name-mangled `_SyncObj__raftLog`
  and its FileJournal class), checked at start: re-check them when upgrading pysyncobj.
- `bindAddress` is set to the node's own address: by default pysyncobj binds 0.0.0.0.
- `commandsWaitLeader=False`: without a leader a command fails at once (MISSING_LEADER)
  and the bridge retries until its deadline, instead of lingering in pysyncobj's queue and
  committing after the caller was told it timed out.
- Pre-vote (Raft thesis 9.6), which 0.3.17 lacks: without it a peer cut off from its group
  raises its term at every election timeout and, at the heal, its higher-term RequestVote
  deposes a leader that never lost its quorum (measured: term 1 -> 6 after a 20 s cut,
  runners stopped and writes refused during the new election). See `_PreVote`.
"""

from __future__ import annotations

import collections
import os
import pickle
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import structlog
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.journal import FileJournal
from pysyncobj.transport import TCPTransport

import appliance.cluster.pysyncobj_fix  # noqa: F401 - repairs what importing pysyncobj did
from appliance.cluster.errors import ClusterStartError
from appliance.cluster.journal_check import JournalDamage, repair_journal_tail
from appliance.cluster.log_matching import trim_append
from appliance.cluster.state import ClusterState

log = structlog.get_logger("vaquero.cluster")

SNAPSHOT_MAGIC = b"VAQUERO-RAFT-SNAPSHOT-1\n"
_Read = TypeVar("_Read")


@dataclass(frozen=True)
class RaftTiming:
    """pysyncobj timing knobs (seconds)."""

    append_entries_period: float
    raft_min_timeout: float
    raft_max_timeout: float
    connection_timeout: float
    connection_retry_time: float
    leader_fallback_timeout: float
    auto_tick_period: float
    use_batch: bool


# A follower that hears nothing for 0.3-0.6 s starts an election (after a pre-vote); the
# leader pings every 50 ms and steps down after 3 s without a majority. Measured: commit
# p50 2 ms, first commit after kill -9 of the leader 0.46 s median, 0.91 s max over 20
# kills (the step-down plays no part in that). The step-down was 1 s: on a loaded host a
# leader with one follower cut off missed the other's answers for a second, stepped down
# and was re-elected in a new term (term 1 -> 60 in 10 minutes at load 10-15; rollouts
# stalled on steps whose outcome the change made unknown). A cut-off leader cannot commit
# either way; 3 s only delays when it says so.
TUNED = RaftTiming(0.05, 0.3, 0.6, 1.0, 0.5, 3.0, 0.02, False)
# pysyncobj's own defaults, kept as the benchmark's reference.
PYSYNCOBJ_DEFAULT = RaftTiming(0.1, 0.4, 1.4, 3.5, 5.0, 30.0, 0.05, True)


@dataclass(frozen=True)
class ClusterSettings:
    """Everything a peer needs to run its Raft node."""

    self_address: str  # "host:port" on the peer network; also the node's id
    peers: tuple[str, ...]  # every member's address (self may be included)
    data_dir: Path
    password_file: Path
    timing: RaftTiming = TUNED
    durable: bool = True
    log_compaction_entries: int = 5000
    event_capacity: int = 10_000
    commit_timeout: float = 5.0  # default deadline of a replicated call


@dataclass(frozen=True)
class RaftStatus:
    """What this node believes, published once per tick (an immutable snapshot)."""

    self_address: str
    leader: str | None
    is_leader: bool
    has_quorum: bool
    term: int
    commit_index: int
    last_applied: int
    members: tuple[str, ...]
    ready: bool
    connected: tuple[str, ...] = ()  # members this node has a live connection to
    published: float = field(default=0.0)  # time.monotonic() of publication


def read_password(path: Path) -> str:
    """Read the shared Raft secret. Its value is never logged."""
    try:
        secret = Path(path).read_text().strip()
        mode = Path(path).stat().st_mode
    except OSError as exc:
        raise ClusterStartError(f"cannot read the raft password file {path}: {exc}") from None
    if not secret:
        raise ClusterStartError(f"the raft password file {path} is empty")
    if mode & 0o077:
        log.warning("raft_password_file_readable_by_others", path=str(path))
    return secret


def _fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DurableJournal(FileJournal):
    """FileJournal that remembers unsynced changes; swapped in after construction."""

    _vq_dirty = True
    _vq_meta_path = ""

    def add(self, command, idx, term):
        super().add(command, idx, term)
        self._vq_dirty = True

    def clear(self):
        super().clear()
        self._vq_dirty = True

    def deleteEntriesFrom(self, entryFrom):
        super().deleteEntriesFrom(entryFrom)
        self._vq_dirty = True

    def setCurrentTerm(self, term, votedForNodeId):
        # Raft needs term and vote on stable storage before a vote leaves the node.
        super().setCurrentTerm(term, votedForNodeId)
        _fsync_path(self._vq_meta_path)
        _fsync_path(os.path.dirname(self._vq_meta_path) or ".")

    def vq_sync(self) -> None:
        if self._vq_dirty:
            self._vq_dirty = False
            self.flush()


class _SyncingTransport(TCPTransport):
    """Makes the journal durable before any message can acknowledge or carry an entry."""

    def send(self, node, message):
        journal = getattr(self._syncObj, "_SyncObj__raftLog", None)
        if isinstance(journal, _DurableJournal) and journal._vq_dirty:
            journal.vq_sync()
        return super().send(node, message)


class _PreVote:
    """State of this node's pre-vote rounds (tick thread only).

    A follower whose election timeout expired asks the others whether they *would* vote
    for it at term+1, without raising any term. A peer says yes only if it has not heard
    from a leader within the minimum election timeout, is not the leader itself, and the
    asker's log is at least as up to date as its own. Only a majority of yeses lets
    pysyncobj start its real election; so a peer that is cut off, or that rejoins a group
    whose leader is alive, never raises its term and never disturbs that leader.
    """

    def __init__(self) -> None:
        self.round = 0
        self.term = 0  # the term this round asks for
        self.deadline = -1.0  # pysyncobj's election deadline when the round started
        self.granted: set[str] = set()
        self.won = False
        self.next_round = 0.0
        self.leader_heard = -1e9  # monotonic time of the last AppendEntries from a leader


PRE_VOTE = "vq_pre_vote"
PRE_VOTE_REPLY = "vq_pre_vote_reply"


# pysyncobj 0.3.17 internals the pre-vote relies on (methods on the class, attributes on
# a constructed node); checked at start so an upgrade fails loudly instead of silently
# running elections without pre-vote.
_MANGLED = "_SyncObj__"


def _internal(obj: Any, name: str) -> Any:
    """A pysyncobj private attribute (name-mangled: invisible to type checkers)."""
    return getattr(obj, _MANGLED + name)


_PRE_VOTE_METHODS = ("_SyncObj__connectedToAnyone", "_SyncObj__onMessageReceived",
                     "_SyncObj__onLeaderChanged")
_PRE_VOTE_ATTRIBUTES = ("_SyncObj__raftElectionDeadline", "_SyncObj__transferInProgress",
                        "_SyncObj__transport", "_SyncObj__raftLog", "_SyncObj__raftLeader")


class RaftNode(SyncObj):
    """The SyncObj: one replicated method, reads under a lock, status published per tick.

    Construct it on a thread that outlives it (pysyncobj's tick thread stops when the
    constructing thread exits); the bridge owns such a thread.
    """

    def __init__(  # long: one SyncObjConf of named settings, then the internals checked
        self,
        settings: ClusterSettings,
        password: str,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        # Set before SyncObj.__init__: its tick thread may apply entries immediately.
        self._vq_settings = settings
        self._vq_lock = threading.Lock()
        self._vq_state = ClusterState(event_capacity=settings.event_capacity)
        self._vq_on_change = on_change
        self._vq_status: RaftStatus | None = None
        self._vq_jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._vq_dump_written = False
        self._vq_snapshot_error: str | None = None
        self._vq_pre_vote = _PreVote()
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self._vq_data_dir = data_dir
        t = settings.timing
        conf = SyncObjConf(
            password=password,
            autoTick=True,
            autoTickPeriod=t.auto_tick_period,
            appendEntriesPeriod=t.append_entries_period,
            raftMinTimeout=t.raft_min_timeout,
            raftMaxTimeout=t.raft_max_timeout,
            connectionTimeout=t.connection_timeout,
            connectionRetryTime=t.connection_retry_time,
            leaderFallbackTimeout=t.leader_fallback_timeout,
            appendEntriesUseBatch=t.use_batch,
            bindAddress=settings.self_address,
            bindRetryTime=0.2,
            maxBindRetries=10,
            journalFile=str(data_dir / "raft.journal"),
            fullDumpFile=str(data_dir / "raft.dump"),
            serializer=self._vq_serialize,
            deserializer=self._vq_deserialize,
            logCompactionMinEntries=settings.log_compaction_entries,
            dynamicMembershipChange=True,
            useFork=False,
            commandsWaitLeader=False,
        )
        missing = [m for m in _PRE_VOTE_METHODS if not callable(getattr(SyncObj, m, None))]
        if missing:
            raise ClusterStartError(f"pysyncobj internals changed: no {', '.join(missing)}")
        # pysyncobj reads the journal without checking it: cut a torn tail off first.
        self.vq_journal_damage: JournalDamage | None = repair_journal_tail(
            data_dir / "raft.journal", durable=settings.durable)
        if self.vq_journal_damage is not None:
            log.warning("cluster_journal_tail_dropped", **self.vq_journal_damage.as_fields(),
                        note="a durable journal acknowledges nothing before it is on disk; "
                             "the leader re-sends what this peer lacks")
        others = [p for p in settings.peers if p != settings.self_address]
        transport = _SyncingTransport if settings.durable else TCPTransport
        super().__init__(settings.self_address, others, conf, transportClass=transport)
        missing = [a for a in _PRE_VOTE_ATTRIBUTES if not hasattr(self, a)]
        if missing:
            self.destroy()
            raise ClusterStartError(f"pysyncobj internals changed: no {', '.join(missing)}")
        if settings.durable:
            journal = getattr(self, "_SyncObj__raftLog", None)
            if type(journal) is not FileJournal:
                self.destroy()
                raise ClusterStartError("pysyncobj internals changed: no FileJournal to harden")
            journal.__class__ = _DurableJournal
            cast(_DurableJournal, journal)._vq_meta_path = str(data_dir / "raft.journal.meta")
        self.addOnTickCallback(self._vq_on_tick)

    # ---- the one replicated method ------------------------------------------------------

    @replicated
    def _vq_apply(self, cmd: dict) -> dict:
        try:
            with self._vq_lock:
                result = self._vq_state.apply(cmd)
        except Exception:  # a bug; never let it escape into pysyncobj (it would re-apply)
            log.exception("cluster_apply_failed", op=cmd.get("op") if isinstance(cmd, dict)
                          else None)
            result = {"ok": False, "error": "internal", "message": "apply failed"}
        self._vq_notify()
        return result

    def vq_submit(self, cmd: dict, callback: Callable[[Any, int], None]) -> None:
        """Queue a command (any thread). `callback(result, fail_reason)` runs on the tick
        thread, or on the calling thread when the queue is full."""
        self._vq_apply(cmd, callback=callback)

    def vq_call_soon(self, job: Callable[[], None]) -> None:
        """Run `job` on the tick thread: pysyncobj's transport is not thread safe."""
        self._vq_jobs.append(job)

    def vq_read(self, fn: Callable[[ClusterState], _Read]) -> _Read:
        """Run a read against the local replica (any thread)."""
        with self._vq_lock:
            return fn(self._vq_state)

    @property
    def vq_status(self) -> RaftStatus | None:
        return self._vq_status

    def _vq_notify(self) -> None:
        try:
            self._vq_on_change()
        except Exception:
            log.exception("cluster_notify_failed")

    # ---- pre-vote, on pysyncobj's private election hooks (tick thread) ------------------
    # pysyncobj 0.3.17 starts an election in `_onTick` when
    # `__raftElectionDeadline < now and __connectedToAnyone()`, and hands every received
    # message to `__onMessageReceived`. Both are looked up on self at run time under their
    # mangled names, so overriding them here is enough; `__init__` verifies at
    # start that they still exist (`_PRE_VOTE_METHODS`, `_PRE_VOTE_ATTRIBUTES`).

    def _SyncObj__connectedToAnyone(self) -> bool:
        if not _internal(SyncObj, "connectedToAnyone")(self):
            return False
        pv = self._vq_pre_vote
        if _internal(self, "transferInProgress") or not self.otherNodes:
            return True  # asked by the leader (TimeoutNow), or alone: elect at once
        now = time.monotonic()
        deadline = _internal(self, "raftElectionDeadline")
        if pv.won and pv.deadline == deadline:
            pv.won = False
            pv.deadline = -1.0
            log.info("cluster_pre_vote_won", term=pv.term)
            return True
        if pv.deadline != deadline or now >= pv.next_round:
            if _internal(self, "raftLeader") is not None:
                # silent past the election timeout: no longer anyone's follower (what
                # pysyncobj does when it starts an election), so writes fail at once
                setattr(self, _MANGLED + "raftLeader", None)
                _internal(self, "onLeaderChanged")()
            self._vq_start_pre_vote(deadline, now)
        return False

    def _vq_start_pre_vote(self, deadline: float, now: float) -> None:
        pv = self._vq_pre_vote
        t = self._vq_settings.timing
        pv.round += 1
        pv.term = self.raftCurrentTerm + 1
        pv.deadline = deadline
        pv.granted = set()
        pv.won = False
        pv.next_round = now + random.uniform(t.raft_min_timeout, t.raft_max_timeout)
        last_index, last_term = self._vq_last_log()
        message = {"type": PRE_VOTE, "term": pv.term, "round": pv.round,
                   "last_log_index": last_index, "last_log_term": last_term}
        transport = _internal(self, "transport")
        for node in self.otherNodes:
            transport.send(node, message)

    def _vq_last_log(self) -> tuple[int, int]:
        last = _internal(self, "raftLog")[-1]
        return last[1], last[2]

    def _SyncObj__onMessageReceived(self, node, message) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == PRE_VOTE:
            self._vq_answer_pre_vote(node, message)
            return
        if kind == PRE_VOTE_REPLY:
            self._vq_count_pre_vote(node, message)
            return
        if kind == "append_entries" and message.get("term", -1) >= self.raftCurrentTerm:
            self._vq_pre_vote.leader_heard = time.monotonic()
            message = self._vq_trim_append(message)
        _internal(SyncObj, "onMessageReceived")(self, node, message)

    def _vq_trim_append(self, message: dict) -> dict:
        """Raft's append rule instead of pysyncobj's delete-all-after (log_matching.py)."""
        journal = _internal(self, "raftLog")
        first = journal[0][1]
        try:
            trimmed = trim_append(message, first, journal[-1][1],
                                  lambda index: journal[index - first][2])
        except Exception:  # a message of a shape we did not foresee: pysyncobj's own path
            log.exception("cluster_append_rule_failed")
            return message
        return message if trimmed is None else trimmed

    def _vq_answer_pre_vote(self, node, message: dict) -> None:
        pv = self._vq_pre_vote
        last_index, last_term = self._vq_last_log()
        asked = (message.get("last_log_term", -1), message.get("last_log_index", -1))
        recent = time.monotonic() - pv.leader_heard < self._vq_settings.timing.raft_min_timeout
        grant = (message.get("term", -1) > self.raftCurrentTerm and not self._isLeader()
                 and not recent and asked >= (last_term, last_index))
        _internal(self, "transport").send(node, {"type": PRE_VOTE_REPLY, "round": message.get(
            "round"), "term": message.get("term"), "granted": grant})

    def _vq_count_pre_vote(self, node, message: dict) -> None:
        pv = self._vq_pre_vote
        if message.get("round") != pv.round or message.get("term") != pv.term:
            return
        if not message.get("granted") or pv.deadline != _internal(self, "raftElectionDeadline"):
            return
        pv.granted.add(node.id)
        if len(pv.granted) + 1 > (len(self.otherNodes) + 1) / 2:
            pv.won = True

    # ---- tick-thread housekeeping -------------------------------------------------------

    def _vq_on_tick(self) -> None:
        try:
            while self._vq_jobs:
                self._vq_jobs.popleft()()
            journal = getattr(self, "_SyncObj__raftLog", None)
            if isinstance(journal, _DurableJournal):
                journal.vq_sync()
            if self._vq_dump_written and self._vq_settings.durable:
                # The dump was renamed into place after our serializer returned; make the
                # rename durable before pysyncobj truncates the journal on a later tick.
                self._vq_dump_written = False
                _fsync_path(self._vq_data_dir)
            leader = self._getLeader()
            status = RaftStatus(
                self_address=self._vq_settings.self_address,
                leader=leader.id if leader is not None else None,
                is_leader=self._isLeader(),
                has_quorum=self.hasQuorum,
                term=self.raftCurrentTerm,
                commit_index=self.raftCommitIndex,
                last_applied=self.raftLastApplied,
                members=tuple(sorted([self.selfNode.id] + [n.id for n in self.otherNodes])),
                ready=self.isReady() and self._vq_snapshot_error is None,
                connected=tuple(sorted(n.id for n in self.otherNodes if self.isNodeConnected(n))),
                published=time.monotonic(),
            )
            old = self._vq_status
            self._vq_status = status
            if old is None or (old.leader, old.is_leader, old.has_quorum, old.members) != (
                status.leader, status.is_leader, status.has_quorum, status.members
            ):
                self._vq_notify()
        except Exception:
            log.exception("cluster_tick_callback_failed")

    def _vq_serialize(self, filename: str, raft_data: Any) -> None:
        # Called synchronously on the tick thread, between two applies: the state is
        # consistent with raft_data without a lock (only this thread mutates it).
        payload = pickle.dumps({"raft": raft_data, "state": self._vq_state.to_snapshot()},
                               protocol=pickle.HIGHEST_PROTOCOL)
        with open(filename, "wb") as f:
            f.write(SNAPSHOT_MAGIC)
            f.write(payload)
            f.flush()
            if self._vq_settings.durable:
                os.fsync(f.fileno())
        self._vq_dump_written = True
        log.info("cluster_snapshot_written", bytes=len(payload))

    def _vq_deserialize(self, filename: str) -> Any:
        # Only files written by _vq_serialize (ours or a peer's, sent over the encrypted
        # Raft channel) reach this point.
        try:
            with open(filename, "rb") as f:
                data = f.read()
            if not data.startswith(SNAPSHOT_MAGIC):
                raise ValueError("not a vaquero raft snapshot")
            obj = pickle.loads(data[len(SNAPSHOT_MAGIC):])
            state = ClusterState.from_snapshot(obj["state"])
        except Exception as exc:
            self._vq_snapshot_error = str(exc)
            log.error("cluster_snapshot_unreadable", file=filename, error=str(exc))
            raise
        with self._vq_lock:
            self._vq_state = state
        self._vq_snapshot_error = None
        log.info("cluster_snapshot_loaded", index=obj["raft"][0][1], bytes=len(data))
        self._vq_notify()
        return obj["raft"]
