"""A bounded local queue of events for writers that must never wait on Raft.

The data plane (DHCP, TFTP, boot HTTP) records what it sees as events, but it keeps serving
when its peer is cut off from the majority. It puts events here instead of awaiting a
commit; a background task replicates them in order and, while the group is unreachable,
keeps them until the peer rejoins. Each event gets its timestamp and op_id when it is put,
so a retried submission is applied once and carries the time it happened.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

import structlog

from appliance.cluster import commands
from appliance.cluster.bridge import Cluster
from appliance.cluster.errors import ClusterError, CommandRejected, InvalidCommand

log = structlog.get_logger("vaquero.cluster")


class EventOutbox:
    """put() never blocks; run() (a task) drains to the cluster. Oldest events are dropped
    when full, and the number dropped is itself logged as an event once writes resume."""

    def __init__(self, cluster: Cluster, capacity: int = 10_000, retry: float = 0.2) -> None:
        self.cluster = cluster
        self.capacity = capacity
        self.retry = retry
        self._queue: collections.deque[dict] = collections.deque()
        self._wake = asyncio.Event()
        self.dropped = 0
        self.sent = 0

    def metrics(self) -> dict[str, float]:
        """Queued now, sent and dropped since start: a cut-off peer's backlog."""
        return {"queued": float(len(self._queue)), "sent": float(self.sent),
                "dropped": float(self.dropped)}

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, kind: str, *, host: str | None = None, revision: str | None = None,
            message: str | None = None, data: dict | None = None) -> None:
        """Queue an event (validated now, so a bad one fails its writer, not the drain)."""
        self.put_command(commands.build("event.append", time.time(), kind=kind, host=host,
                                        revision=revision, message=message, data=data))

    def put_command(self, cmd: dict) -> None:
        """Queue any replicated command (a host update from the data plane, say); commands
        are applied in the order queued, each exactly once (op_id)."""
        cmd = commands.validate(cmd)
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(cmd)
        self._wake.set()

    async def run(self) -> None:
        """Drain forever (cancel to stop)."""
        reported = 0
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.dropped > reported:
                with contextlib.suppress(ClusterError):
                    await self.cluster.append_event(
                        "events.dropped", message=f"{self.dropped - reported} events dropped "
                        "while the peer group was unreachable")
                    reported = self.dropped
            cmd = self._queue[0]
            try:
                await self.cluster.submit(cmd)
            except (CommandRejected, InvalidCommand) as exc:  # deterministic: do not retry
                log.warning("cluster_outbox_command_refused", op=cmd["op"],
                            kind=cmd.get("kind"), error=str(exc))
            except ClusterError:
                await asyncio.sleep(self.retry)  # no quorum, no leader, timeout: retry
                continue
            if self._queue and self._queue[0] is cmd:
                self._queue.popleft()
                self.sent += 1
