"""The peer group's replicated state machine (pysyncobj Raft) and its asyncio bridge.

Use `Cluster(ClusterSettings(...))`: `await start()`, replicated writes (`observe_revision`,
`transition_revision`, `approve_revision`, `set_host`, `record_intent`, `record_result`,
`append_event`, `add_peer`, `remove_peer`), local reads, `follow_events`, `status`.
"""

from appliance.cluster.bridge import Cluster
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
from appliance.cluster.raft import PYSYNCOBJ_DEFAULT, TUNED, ClusterSettings, RaftStatus, RaftTiming

__all__ = [
    "PYSYNCOBJ_DEFAULT",
    "TUNED",
    "Cluster",
    "ClusterError",
    "ClusterSettings",
    "ClusterStartError",
    "CommandRejected",
    "CommitTimeout",
    "InvalidCommand",
    "MembershipChangeDenied",
    "NoLeader",
    "NoQuorum",
    "NotLeader",
    "RaftStatus",
    "RaftTiming",
]
