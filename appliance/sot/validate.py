"""Cross-document validation of a loaded SoT, and the render-every-host pass.

Schema errors are found while loading; this module finds what only the whole revision can
show: dangling references, identities used twice across sites, addresses outside their
subnet or on top of a gateway or a peer, rollouts that cannot make progress, and templates
that fail (or render an invalid file) for any host at any stage.
"""

from __future__ import annotations

import functools
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from urllib.parse import quote

from .formats import check_rendered_all
from .loader import HostEntry, Sot
from .models import Workflow
from .problems import Problems
from .render import COMPILED, Renderer, RenderError, make_environment
from .render_budget import DEFAULT_BUDGET, RenderBudget
from .render_keys import RenderKeys
from .render_worker import WorkerFailed, run_bounded
from .slot_pickle import pickled_by_fields
from .template_check import template_line_of, template_syntax_errors

# Which unattended kinds make sense for which OS family; families not listed accept any kind.
FAMILY_KINDS = {
    "flatcar": {"ignition", "untyped"},
    "fedora-coreos": {"ignition", "untyped"},
    "coreos": {"ignition", "cloud-config", "untyped"},
    "rocky": {"kickstart", "untyped"}, "rhel": {"kickstart", "untyped"},
    "centos": {"kickstart", "untyped"}, "almalinux": {"kickstart", "untyped"},
    "fedora": {"kickstart", "untyped"},
    "ubuntu": {"cloud-config", "preseed", "untyped"},
    "debian": {"preseed", "cloud-config", "untyped"},
}
NEUTRAL_REVISION = "0" * 40  # rendering for validation and fingerprints must not vary by SHA


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class StageFingerprint:
    ipxe: str
    config: str


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class HostFingerprint:
    """What a host would be served, hashed: the plan compares these between revisions."""

    dhcp: str
    stages: tuple[StageFingerprint, ...]

    @property
    def install(self) -> str:
        h = hashlib.sha256()
        for s in self.stages:
            h.update(f"{s.ipxe}:{s.config};".encode())
        return h.hexdigest()


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class HostRenders:
    """What rendering every stage of one host gave: reused by any revision whose key for
    the host is the same (see render_keys). `failures`: (file, line, message), in order."""

    fingerprint: HostFingerprint
    renders: int
    failures: tuple[tuple[str, int, str], ...]


@dataclass
class ValidationResult:
    problems: Problems
    fingerprints: dict[str, HostFingerprint] = field(default_factory=dict)
    renders: int = 0
    # What was done in this compile (the rest came from the parent revision's results):
    # neither is part of the result, a compile without a parent gives the same revision.
    format_checks: int = 0  # parser runs; fewer than renders thanks to FormatChecker
    rendered_here: int = 0  # hosts rendered by this compile
    # Verdict keys of the hosts check_hosts found nothing wrong with alone (for the next).
    clean_hosts: frozenset[bytes] = field(default_factory=frozenset, repr=False)
    by_key: dict[str, HostRenders] = field(default_factory=dict, repr=False)
    format_verdicts: dict[Verdict, list[tuple[int, str]]] = field(default_factory=dict,
                                                                   repr=False)


Verdict = tuple[str, str, str, str]  # (kind, OS family, OS major, masked text)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=256)
def _quoted(placeholder: str) -> str:
    """A placeholder URL-encoded: the same few for every host."""
    return quote(placeholder, safe="")


class FormatChecker:
    """Checks rendered files, once per distinct shape instead of once per host.

    Hosts rendered from one template differ mostly in their own identity: addresses, MACs,
    names. Those values are schema-validated (no spaces, quotes or syntax characters), so
    swapping them for fixed placeholders cannot change whether a file parses. The check
    runs on the masked text and its verdict is cached; a masked text that fails is checked
    again unmasked, so a verdict on a real host is always the real parser's. This is what
    makes checking every host of a 10,000-host SoT affordable (kickstart parses cost ~2 ms).
    """

    def __init__(self, known: dict[Verdict, list[tuple[int, str]]] | None = None) -> None:
        """`known`: the verdicts of the parent revision's compile (content-addressed by the
        masked text, so still true); those this compile uses are kept in `verdicts`."""
        self._known = known or {}
        self.verdicts: dict[Verdict, list[tuple[int, str]]] = {}
        self.parsed = 0

    @staticmethod
    def identity(entry: HostEntry) -> list[tuple[str, str]]:
        host = entry.host
        pairs = []
        for i, iface in enumerate(host.interfaces):
            pairs.append((iface.mac, f"02:00:00:00:00:{i:02x}"))
            pairs.append((str(iface.ipv4), f"198.19.255.{i + 1}"))
            if iface.hostname:
                pairs.append((iface.hostname, f"vaqmaskiface{i}"))
        if host.uuid is not None:
            pairs.append((str(host.uuid), "00000000-0000-4000-8000-000000000000"))
        if host.serial:
            pairs.append((host.serial, "VAQMASKSERIAL"))
        pairs.append((host.name, "vaqmaskhost"))
        # Files embedded in Ignition configs are data: URLs: their values are URL-encoded,
        # twice for a config embedded in a config (an installer's own Ignition).
        encoded = [(q, _quoted(p)) for v, p in pairs if (q := quote(v, safe="")) != v]
        pairs += encoded + [(quote(v, safe=""), _quoted(p)) for v, p in encoded]
        # Longest first, so a value that contains another is replaced whole.
        return sorted(pairs, key=lambda p: -len(p[0]))

    # Parsers slow enough for masking to pay (a prefix check is cheaper than the
    # replacements; ignition-validate is a process per file).
    MASKED_KINDS = frozenset({"kickstart", "cloud-config", "preseed", "ignition"})

    def check(self, kind: str, text: str, os_family: str, os_major: str,
              identity: list[tuple[str, str]]) -> list[tuple[int, str]]:
        if kind not in self.MASKED_KINDS:
            self.parsed += 1
            return check_rendered_all(kind, text, os_family, os_major)
        masked = text
        for value, placeholder in identity:
            if value in masked:
                masked = masked.replace(value, placeholder)
        key = (kind, os_family, os_major, masked)
        verdict = self.verdicts.get(key)
        if verdict is None:
            verdict = self._known.get(key)
            if verdict is None:
                self.parsed += 1
                verdict = check_rendered_all(kind, masked, os_family, os_major)
            self.verdicts[key] = verdict
        if not verdict:
            return []
        self.parsed += 1
        return check_rendered_all(kind, text, os_family, os_major)


def check_references(sot: Sot, problems: Problems) -> None:
    for boot in sot.boots.values():
        at = sot.at[("boot", boot.id)]
        if boot.operating_system not in sot.os and ("os", boot.operating_system) not in sot.broken:
            problems.add(at.file, at.line("operating_system"), "dangling-reference",
                         f"boot {boot.id!r}: operating_system {boot.operating_system!r} does not "
                         f"exist in os/{_known(sot.os)}")
        if boot.unattended is not None:
            key = f"{boot.unattended.type}/{boot.unattended.use}"
            if key not in sot.assets:
                problems.add(at.file, at.line("unattended", "use"), "dangling-reference",
                             f"boot {boot.id!r}: unattended config assets/{key} does not exist")
            os_ = sot.os.get(boot.operating_system)
            allowed = FAMILY_KINDS.get(os_.os_family.lower()) if os_ else None
            if allowed is not None and boot.unattended.type not in allowed:
                problems.add(at.file, at.line("unattended", "type"), "unattended-mismatch",
                             f"boot {boot.id!r}: {os_.os_family} does not read "  # type: ignore
                             f"{boot.unattended.type} configs; use {' or '.join(sorted(allowed))}")
        if boot.ipxe is not None and f"ipxe/{boot.ipxe}" not in sot.assets:
            problems.add(at.file, at.line("ipxe"), "dangling-reference",
                         f"boot {boot.id!r}: iPXE template assets/ipxe/{boot.ipxe} does not exist")
    for wf in sot.workflows.values():
        at = sot.at[("workflow", wf.id)]
        seen: dict[str, int] = {}
        for i, stage in enumerate(wf.stages):
            if (stage.boot is not None and stage.boot not in sot.boots
                    and ("boot", stage.boot) not in sot.broken):
                problems.add(at.file, at.line("stages", i, "boot"), "dangling-reference",
                             f"workflow {wf.id!r}: stage {i + 1} boots {stage.boot!r}, which does "
                             f"not exist in boot/{_known(sot.boots)}")
            if stage.label in seen:
                problems.add(at.file, at.line("stages", i), "duplicate-stage",
                             f"workflow {wf.id!r}: stage name {stage.label!r} is used twice; "
                             "give each stage a distinct `name`")
            seen[stage.label] = i
            if stage.before_shutdown and i + 1 < len(wf.stages) and wf.stages[i + 1].local:
                # the installer reboots into a local stage by itself: the leader powers
                # nothing, so there is no moment to run the hooks of the stage before it
                problems.add(at.file, at.line("stages", i, "before_shutdown"),
                             "hook-without-power-cycle",
                             f"workflow {wf.id!r}: stage {i + 1} ({stage.label}) has "
                             f"`before_shutdown`, but stage {i + 2} is `local: true`: the "
                             "machine reboots into it by itself, so nothing can run before "
                             "that reboot; move the hooks to that local stage (they run when "
                             "the leader next powers the machine out of it)")
        for i, dep in enumerate(wf.depends_on):
            if dep not in sot.workflows:
                problems.add(at.file, at.line("depends_on", i), "dangling-reference",
                             f"workflow {wf.id!r} depends on {dep!r}, which does not exist")
    _check_cycles(sot, problems)


def _known(table: dict) -> str:
    names = sorted(table)
    if not names:
        return " (none defined)"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f" (known: {shown})"


def _check_cycles(sot: Sot, problems: Problems) -> None:
    state: dict[str, int] = {}

    def visit(wid: str, trail: list[str]) -> None:
        state[wid] = 1
        for dep in sot.workflows[wid].depends_on:
            if dep not in sot.workflows:
                continue
            if state.get(dep) == 1:
                cycle = [*trail[trail.index(dep):], dep] if dep in trail else [wid, dep]
                at = sot.at[("workflow", wid)]
                problems.add(at.file, at.line("depends_on"), "dependency-cycle",
                             f"workflow dependencies form a cycle: {' -> '.join(cycle)}")
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[wid] = 2

    for wid in sorted(sot.workflows):
        if wid not in state:
            visit(wid, [wid])


def check_sites(sot: Sot, problems: Problems) -> None:
    for site in sot.sites.values():
        at = sot.at[("site", site.id)]
        ids: dict[str, int] = {}
        for i, subnet in enumerate(site.subnets):
            if subnet.id in ids:
                problems.add(at.file, at.line("subnets", i, "id"), "duplicate-id",
                             f"site {site.id!r}: subnet id {subnet.id!r} is used twice")
            ids[subnet.id] = i
            if subnet.gateway is not None and subnet.gateway not in subnet.cidr:
                problems.add(at.file, at.line("subnets", i, "gateway"), "address-outside-subnet",
                             f"subnet {subnet.id!r}: gateway {subnet.gateway} is outside "
                             f"{subnet.cidr}")
            for j, other in enumerate(site.subnets[:i]):
                if subnet.cidr.overlaps(other.cidr):
                    problems.add(at.file, at.line("subnets", i, "cidr"), "overlapping-subnets",
                                 f"subnet {subnet.id!r} ({subnet.cidr}) overlaps subnet "
                                 f"{other.id!r} ({other.cidr}) at line {at.line('subnets', j)}")
        if len(site.peers) % 2 == 0 and site.peers:
            problems.add(at.file, at.line("peers"), "even-peers",
                         f"site {site.id!r} has {len(site.peers)} peers: a Raft group of an even "
                         "size tolerates no more failures than one peer fewer; use 1, 3 or 5")
        names: set[str] = set()
        for i, peer in enumerate(site.peers):
            if peer.name in names:
                problems.add(at.file, at.line("peers", i, "name"), "duplicate-id",
                             f"site {site.id!r}: peer name {peer.name!r} is used twice")
            names.add(peer.name)
            peer_subnet = site.subnet(peer.subnet) if peer.subnet else next(
                (s for s in site.subnets if peer.address in s.cidr), None)
            if peer.subnet and peer_subnet is None:
                problems.add(at.file, at.line("peers", i, "subnet"), "dangling-reference",
                             f"peer {peer.name!r}: subnet {peer.subnet!r} is not a subnet of "
                             f"site {site.id!r}")
            elif peer_subnet is None or peer.address not in peer_subnet.cidr:
                problems.add(at.file, at.line("peers", i, "address"), "address-outside-subnet",
                             f"peer {peer.name!r}: address {peer.address} is in no subnet of "
                             f"site {site.id!r}")
            elif peer.address == peer_subnet.gateway:
                problems.add(at.file, at.line("peers", i, "address"), "address-collision",
                             f"peer {peer.name!r}: address {peer.address} is the gateway of "
                             f"subnet {subnet.id!r}")


_DUPLICATE_CODES = {"MAC": "mac", "IPv4 address": "ipv4", "hostname": "hostname",
                    "UUID": "uuid", "serial": "serial", "asset tag": "asset-tag"}


def check_hosts(sot: Sot, problems: Problems, clean: frozenset[bytes] = frozenset()
                ) -> frozenset[bytes]:
    """Each host alone (its workflow, boot interface, addresses in their subnets), then every
    identity across hosts. `clean`: the verdict keys of hosts a parent revision found
    nothing wrong with alone; a host whose inputs (its document, its site's file, whether
    its workflow exists) give a key in it is not checked alone again. Returns the keys of
    this revision's clean hosts, for the next."""
    peers_by_site = {
        sid: {p.address: p.name for p in site.peers} for sid, site in sot.sites.items()
    }
    site_keys = {sid: _defined_by(sot, "site", sid) for sid in sot.sites}
    found: set[bytes] = set()
    for entry in sot.hosts.values():
        wid = entry.host.workflow
        key = hashlib.sha1(f"{entry.key}|{entry.site}|{site_keys[entry.site]}|"
                           f"{wid in sot.workflows}|{('workflow', wid) in sot.broken}".encode()
                           ).digest()
        if key not in clean:
            alone: list[tuple[str, int, str, str]] = []
            _check_host_alone(sot, entry, peers_by_site[entry.site], alone)
            if alone:
                for problem in alone:
                    problems.add(*problem)
                continue
        found.add(key)
    _check_identities(sot, problems)
    return frozenset(found)


def _defined_by(sot: Sot, kind: str, ident: str) -> str:
    """The digest of the file that defines (kind, ident): what it says changes with it."""
    located = sot.at.get((kind, ident))
    unit = sot.units.get(located.file) if located is not None else None
    return unit.digest if unit is not None else "-"


def _check_host_alone(sot: Sot, entry: HostEntry, peers: dict[IPv4Address, str],
                      out: list[tuple[str, int, str, str]]) -> None:
    host, site = entry.host, sot.sites[entry.site]
    if host.workflow not in sot.workflows and ("workflow", host.workflow) not in sot.broken:
        out.append((entry.at.file, entry.at.line("workflow"), "dangling-reference",
                    f"host {host.name!r}: workflow {host.workflow!r} does not exist in "
                    f"workflows/{_known(sot.workflows)}"))
    if host.boot_interface() is None and not host.never_provision:
        out.append((entry.at.file, entry.at.line("interfaces"), "no-boot-interface",
                    f"host {host.name!r} has no physical interface that takes DHCP, so it "
                    "cannot netboot; add one or set never_provision: true"))
    for i, iface in enumerate(host.interfaces):
        subnet = site.subnet(iface.subnet)
        if subnet is None:
            out.append((entry.at.file, entry.at.line("interfaces", i, "subnet"),
                        "dangling-reference",
                        f"host {host.name!r}: subnet {iface.subnet!r} is not a subnet of "
                        f"site {site.id!r}{_known({s.id: s for s in site.subnets})}"))
            continue
        net = subnet.cidr
        if iface.ipv4 not in net:
            code, what = "address-outside-subnet", f"is outside subnet {subnet.id!r} ({net})"
        elif iface.ipv4 in (net.network_address, net.broadcast_address) and net.prefixlen < 31:
            code = "address-collision"
            what = ("is the network" if iface.ipv4 == net.network_address
                    else "is the broadcast") + f" address of {net}"
        elif iface.ipv4 == subnet.gateway:
            code, what = "address-collision", f"is the gateway of subnet {subnet.id!r}"
        elif iface.ipv4 in peers:
            code, what = "address-collision", f"is the address of peer {peers[iface.ipv4]!r}"
        else:
            continue
        # A line costs a parse of the file again (revision.py): only for a problem.
        line = entry.at.line("interfaces", i, "ipv4") or entry.at.line("interfaces", i)
        out.append((entry.at.file, line, code, f"host {host.name!r}: {iface.ipv4} {what}"))
    names: dict[str, int] = {}
    for i, iface in enumerate(host.interfaces):
        if iface.identifier is None:
            continue
        if iface.identifier in names:
            out.append((entry.at.file, entry.at.line("interfaces", i, "identifier"),
                        "duplicate-identifier",
                        f"host {host.name!r}: interfaces {names[iface.identifier]} and {i} "
                        f"are both {iface.identifier!r}; an identifier names one interface"))
        else:
            names[iface.identifier] = i


def _some_identity_twice(sot: Sot) -> bool:
    """Whether any identity is used twice, by counting: in C, and all a valid revision of
    10,000 hosts needs (the exact pass below costs ten times as much)."""
    hosts = [e.host for e in sot.hosts.values()]
    ifaces = [i for h in hosts for i in h.interfaces]
    hostnames = [n for h in hosts for n in {i.hostname or (h.name if i is h.boot_interface()
                                                           else None) for i in h.interfaces}
                 if n]
    return any(len(set(values)) != len(values) for values in (
        [i.mac for i in ifaces], [int(i.ipv4) for i in ifaces], hostnames,
        [h.uuid for h in hosts if h.uuid is not None], [h.serial for h in hosts if h.serial],
        [h.asset_tag for h in hosts if h.asset_tag]))


def _check_identities(sot: Sot, problems: Problems) -> None:
    """MACs, addresses, hostnames, UUIDs, serials and asset tags: each used by one host;
    a second use is reported at the second host, naming the first."""
    if not _some_identity_twice(sot):
        return
    macs: dict[str, HostEntry] = {}
    ips: dict[int, HostEntry] = {}  # by the address's integer: hashing one is ten times cheaper
    hostnames: dict[str, HostEntry] = {}
    uuids: dict[str, HostEntry] = {}
    serials: dict[str, HostEntry] = {}
    asset_tags: dict[str, HostEntry] = {}

    def dup(kind: str, value: object, first: HostEntry, entry: HostEntry, line: int) -> None:
        problems.add(entry.at.file, line, f"duplicate-{_DUPLICATE_CODES[kind]}",
                     f"host {entry.host.name!r}: {kind} {value} is already used by host "
                     f"{first.host.name!r} ({first.at.file}:{first.at.line('name')})")

    for entry in sot.hosts.values():
        host = entry.host
        boot = host.boot_interface()
        seen_macs: set[str] = set()
        seen_ips: set[int] = set()
        for i, iface in enumerate(host.interfaces):
            # (a host's own two interfaces sharing one is reported too)
            first = macs.setdefault(iface.mac, entry)
            if first is not entry or iface.mac in seen_macs:
                dup("MAC", iface.mac, first, entry, entry.at.line("interfaces", i, "mac"))
            seen_macs.add(iface.mac)
            address = int(iface.ipv4)
            first = ips.setdefault(address, entry)
            if first is not entry or address in seen_ips:
                dup("IPv4 address", iface.ipv4, first, entry,
                    entry.at.line("interfaces", i, "ipv4"))
            seen_ips.add(address)
            hostname = iface.hostname or (host.name if iface is boot else None)
            if hostname:
                first = hostnames.setdefault(hostname, entry)
                if first is not entry:
                    dup("hostname", hostname, first, entry,
                        entry.at.line("interfaces", i, "hostname"))
        for kind, value, table, field_name in (
                ("UUID", host.uuid and str(host.uuid), uuids, "uuid"),
                ("serial", host.serial, serials, "serial"),
                ("asset tag", host.asset_tag, asset_tags, "asset_tag")):
            if value:
                first = table.setdefault(value, entry)
                if first is not entry:
                    dup(kind, value, first, entry, entry.at.line(field_name))


def check_rollouts(sot: Sot, problems: Problems) -> None:
    """A rollout whose min_standing leaves no host to take down can never make progress."""
    for (site, cluster), entries in sot.clusters().items():
        by_workflow: dict[str, list[HostEntry]] = defaultdict(list)
        for e in entries:
            if not e.host.never_provision and e.host.workflow in sot.workflows:
                by_workflow[e.host.workflow].append(e)
        if sot.host_documents.get((site, cluster), 0) > len(entries) or any(
                e.host.workflow not in sot.workflows for e in entries):
            continue  # some hosts are invalid or dangling: the counts are not known yet
        for wid, members in by_workflow.items():
            rollout = sot.workflows[wid].rollout
            if rollout.on_change == "reinstall" and rollout.min_standing >= len(members) > 0:
                at = sot.at[("workflow", wid)]
                problems.add(at.file, at.line("rollout", "min_standing"), "rollout-stuck",
                             f"workflow {wid!r}: min_standing {rollout.min_standing} leaves no "
                             f"host of cluster {site}/{cluster} ({len(members)} hosts) free to "
                             "update; lower min_standing or add hosts")


def _dhcp_fingerprint(sot: Sot, entry: HostEntry, subnet_digests: dict[tuple[str, str], str]
                      ) -> str:
    parts = []
    for iface in entry.host.interfaces:
        if iface.type != "physical" or iface.ignore_dhcp:
            continue
        key = (entry.site, iface.subnet)
        if key not in subnet_digests:
            subnet = sot.sites[entry.site].subnet(iface.subnet)
            subnet_digests[key] = _digest(subnet.model_dump_json() if subnet else "")
        parts.append(f"{iface.mac}|{iface.ipv4}|{iface.hostname or entry.host.name}|"
                     f"{subnet_digests[key]}")
    netboot = subnet_digests.get((entry.site, "\0netboot"))
    if netboot is None:  # per site, not per host: a site's settings are one dump
        netboot = sot.sites[entry.site].netboot.model_dump_json()
        subnet_digests[(entry.site, "\0netboot")] = netboot
    parts.append(f"{entry.host.uuid}|{netboot}")
    return _digest("\n".join(parts))


def render_all(sot: Sot, problems: Problems, parent: ValidationResult | None = None,
               budget: RenderBudget = DEFAULT_BUDGET) -> ValidationResult:
    """Render every stage of every host once, in a worker bounded in time and memory (a
    commit is input: its templates are programs); report failures grouped by template.
    Hosts whose render key (render_keys) is in `parent` take its results unrendered: the
    keys are worked out here, and only the hosts without one go to the worker (no worker at
    all when none), so what crosses the pipe is what this compile rendered, not the fleet."""
    todo = _RenderTodo(sot, parent)
    fresh: dict[str, HostRenders] = {}
    verdicts: dict[Verdict, list[tuple[int, str]]] = {}
    parsed = 0
    if todo.entries:
        try:
            fresh, verdicts, parsed, compiled = run_bounded(
                _render_in_worker, sot, todo.entries, todo.known_verdicts, budget,
                seconds=budget.revision_seconds, memory_bytes=budget.worker_memory_bytes)
        except WorkerFailed as exc:
            problems.add("assets", 0, "render-budget",
                         f"the revision's templates could not all be rendered: {exc}")
            return ValidationResult(problems)
        COMPILED.adopt(compiled)
    return todo.assemble(problems, fresh, verdicts, parsed)


def _render_in_worker(sot: Sot, entries: list[tuple[HostEntry, str]],
                      known_verdicts: dict[Verdict, list[tuple[int, str]]], budget: RenderBudget
                      ) -> tuple[dict[str, HostRenders], dict[Verdict, list[tuple[int, str]]],
                                 int, dict[tuple[str, str], bytes]]:
    """`_render_hosts`, and the templates it compiled (for the parent to keep)."""
    COMPILED.collect()
    return (*_render_hosts(sot, entries, known_verdicts, budget), COMPILED.fresh())


def _render_all(sot: Sot, problems: Problems, parent: ValidationResult | None,
                budget: RenderBudget) -> ValidationResult:
    """`render_all` in this process, without a worker (benchmarks compare the two)."""
    todo = _RenderTodo(sot, parent)
    fresh, verdicts, parsed = _render_hosts(sot, todo.entries, todo.known_verdicts, budget)
    return todo.assemble(problems, fresh, verdicts, parsed)


class _RenderTodo:
    """The hosts a revision renders, each with its render key, and those of them whose key
    the parent revision has not rendered."""

    def __init__(self, sot: Sot, parent: ValidationResult | None) -> None:
        self.sot = sot
        self.known = parent.by_key if parent is not None else {}
        self.known_verdicts = parent.format_verdicts if parent is not None else {}
        keys = RenderKeys(sot)
        self.keyed: list[tuple[HostEntry, str]] = []
        self.entries: list[tuple[HostEntry, str]] = []
        queued: set[str] = set()
        resolves = {wid: _stages_resolve(sot, wf) for wid, wf in sot.workflows.items()}
        for entry in sot.hosts.values():
            if not resolves.get(entry.host.workflow):
                continue
            if sot.sites[entry.site].subnet((entry.host.boot_interface() or
                                             entry.host.interfaces[0]).subnet) is None:
                continue
            key = keys.host(entry)
            self.keyed.append((entry, key))
            if key not in self.known and key not in queued:
                queued.add(key)
                self.entries.append((entry, key))

    def assemble(self, problems: Problems, fresh: dict[str, HostRenders],
                 verdicts: dict[Verdict, list[tuple[int, str]]], parsed: int
                 ) -> ValidationResult:
        result = ValidationResult(problems)
        failures: dict[tuple[str, int, str], list[str]] = defaultdict(list)
        known = self.known
        for entry, key in self.keyed:
            done = known.get(key) or fresh[key]
            result.by_key[key] = done
            result.renders += done.renders
            for failure in done.failures:
                failures[failure].append(entry.host.name)
            result.fingerprints[entry.host.name] = done.fingerprint
        result.rendered_here = len(fresh)
        result.format_checks = parsed
        result.format_verdicts = verdicts
        for (file, line, message), hosts in failures.items():
            shown = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more"
                                            if len(hosts) > 3 else "")
            what = "host" if len(hosts) == 1 else f"{len(hosts)} hosts"
            problems.add(file, line, "render-failed", f"for {what} ({shown}): {message}")
        return result


def _render_hosts(sot: Sot, entries: list[tuple[HostEntry, str]],
                  known_verdicts: dict[Verdict, list[tuple[int, str]]], budget: RenderBudget
                  ) -> tuple[dict[str, HostRenders], dict[Verdict, list[tuple[int, str]]], int]:
    """Render `entries` (host, key): their results by key, the format verdicts used, and
    how many times a format parser ran."""
    renderer = Renderer(sot, NEUTRAL_REVISION, budget=budget)
    subnet_digests: dict[tuple[str, str], str] = {}
    checker = FormatChecker(known_verdicts)
    fresh: dict[str, HostRenders] = {}
    for entry, key in entries:
        workflow = sot.workflows[entry.host.workflow]
        fresh[key] = _render_host(sot, entry, workflow, renderer, checker, subnet_digests)
    return fresh, checker.verdicts, checker.parsed


def _render_host(sot: Sot, entry: HostEntry, workflow: Workflow, renderer: Renderer,
                 checker: FormatChecker, subnet_digests: dict[tuple[str, str], str]
                 ) -> HostRenders:
    failures: list[tuple[str, int, str]] = []
    stages = []
    renders = 0
    identity = checker.identity(entry)
    for index in range(1, len(workflow.stages) + 1):
        ipxe = config = ""
        try:
            ipxe, rendered = renderer.render_stage(entry, index)
            renders += 1
            stage = workflow.stages[index - 1]
            boot = sot.boots[stage.boot] if stage.boot else None
            if boot is not None and boot.ipxe:
                for line, message in checker.check("ipxe", ipxe, "", "", identity):
                    failures.append((f"assets/ipxe/{boot.ipxe}", line,
                                     f"rendered iPXE script {message}"))
            if rendered is not None and boot is not None:
                kind, config = rendered
                os_ = sot.os[boot.operating_system]
                key = f"{kind}/{boot.unattended.use}"  # type: ignore[union-attr]
                for line, message in checker.check(kind, config, os_.os_family,
                                                   os_.major_version, identity):
                    at, text = _in_template(sot, key, config, line, f"rendered {kind}")
                    failures.append((at, text[0], f"{text[1]} {message}"))
        except RenderError as exc:
            if not (sot.syntax_broken and exc.message.startswith("template syntax error")):
                failures.append((exc.file, exc.line, exc.message))
        stages.append(StageFingerprint(_digest(ipxe), _digest(config)))
    return HostRenders(HostFingerprint(_dhcp_fingerprint(sot, entry, subnet_digests),
                                       tuple(stages)), renders, tuple(failures))


def _in_template(sot: Sot, key: str, rendered: str, line: int, what: str
                 ) -> tuple[str, tuple[int, str]]:
    """Locate a validator's line of the rendered file in the template that made it."""
    asset = sot.assets.get(key)
    path = asset.path if asset else f"assets/{key}"
    mapped = template_line_of(asset.text, rendered, line) if asset else None
    if mapped is None or mapped == line:
        return path, (mapped or line, what)
    return path, (mapped, f"{what} (its line {line})")


def _stages_resolve(sot: Sot, workflow: Workflow) -> bool:
    """Render only what references resolve for: a dangling one is reported once, by itself."""
    for stage in workflow.stages:
        if stage.boot is None:
            continue
        boot = sot.boots.get(stage.boot)
        if boot is None or boot.operating_system not in sot.os:
            return False
        if boot.unattended and f"{boot.unattended.type}/{boot.unattended.use}" not in sot.assets:
            return False
        if boot.ipxe and f"ipxe/{boot.ipxe}" not in sot.assets:
            return False
    return True


@functools.lru_cache(maxsize=1024)
def _syntax_errors(text: str, path: str) -> tuple[tuple[int, str], ...]:
    """Content-addressed: the next revision does not parse an unchanged template again."""
    return tuple(template_syntax_errors(make_environment(Sot()), text, path))


def check_federation(sot: Sot, problems: Problems) -> None:
    """Every site of the rollout order exists and appears once; every site is in the order;
    a key belongs to one site only (a shared key would let one site speak for another)."""
    owners: dict[str, str] = {}
    for site in sot.sites.values():
        at = sot.at[("site", site.id)]
        for i, key in enumerate(site.federation.keys):
            if key in owners and owners[key] != site.id:
                problems.add(at.file, at.line("federation", "keys", i), "shared-site-key",
                             f"site {site.id!r}: this key is also declared by site "
                             f"{owners[key]!r}; every site signs with its own key")
            owners.setdefault(key, site.id)
    rollout = sot.federation.rollout if sot.federation else None
    if rollout is None:
        return
    at = sot.at[("federation", "federation")]
    field = ("rollout", "waves") if rollout.waves else ("rollout", "order")
    seen: set[str] = set()
    for name in rollout.sites():
        if name not in sot.sites:
            problems.add(at.file, at.line(*field), "dangling-reference",
                         f"the rollout order names site {name!r}, which has no "
                         f"sites/{name}/env.yml{_known(sot.sites)}")
        elif name in seen:
            problems.add(at.file, at.line(*field), "duplicate-id",
                         f"site {name!r} appears twice in the rollout order")
        seen.add(name)
    for name in sorted(set(sot.sites) - seen):
        problems.add(at.file, at.line(*field), "site-not-in-order",
                     f"site {name!r} is not in the rollout order: add it to a wave (a site "
                     "left out would never know when to apply)")


def check_templates(sot: Sot, problems: Problems) -> None:
    """Parse every asset, used or not and whatever else failed: each syntax error, once."""
    for key in sorted(sot.assets):
        asset = sot.assets[key]
        for line, message in _syntax_errors(asset.text, asset.path):
            sot.syntax_broken.add(asset.path)
            problems.add(asset.path, line, "template-syntax",
                         f"template syntax error: {message}")


def validate_sot(sot: Sot, problems: Problems, parent: ValidationResult | None = None
                 ) -> ValidationResult:
    """Every check; `parent` (the previous revision's result) only saves rendering work."""
    check_templates(sot, problems)
    check_sites(sot, problems)
    check_federation(sot, problems)
    check_references(sot, problems)
    clean = check_hosts(sot, problems, parent.clean_hosts if parent is not None else frozenset())
    check_rollouts(sot, problems)
    result = render_all(sot, problems, parent)
    result.clean_hosts = clean
    return result
