"""The peer group's replicated state machine (pysyncobj Raft) and its asyncio bridge.

Use `Cluster(ClusterSettings(...))`: `await start()`, replicated writes (`observe_revision`,
`transition_revision`, `approve_revision`, `set_host`, `record_intent`, `record_result`,
`append_event`, `add_peer`, `remove_peer`), local reads, `follow_events`, `status`.
Writers that must not wait on Raft (the data plane) use `EventOutbox`.

The names below that need pysyncobj are imported on first use, so the pure modules (the
command format in `commands`, the state machine in `state`, the errors) can be imported,
tested and type-checked without it. `pysyncobj_fix` is where pysyncobj is first imported,
and repairs what that import does to `socket.inet_ntop`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from appliance.cluster.errors import (
    ClusterError,
    ClusterStartError,
    CommandRejected,
    CommitTimeout,
    InvalidCommand,
    MembershipChangeDenied,
    NoLeader,
    NoQuorum,
    NotLeader,
)

if TYPE_CHECKING:
    from appliance.cluster.bridge import Cluster
    from appliance.cluster.outbox import EventOutbox
    from appliance.cluster.raft import (
        PYSYNCOBJ_DEFAULT,
        TUNED,
        ClusterSettings,
        RaftStatus,
        RaftTiming,
    )

_LAZY = {
    "Cluster": "appliance.cluster.bridge",
    "EventOutbox": "appliance.cluster.outbox",
    "PYSYNCOBJ_DEFAULT": "appliance.cluster.raft",
    "TUNED": "appliance.cluster.raft",
    "ClusterSettings": "appliance.cluster.raft",
    "RaftStatus": "appliance.cluster.raft",
    "RaftTiming": "appliance.cluster.raft",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "PYSYNCOBJ_DEFAULT",
    "TUNED",
    "Cluster",
    "ClusterError",
    "ClusterSettings",
    "ClusterStartError",
    "CommandRejected",
    "CommitTimeout",
    "EventOutbox",
    "InvalidCommand",
    "MembershipChangeDenied",
    "NoLeader",
    "NoQuorum",
    "NotLeader",
    "RaftStatus",
    "RaftTiming",
]
