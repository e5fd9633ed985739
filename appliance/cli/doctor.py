"""`vaq-peer doctor`: what an operator checks first when something is off, in one command.

Each check prints one PASS, WARN or FAIL line; the exit code is 1 if any check failed, else 0
(WARN is for what cannot be checked or is merely suspicious). Probes never raise: an
unreachable peer is a finding, not a crash, and the remaining checks still run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from .client import PeerClient, Probe
from .exits import EXIT_FAILED, EXIT_OK

SKEW_WARN, SKEW_FAIL = 1.0, 5.0
PROBE_TIMEOUT = 3.0
# What /v1/status may report about the boot network (not all peers' APIs do yet).
BOOT_FIELDS = ("interface", "address", "http_port", "api_port", "tftp_port", "dhcp_port",
               "proxy_port")


@dataclass
class Report:
    as_json: bool
    checks: list[dict[str, str]] = field(default_factory=list)

    def add(self, result: str, check: str, detail: str) -> None:
        self.checks.append({"result": result, "check": check, "detail": detail})
        if not self.as_json:
            print(f"{result:4}  {check}: {detail}", flush=True)

    def finish(self) -> int:
        counts = {r: sum(c["result"] == r for c in self.checks) for r in ("PASS", "WARN", "FAIL")}
        failed = counts["FAIL"] > 0
        if self.as_json:
            json.dump({"ok": not failed, "counts": counts, "checks": self.checks}, sys.stdout,
                      indent=2)
            sys.stdout.write("\n")
        else:
            print(f"\n{counts['PASS']} passed, {counts['WARN']} warning(s), "
                  f"{counts['FAIL']} failed")
        return EXIT_FAILED if failed else EXIT_OK


@dataclass
class View:
    """One peer's answer to /v1/status, with the probe's timing."""

    label: str
    probe: Probe

    @property
    def raft(self) -> dict[str, Any]:
        return self.probe.body.get("raft") or {}


def _ms(probe: Probe) -> str:
    return f"{probe.rtt * 1000:.0f} ms"


def _check_self(client: PeerClient, report: Report) -> View | None:
    health = client.probe("/healthz", timeout=PROBE_TIMEOUT)
    if health.status != 200:
        report.add("FAIL", "this peer", f"{client.url} does not answer /healthz: "
                   f"{health.error or health.status}")
        return None
    name = health.body.get("peer", "?")
    report.add("PASS", "this peer", f"{name} at {client.url} answers /healthz in {_ms(health)}")
    if not client.has_token:
        report.add("FAIL", "token", "none given (--token-file FILE or $VAQ_TOKEN); the checks "
                   "of the group need one")
        return None
    status = client.probe("/v1/status", token=True, timeout=PROBE_TIMEOUT)
    if status.status != 200:
        report.add("FAIL", "token", f"{name} refused it: {status.status} "
                   f"{status.body.get('message') or status.error}")
        return None
    report.add("PASS", "token", f"accepted by {name}")
    return View(name, status)


def _check_readyz(client: PeerClient, report: Report, label: str) -> None:
    ready = client.probe("/readyz", timeout=PROBE_TIMEOUT)
    if ready.status == 200 and ready.body.get("ready"):
        report.add("PASS", "readiness", f"{label} is ready (leader {ready.body.get('leader')})")
    else:
        reason = ready.body.get("reason") or ready.error or f"HTTP {ready.status}"
        report.add("FAIL", "readiness", f"{label} is not ready: {reason}")


def _check_peers(client: PeerClient, report: Report, me: View
                 ) -> tuple[list[View], dict[str, str]]:
    """Every other peer of the list, on its api_url when known: their status views, and
    the names of the Raft addresses."""
    listing = client.probe("/v1/peers", token=True, timeout=PROBE_TIMEOUT)
    if listing.status != 200:
        report.add("FAIL", "peers", f"{me.label} did not list its peers: "
                   f"{listing.body.get('message') or listing.error}")
        return [], {}
    views = []
    names = {p["address"]: p["name"] for p in listing.body.get("peers", []) if p.get("name")}
    for peer in listing.body.get("peers", []):
        if peer.get("self"):
            continue
        address = peer.get("address")
        label = f"{peer['name']} ({address})" if peer.get("name") else str(address)
        check = f"peer {label}"
        if not peer.get("connected"):
            report.add("FAIL", check, f"{me.label} has no Raft connection to it")
        api_url = peer.get("api_url")
        if not api_url:
            raft = "Raft connected" if peer.get("connected") else "not connected"
            report.add("WARN", check, f"cannot be checked over HTTP: the peer list has no "
                       f"api_url for it ({raft})")
            continue
        health = client.probe("/healthz", base=api_url, timeout=PROBE_TIMEOUT)
        if health.status != 200:
            report.add("FAIL", check, f"unreachable at {api_url}: "
                       f"{health.error or health.status}")
            continue
        status = client.probe("/v1/status", base=api_url, token=True, timeout=PROBE_TIMEOUT)
        if status.status != 200:
            report.add("FAIL", check, f"{api_url} answers /healthz but /v1/status gave "
                       f"{status.status}: {status.body.get('message') or status.error}")
            continue
        report.add("PASS", check, f"{api_url} answers /healthz in {_ms(health)}")
        views.append(View(peer.get("name") or status.body.get("peer") or str(address), status))
    return views, names


def _check_agreement(report: Report, views: list[View], names: dict[str, str]) -> None:
    def who(address: str | None) -> str:
        if address is None:
            return "none"
        return f"{names[address]} ({address})" if address in names else address

    cut_off = [v.label for v in views if not v.raft.get("has_quorum")]
    if cut_off:
        report.add("FAIL", "quorum", f"no quorum on {', '.join(cut_off)}: writes are refused "
                   "there")
    else:
        report.add("PASS", "quorum", f"every peer asked ({len(views)}) reaches a majority")
    seen = {(v.raft.get("leader"), v.raft.get("term")) for v in views}
    if len(seen) == 1 and None not in next(iter(seen)):
        leader, term = next(iter(seen))
        scope = ("only this peer could be asked" if len(views) == 1
                 else f"all {len(views)} peers asked agree")
        report.add("PASS", "leader", f"{scope}: {who(leader)}, term {term}")
    else:
        says = "; ".join(f"{v.label} says {who(v.raft.get('leader'))} "
                         f"(term {v.raft.get('term')})" for v in views)
        report.add("FAIL", "leader", f"no single agreed leader: {says}")


def _check_clocks(report: Report, views: list[View]) -> None:
    for v in views:
        peer_time = v.probe.body.get("time")
        if not isinstance(peer_time, int | float):
            report.add("WARN", f"clock {v.label}", "/v1/status has no time field")
            continue
        # The peer read its clock somewhere within the round trip; assume the middle.
        skew = peer_time - (v.probe.sent + v.probe.received) / 2
        error = (v.probe.received - v.probe.sent) / 2
        beyond = abs(skew) - error
        detail = f"{skew:+.3f} s from this machine (±{error:.3f} s)"
        if beyond > SKEW_FAIL:
            report.add("FAIL", f"clock {v.label}", f"{detail}: over {SKEW_FAIL:.0f} s, fix NTP")
        elif beyond > SKEW_WARN:
            report.add("WARN", f"clock {v.label}", f"{detail}: over {SKEW_WARN:.0f} s")
        else:
            report.add("PASS", f"clock {v.label}", detail)


def _check_boot(report: Report, me: View) -> None:
    st = me.probe.body
    boot = st.get("boot") if isinstance(st.get("boot"), dict) else {
        k: st[k] for k in BOOT_FIELDS if k in st}
    if not boot:
        report.add("WARN", "boot network", f"{me.label}'s /v1/status does not report its boot "
                   "interface and ports; cannot be checked")
        return
    report.add("PASS", "boot network", ", ".join(f"{k} {v}" for k, v in boot.items()))


def _check_boot_network(report: Report, interface: str, wait: float) -> None:
    """Another DHCP server answering where our peers serve: a WARN per server, since only
    the operator knows whether the site runs proxyDHCP beside it on purpose."""
    from ..netboot.rogue_dhcp import ProbeError, probe

    check = f"DHCP on {interface}"
    try:
        answers = probe(interface, wait=wait)
    except ProbeError as exc:
        report.add("WARN", check, f"cannot be checked: {exc}")
        return
    if not answers:
        report.add("PASS", check, f"no other DHCP server answered a DISCOVER within "
                   f"{wait:g} s")
    for answer in answers:
        report.add("WARN", check, f"another {answer.describe()}; machines may boot from it "
                   "(expected only beside a site in dhcp_mode: proxy)")


def run_doctor(client: PeerClient, args: argparse.Namespace) -> int:
    report = Report(as_json=args.json)
    interface = getattr(args, "boot_network", None)
    me = _check_self(client, report)
    if me is None:
        if report.checks and report.checks[0]["result"] == "PASS":
            _check_readyz(client, report, report.checks[0]["detail"].split()[0])
        if interface:
            _check_boot_network(report, interface, args.boot_network_wait)
        return report.finish()
    _check_readyz(client, report, me.label)
    others, names = _check_peers(client, report, me)
    views = [me, *others]
    _check_agreement(report, views, names)
    _check_clocks(report, views)
    _check_boot(report, me)
    if interface:
        _check_boot_network(report, interface, args.boot_network_wait)
    return report.finish()
