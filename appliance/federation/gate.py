"""The order a revision travels between sites, and whether one site may apply it now.

Pure functions of the SoT's `federation.yml`, the verified summaries a site holds and the
time: every peer computes the same answer from the same replicated summaries, and the plan
text, the API and the pipeline's gate all use this one module.

A site's standing for a revision, from its summary:
pending (not applied, waiting for approval or its turn), blocked (approved, held by this
gate), running (applied, rollout in flight), done (rollout done, no host failed), failed
(rollout failed or aborted, or the revision rejected there), unknown (no summary yet).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.sot.federation_text import order_text, positions
from appliance.sot.models import Federation

__all__ = ["Standing", "gate", "order_text", "positions", "standings", "state_of"]


@dataclass(frozen=True)
class Standing:
    site: str
    position: int  # wave index (waves) or place in the order, from 0
    state: str
    waits_for: list[str] = field(default_factory=list)
    reason: str = ""
    age: float | None = None
    stale: bool = False
    allowed: bool = True  # may this site apply the revision now (as far as the order goes)

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "position": self.position, "state": self.state,
                "waits_for": self.waits_for, "reason": self.reason,
                "age": round(self.age, 1) if self.age is not None else None,
                "stale": self.stale, "allowed": self.allowed}


def state_of(summary: Mapping[str, Any] | None, sha: str) -> str:
    if summary is None:
        return "unknown"
    rollout = summary.get("rollout")
    if summary.get("applied") == sha:
        if rollout is None or rollout.get("revision") != sha:
            return "running"  # applied; the rollout starts within a round
        if rollout["state"] == "done":
            return "done" if rollout["failed"] == 0 else "failed"
        return "failed" if rollout["state"] in ("failed", "aborted") else "running"
    seen = summary.get("revisions", {}).get(sha)
    if seen == "superseded":
        return "done"  # applied and replaced by a newer one: it went past this revision
    if seen == "rejected":
        return "failed"
    if seen in ("approved", "applying"):
        return "blocked"
    return "pending"


def _soaked(summary: Mapping[str, Any], sha: str, now: float, soak: float) -> float:
    """Seconds of soak left for a site whose rollout of `sha` is done (0: soaked)."""
    rollout = summary.get("rollout") or {}
    if summary.get("revisions", {}).get(sha) == "superseded" and rollout.get("revision") != sha:
        return 0.0
    return max(0.0, soak - (now - float(rollout.get("since", now))))


def gate(federation: Federation | None, site: str, sha: str,
         summaries: Mapping[str, Mapping[str, Any]], now: float) -> Standing:
    """May `site` apply `sha` now? `waits_for` names the sites it waits for and `reason`
    says why in words. A site outside any order (no federation.yml rollout) never waits."""
    place = positions(federation)
    mine = summaries.get(site)
    state = state_of(mine, sha)
    if site not in place or federation is None or federation.rollout is None:
        return Standing(site, 0, state, reason="no cross-site order")
    rollout = federation.rollout
    position = place[site]
    before = [s for s, p in place.items() if p < position]
    waits: list[str] = []
    why: list[str] = []
    for other in before:
        summary = summaries.get(other)
        age = now - float(summary["at"]) if summary else None
        stale = age is None or age > federation.summary_ttl
        if stale:
            if (federation.on_stale == "proceed" and age is not None
                    and age > federation.stale_timeout):
                continue
            waits.append(other)
            why.append(f"{other}: no summary yet" if age is None else
                       f"{other}: its last summary is {age:.0f} s old (stale after "
                       f"{federation.summary_ttl:.0f} s; on_stale: {federation.on_stale})")
            continue
        theirs = state_of(summary, sha)
        if theirs == "failed":
            if rollout.on_failure == "halt_all":
                held = state in ("pending", "blocked", "unknown")
                return Standing(site, position, "blocked" if held else state, [other],
                                f"{other} failed this revision; "
                                "on_failure: halt_all halts every site that has not started",
                                allowed=False)
            continue  # halt_site: only the failed site stops
        if theirs == "done":
            left = _soaked(summary, sha, now, rollout.soak)  # type: ignore[arg-type]
            if left <= 0:
                continue
            waits.append(other)
            why.append(f"{other}: done, soaking {left:.0f} s more")
            continue
        waits.append(other)
        why.append(f"{other}: {theirs}")
    allowed = len(waits) < rollout.max_parallel if rollout.order else not waits
    if allowed:
        return Standing(site, position, state, [], "its turn" if not waits else
                        f"its turn (at most {rollout.max_parallel} at once)")
    return Standing(site, position, state, waits, "; ".join(why), allowed=False)


def standings(federation: Federation | None, sha: str,
              summaries: Mapping[str, Mapping[str, Any]], now: float,
              sites: list[str]) -> list[Standing]:
    """Every site's place, state and wait for `sha`, with its summary's age."""
    out = []
    for site in sites:
        st = gate(federation, site, sha, summaries, now)
        summary = summaries.get(site)
        age = now - float(summary["at"]) if summary else None
        ttl = federation.summary_ttl if federation else 120.0
        out.append(Standing(st.site, st.position, st.state, st.waits_for, st.reason, age,
                            age is None or age > ttl, st.allowed))
    return sorted(out, key=lambda s: (s.position, s.site))
