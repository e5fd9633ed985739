"""The plan: the work a change from one revision to another implies, for a person to approve.

It is computed only from the two compiled revisions (models and render fingerprints), so it
is a pure function of the two SHAs. Hosts are classified by what will happen to the machine:
installed, reinstalled, re-rendered only (new files served, no power action), record-only
(the SoT entry changed but nothing served or done differs), removed, or left alone. Hosts to
(re)install are batched per cluster and workflow under the rollout policy, and clusters are
ordered in waves by the dependencies between their workflows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .federation_text import order_text
from .loader import HostEntry, Sot
from .models import Workflow
from .revision import Revision, no_cyclic_gc

INSTALL, REINSTALL, RERENDER, RECORD = "install", "reinstall", "rerender", "record"
REMOVE, HOLD, UNCHANGED = "remove", "hold", "unchanged"
# Order in which actions are listed, most consequential first.
ACTION_ORDER = [REINSTALL, INSTALL, RERENDER, RECORD, REMOVE, HOLD]


@dataclass
class HostChange:
    name: str
    site: str
    cluster: str
    workflow: str
    action: str
    reason: str
    changes: list[str] = field(default_factory=list)


@dataclass
class ClusterRollout:
    site: str
    cluster: str
    workflow: str
    policy: dict[str, Any]
    batches: list[list[str]]


@dataclass
class Wave:
    index: int
    workflows: list[str]
    clusters: list[ClusterRollout]


@dataclass
class PowerAction:
    host: str
    bmc: str | None
    steps: list[str]


@dataclass
class Plan:
    old: str
    new: str
    definitions: list[str]
    hosts: list[HostChange]
    waves: dict[str, list[Wave]]
    power: list[PowerAction]
    unchanged: int
    federation: list[str] = field(default_factory=list)  # the cross-site order, as text

    def counts(self) -> dict[str, int]:
        out = {a: 0 for a in ACTION_ORDER}
        for h in self.hosts:
            out[h.action] += 1
        out[UNCHANGED] = self.unchanged
        return out

    @property
    def touches_hardware(self) -> bool:
        """False when the change only re-renders what peers serve: eligible for auto-approval."""
        return any(h.action in (INSTALL, REINSTALL) for h in self.hosts)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.old, "to": self.new, "summary": self.counts(),
            "touches_hardware": self.touches_hardware, "definitions": self.definitions,
            "hosts": [asdict(h) for h in self.hosts],
            "rollout": {site: [asdict(w) for w in waves] for site, waves in self.waves.items()},
            "power": [asdict(p) for p in self.power],
            "federation": self.federation,
        }


def _diff(old: Any, new: Any, path: str, out: list[str], limit: int = 20) -> None:
    if len(out) >= limit or old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{sub}: added ({_short(new[key])})")
            elif key not in new:
                out.append(f"{sub}: removed (was {_short(old[key])})")
            else:
                _diff(old[key], new[key], sub, out, limit)
        return
    if (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)
            and all(isinstance(x, dict) for x in old + new)):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _diff(a, b, f"{path}[{i}]", out, limit)
        return
    out.append(f"{path}: {_short(old)} -> {_short(new)}")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", exclude_defaults=False) if model is not None else None


def _definition_changes(old: Sot, new: Sot) -> list[str]:
    out: list[str] = []
    for label, a, b in (("site", old.sites, new.sites), ("os", old.os, new.os),
                        ("boot", old.boots, new.boots), ("workflow", old.workflows, new.workflows)):
        for ident in sorted(set(a) | set(b)):
            if ident not in a:
                out.append(f"+ {label} {ident} added")
            elif ident not in b:
                out.append(f"- {label} {ident} removed")
            else:
                fields: list[str] = []
                _diff(_dump(a[ident]), _dump(b[ident]), "", fields, limit=6)
                if fields:
                    out.append(f"~ {label} {ident}: " + "; ".join(fields))
    if old.federation != new.federation:  # the cross-site order or how summaries age
        if old.federation is None or new.federation is None:
            out.append("+ federation.yml added" if old.federation is None
                       else "- federation.yml removed")
        else:
            changed: list[str] = []
            _diff(_dump(old.federation), _dump(new.federation), "", changed, limit=6)
            out.append("~ federation.yml: " + "; ".join(changed))
    for key in sorted(set(old.assets) | set(new.assets)):
        if key not in old.assets:
            out.append(f"+ asset {key} added")
        elif key not in new.assets:
            out.append(f"- asset {key} removed")
        elif old.assets[key].text != new.assets[key].text:
            out.append(f"~ asset {key} changed")
    return out


def _stage_changes(old_rev: Revision, new_rev: Revision, name: str, wf: Workflow) -> list[str]:
    a = old_rev.result.fingerprints.get(name)
    b = new_rev.result.fingerprints.get(name)
    if a is None or b is None:
        return []
    out = []
    if a.dhcp != b.dhcp:
        out.append("DHCP reservation or boot settings changed")
    if len(a.stages) != len(b.stages):
        out.append(f"workflow now has {len(b.stages)} stage(s), had {len(a.stages)}")
    for i, (sa, sb) in enumerate(zip(a.stages, b.stages, strict=False), start=1):
        label = wf.stages[i - 1].label if i <= len(wf.stages) else str(i)
        if sa.ipxe != sb.ipxe:
            out.append(f"stage {i} ({label}): iPXE script changed (kernel, initrd or cmdline)")
        if sa.config != sb.config:
            out.append(f"stage {i} ({label}): rendered install config changed")
    return out


# long: one pass over every host, a branch per kind of change, read top to bottom.
def classify(old_rev: Revision, new_rev: Revision) -> tuple[list[HostChange], int]:
    old, new = old_rev.sot, new_rev.sot
    changes: list[HostChange] = []
    unchanged = 0
    for name, entry in new.hosts.items():
        host = entry.host
        wf = new.workflows.get(host.workflow)
        site = new.sites[entry.site]
        before = old.hosts.get(name)
        base: dict[str, Any] = dict(name=name, site=entry.site, cluster=entry.cluster,
                                    workflow=host.workflow)
        if before is None:
            if host.never_provision:
                changes.append(HostChange(**base, action=HOLD, reason="new, never_provision"))
            elif not site.policy.install_new_hosts:
                changes.append(HostChange(**base, action=HOLD, reason=(
                    "new; site policy install_new_hosts is false: installed when an operator "
                    "arms it")))
            else:
                changes.append(HostChange(**base, action=INSTALL, reason="new host"))
            continue
        fp_old = old_rev.result.fingerprints.get(name)
        fp_new = new_rev.result.fingerprints.get(name)
        moved = (before.site, before.cluster) != (entry.site, entry.cluster)
        if site.policy.force_provision and wf is not None and not host.never_provision:
            changes.append(HostChange(**base, action=REINSTALL, reason=(
                "site policy force_provision: every revision reinstalls every host")))
            continue
        # The common case, compared without dumping either model; an unchanged file's
        # models and an unrendered host's fingerprint are the parent's own objects.
        same_host = before.host is host or before.host == host
        if (fp_old is not None and (fp_old is fp_new or fp_old == fp_new) and not moved
                and same_host):
            unchanged += 1
            continue
        fields: list[str] = [f"moved from {before.site}/{before.cluster}"] if moved else []
        if not same_host:
            _diff(_dump(before.host), _dump(host), "", fields)
        served = _stage_changes(old_rev, new_rev, name, wf) if wf else []
        install_changed = fp_old is None or fp_new is None or fp_old.install != fp_new.install
        dhcp_changed = fp_old is not None and fp_new is not None and fp_old.dhcp != fp_new.dhcp
        if not fields and not served:
            unchanged += 1
            continue
        all_changes = fields + served
        if host.never_provision:
            action, reason = HOLD, "never_provision: files re-rendered, machine left alone"
        elif install_changed and wf is not None and wf.rollout.on_change == "reinstall":
            action, reason = REINSTALL, "what it installs changed"
        elif install_changed:
            action, reason = RERENDER, (f"workflow {host.workflow} rolls out with on_change: "
                                        "rerender; applied at its next provisioning")
        elif dhcp_changed:
            action, reason = RERENDER, "only the DHCP reservation or boot settings changed"
        else:
            action, reason = RECORD, "nothing served changes (metadata, BMC or unused fields)"
        changes.append(HostChange(**base, action=action, reason=reason, changes=all_changes))
    for name, entry in old.hosts.items():
        if name not in new.hosts:
            changes.append(HostChange(
                name=name, site=entry.site, cluster=entry.cluster, workflow=entry.host.workflow,
                action=REMOVE, reason="no longer in the SoT: no longer served; the machine is "
                "not powered off or wiped"))
    changes.sort(key=lambda c: (ACTION_ORDER.index(c.action), c.site, c.cluster, c.name))
    return changes, unchanged


def _workflow_depth(sot: Sot) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(wid: str, trail: frozenset[str]) -> int:
        if wid in depth:
            return depth[wid]
        wf = sot.workflows.get(wid)
        deps = [d for d in (wf.depends_on if wf else []) if d in sot.workflows and d not in trail]
        depth[wid] = 1 + max((visit(d, trail | {wid}) for d in deps), default=0)
        return depth[wid]

    for wid in sot.workflows:
        visit(wid, frozenset())
    return depth


def batches_for(members: list[HostEntry], to_install: list[str], to_reinstall: list[str],
                wf: Workflow) -> list[list[str]]:
    """New hosts first (they add capacity), then reinstalls, never taking down more hosts at
    once than max_concurrent or than what keeps min_standing running hosts."""
    policy = wf.rollout
    out: list[list[str]] = []
    for i in range(0, len(to_install), policy.max_concurrent):
        out.append(to_install[i:i + policy.max_concurrent])
    running = len([m for m in members if m.host.name not in to_install])
    size = min(policy.max_concurrent, max(1, running - policy.min_standing))
    for i in range(0, len(to_reinstall), size):
        out.append(to_reinstall[i:i + size])
    return out


def rollout_waves(new: Sot, changes: list[HostChange]) -> dict[str, list[Wave]]:
    depth = _workflow_depth(new)
    acting = {c.name: c.action for c in changes if c.action in (INSTALL, REINSTALL)}
    waves: dict[str, list[Wave]] = {}
    for (site, cluster), entries in sorted(new.clusters().items()):
        by_wf: dict[str, list[HostEntry]] = {}
        for e in entries:
            by_wf.setdefault(e.host.workflow, []).append(e)
        for wid, members in sorted(by_wf.items()):
            installs = [m.host.name for m in members if acting.get(m.host.name) == INSTALL]
            reinstalls = [m.host.name for m in members if acting.get(m.host.name) == REINSTALL]
            if (not installs and not reinstalls) or wid not in new.workflows:
                continue
            wf = new.workflows[wid]
            level = depth.get(wid, 1)
            site_waves = waves.setdefault(site, [])
            while len(site_waves) < level:
                site_waves.append(Wave(len(site_waves) + 1, [], []))
            wave = site_waves[level - 1]
            if wid not in wave.workflows:
                wave.workflows.append(wid)
            policy = wf.rollout.model_dump(mode="json", exclude={"on_change"})
            policy["depends_on"] = list(wf.depends_on)
            wave.clusters.append(ClusterRollout(site, cluster, wid, policy,
                                                batches_for(members, installs, reinstalls, wf)))
    for site in waves:
        waves[site] = [w for w in waves[site] if w.clusters]
        for i, w in enumerate(waves[site], start=1):
            w.index = i
    return waves


def power_actions(new: Sot, changes: list[HostChange]) -> list[PowerAction]:
    out = []
    for c in changes:
        if c.action not in (INSTALL, REINSTALL):
            continue
        entry = new.hosts[c.name]
        wf = new.workflows[entry.host.workflow]
        bmc_iface = entry.host.bmc_interface()
        bmc = None
        if bmc_iface is not None and bmc_iface.bmc is not None:
            bmc = f"{bmc_iface.bmc.type} {bmc_iface.bmc.address or bmc_iface.ipv4}"
        steps = []
        for i, stage in enumerate(wf.stages, start=1):
            if stage.local:
                steps.append(f"stage {i} {stage.label}: boots its disk (no power action)")
            elif bmc is None:
                steps.append(f"stage {i} {stage.label}: no BMC: power-cycle it by hand into PXE")
            else:
                first = "power on (or cycle if on)" if c.action == INSTALL and i == 1 else "cycle"
                steps.append(f"stage {i} {stage.label}: next boot PXE once, {first}")
        out.append(PowerAction(c.name, bmc, steps))
    return out


def make_plan(old: Revision, new: Revision) -> Plan:
    with no_cyclic_gc():  # two large revisions are alive: see no_cyclic_gc
        changes, unchanged = classify(old, new)
        return Plan(old.sha, new.sha, _definition_changes(old.sot, new.sot), changes,
                    rollout_waves(new.sot, changes), power_actions(new.sot, changes), unchanged,
                    order_text(new.sot.federation))
