"""The peer group's replicated state machine (pysyncobj Raft) and its asyncio bridge.

Use `Cluster(ClusterSettings(...))`: `await start()`, replicated writes (`observe_revision`,
`transition_revision`, `approve_revision`, `set_host`, `record_intent`, `record_result`,
`append_event`, `add_peer`, `remove_peer`), local reads, `follow_events`, `status`.
Writers that must not wait on Raft (the data plane) use `EventOutbox`.

pysyncobj <= 0.3.17 replaces `socket.inet_ntop` for the whole process with a Windows-only
implementation when it is imported (`pysyncobj/win_inet_pton.py` assigns it outside its
`os.name == 'nt'` guard), which breaks every later caller on Linux, scapy among them. This
package init runs before any of our modules import pysyncobj, and puts the real one back.
"""

import _socket
import socket

import pysyncobj.win_inet_pton  # noqa: F401 - import it first so the damage is done and undone

socket.inet_ntop = _socket.inet_ntop

from appliance.cluster.bridge import Cluster  # noqa: E402
from appliance.cluster.errors import (  # noqa: E402
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
from appliance.cluster.outbox import EventOutbox  # noqa: E402
from appliance.cluster.raft import (  # noqa: E402
    PYSYNCOBJ_DEFAULT,
    TUNED,
    ClusterSettings,
    RaftStatus,
    RaftTiming,
)

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
