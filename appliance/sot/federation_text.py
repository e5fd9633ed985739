"""The plan text's lines on the cross-site rollout order (federation.yml): where each site
stands and what it waits for. Pure text from the model; the live state of every site is
`vaq-peer sites` (appliance/federation)."""

from __future__ import annotations

from .models import Federation


def positions(federation: Federation | None) -> dict[str, int]:
    """Site -> its wave (waves) or its place in the order, from 0."""
    rollout = federation.rollout if federation else None
    if rollout is None:
        return {}
    if rollout.waves:
        return {s: i for i, wave in enumerate(rollout.waves) for s in wave}
    return {s: i for i, s in enumerate(rollout.order)}


def order_text(federation: Federation | None, site: str | None = None) -> list[str]:
    """The plan text's lines on the cross-site order (and where `site` stands in it)."""
    rollout = federation.rollout if federation else None
    if federation is None or rollout is None:
        return []
    lines = ["", "Rollout across sites:"]
    if rollout.waves:
        for i, wave in enumerate(rollout.waves):
            first = " (canary)" if i == 0 and len(rollout.waves) > 1 else ""
            lines.append(f"  wave {i + 1}{first}: {', '.join(wave)}")
        lines.append(f"  each wave applies once every site of the waves before it applied the "
                     f"revision, finished its rollout with no failed host and stayed so "
                     f"{rollout.soak:.0f} s")
    else:
        lines.append(f"  order: {', '.join(rollout.order)}; at most {rollout.max_parallel} "
                     f"site(s) at once, each done and soaked {rollout.soak:.0f} s")
    lines.append("  on failure: " + ("every site that has not started halts"
                                     if rollout.on_failure == "halt_all"
                                     else "only the failed site halts"))
    lines.append(f"  a summary older than {federation.summary_ttl:.0f} s is stale: "
                 + ("its site is waited for until heard from again" if federation.on_stale
                    == "wait" else f"its site is no longer waited for once its summary is "
                    f"{federation.stale_timeout:.0f} s old"))
    place = positions(federation)
    for name in [site] if site is not None else list(place):
        if name not in place:
            continue
        before = [s for s, p in place.items() if p < place[name]]
        lines.append(f"  site {name}: position {place[name] + 1}; "
                     + (f"applies after {', '.join(before)}" if before else "goes first"))
    return lines
