"""What the data plane tells the group: its events (DHCP, TFTP, boot HTTP, the peer's own git
remote) turned into replicated commands, queued in the outbox.

The servers call one function, `(kind, **fields)`, and never wait on Raft: an event is
logged at once and replicated when the group is reachable. Two kinds are more than a line
in the journal: a stage script served or loaded is evidence that the machine boots (handed
to the batching evidence recorder, which writes `hosts.seen`), and a stage done moves the
host's replicated record on (`host.stage_done`, tied to the arming it was made under).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from appliance.cluster import commands
from appliance.cluster.outbox import EventOutbox

log = structlog.get_logger("vaquero.peer")

# data-plane events that are evidence of a machine booting, and the host.seen step of each
SEEN_STEPS = {"stage-booting": "script", "stage-loaded": "loaded"}

# served(host, stage, revision, step=...): the boot evidence recorder (netboot/evidence.py)
Served = Callable[..., None]


class DataPlaneEvents:
    """The `on_event` callback of the data plane's servers (see the module docstring)."""

    def __init__(self, outbox: EventOutbox | None = None, served: Served | None = None) -> None:
        self.outbox = outbox
        self.served = served

    def __call__(self, kind: str, **fields: Any) -> None:
        if kind in SEEN_STEPS:  # already logged as boot.script/boot.loaded; the evidence
            if self.served is not None and isinstance(fields.get("host"), str):
                revision = fields.get("revision")
                self.served(fields["host"], int(fields["stage"]),
                            revision if isinstance(revision, str) else None,
                            step=SEEN_STEPS[kind])
            return
        log.info("event", kind=kind, **fields)
        if self.outbox is None:
            return
        host = fields.pop("host", None)
        revision = fields.pop("revision", None)
        data = {k: v for k, v in fields.items() if isinstance(v, str | int | float | bool)}
        self.outbox.put(kind, host=host if isinstance(host, str) else None,
                        revision=revision if isinstance(revision, str) else None,
                        data=data or None)
        if kind == "stage-done" and isinstance(host, str):
            arming = str(fields.get("arming", ""))  # "armed:<seq>" or "armed:None"
            seq = arming.removeprefix("armed:")
            cmd = commands.build(
                "host.stage_done", time.time(), name=host, stage=int(fields["stage"]),
                stages=int(fields["stages"]),
                revision=revision if isinstance(revision, str) else None)
            # explicit even when None: "made while the host was not armed" is an identity too
            cmd["armed_seq"] = int(seq) if seq.isdigit() else None
            self.outbox.put_command(commands.validate(cmd))

    def ref_changes(self, changes: list[dict[str, Any]], token: str, client: str) -> None:
        """Every ref a push to this peer's remote changed, in the replicated journal: a
        force-push or a deletion leaves the old SHA and the token that did it on record."""
        for change in changes:
            kind = ("git-ref-deleted" if change["deleted"] else
                    "git-ref-forced" if change["forced"] else "git-ref-updated")
            self(kind, revision=None if change["deleted"] else change["new"],
                 ref=change["ref"], old=change["old"], new=change["new"],
                 forced=change["forced"], token=token, client=client)
