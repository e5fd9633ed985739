"""The plan as a change review: what a person reads before approving a revision."""

from __future__ import annotations

from .plan import ACTION_ORDER, HOLD, INSTALL, RECORD, REINSTALL, REMOVE, RERENDER, Plan

_SIGN = {INSTALL: "+", REINSTALL: "!", RERENDER: "~", RECORD: "~", REMOVE: "-", HOLD: "="}
_TITLE = {
    REINSTALL: "reinstall", INSTALL: "install", RERENDER: "re-render only (no power action)",
    RECORD: "record only (nothing served changes)", REMOVE: "remove", HOLD: "left alone",
}


def plan_text(plan: Plan, max_hosts: int = 50) -> str:  # noqa: C901 - a section per part
    counts = plan.counts()
    lines = [f"Plan {plan.old[:12]} -> {plan.new[:12]}"]
    summary = ", ".join(f"{counts[a]} to {_TITLE[a].split(' (')[0]}" for a in ACTION_ORDER
                        if counts[a])
    lines.append(f"  {summary or 'no host changes'}; {counts['unchanged']} unchanged")
    lines.append("  touches hardware: " + ("yes" if plan.touches_hardware else
                                          "no (only what the peers serve changes)"))
    if plan.definitions:
        lines += ["", "Definitions changed:"]
        lines += [f"  {d}" for d in plan.definitions[:max_hosts]]
        if len(plan.definitions) > max_hosts:
            lines.append(f"  ... and {len(plan.definitions) - max_hosts} more")
    for action in ACTION_ORDER:
        group = [h for h in plan.hosts if h.action == action]
        if not group:
            continue
        lines += ["", f"Hosts to {_TITLE[action]} ({len(group)}):"]
        for h in group[:max_hosts]:
            lines.append(f"  {_SIGN[action]} {h.name}  [{h.site}/{h.cluster}, workflow "
                         f"{h.workflow}]  {h.reason}")
            for c in h.changes[:8]:
                lines.append(f"      {c}")
            if len(h.changes) > 8:
                lines.append(f"      ... and {len(h.changes) - 8} more changes")
        if len(group) > max_hosts:
            lines.append(f"  ... and {len(group) - max_hosts} more (see --json)")
    for site, waves in sorted(plan.waves.items()):
        lines += ["", f"Rollout of site {site} (waves in order; clusters within a wave in "
                  "parallel, batches within a cluster in order):"]
        for wave in waves:
            lines.append(f"  wave {wave.index}: {', '.join(wave.workflows)}")
            for cr in wave.clusters:
                policy = cr.policy
                depends = policy["depends_on"]
                after = f", after {', '.join(depends)}" if depends else ""
                health = policy.get("health")
                gate = f", health {health['type']}:{health['port']}" if health else ""
                lines.append(f"    cluster {cr.cluster} / {cr.workflow}: max_concurrent "
                             f"{policy['max_concurrent']}, min_standing {policy['min_standing']}, "
                             f"max_fail {policy['max_fail']}{gate}{after}")
                for i, batch in enumerate(cr.batches[:max_hosts], start=1):
                    lines.append(f"      batch {i}: {', '.join(batch)}")
                if len(cr.batches) > max_hosts:
                    lines.append(f"      ... and {len(cr.batches) - max_hosts} more batches")
    if plan.power:
        cycles = sum(1 for p in plan.power for s in p.steps if "PXE once" in s)
        manual = sum(1 for p in plan.power if p.bmc is None)
        lines += ["", f"Power actions: {len(plan.power)} hosts, {cycles} PXE boots through "
                  f"their BMC" + (f", {manual} without a BMC (by hand)" if manual else "") + ":"]
        for p in plan.power[:max_hosts]:
            lines.append(f"  {p.host} ({p.bmc or 'no BMC'}): " + "; ".join(p.steps))
        if len(plan.power) > max_hosts:
            lines.append(f"  ... and {len(plan.power) - max_hosts} more")
    lines += plan.federation
    return "\n".join(lines) + "\n"
