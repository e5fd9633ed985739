"""The boot table: everything the data plane serves for one applied revision, compiled once.

DESIGN: DHCP, TFTP and HTTP read an immutable table swapped atomically and never wait on
Raft. The table holds the DHCP reservations of the peer's site (as the DHCP server's
TableSpec), the host indexes by MAC, UUID, serial, asset tag and address, and a renderer
whose results are cached per host and stage. Every peer compiles the same table from the same SHA.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import structlog

from appliance.netboot.dhcp_table import (
    BootFiles,
    ReservationSpec,
    ServerIdentity,
    SubnetSpec,
    TableSpec,
)
from appliance.sot.loader import HostEntry
from appliance.sot.models import Artifact, Site, Subnet
from appliance.sot.render import Renderer, site_fallback_urls
from appliance.sot.revision import Revision

log = structlog.get_logger("vaquero.netboot.boottable")


def host_token(secret: bytes, host: str, stage: int, arming: str) -> str:
    """The phone-home token of one host, one stage, one arming: any peer of the site derives
    and checks the same one. The config of stage 1 (served without authentication) carries
    no token that reports stage 2 before stage 1, nor one that outlives a re-arming."""
    message = f"phone-home:{host}:{int(stage)}:{arming}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


@dataclass
class BootTable:
    revision: Revision
    site: Site
    base_url: str
    hosts: dict[str, HostEntry]
    by_mac: dict[str, str]
    by_uuid: dict[str, str]
    by_ip: dict[str, str]
    dhcp: TableSpec
    secret: bytes = field(repr=False)
    by_serial: dict[str, str] = field(default_factory=dict)  # SMBIOS serial number
    by_asset: dict[str, str] = field(default_factory=dict)  # SMBIOS chassis asset tag
    _renderer: Renderer | None = field(default=None, repr=False)
    _rendered: dict[tuple[str, int, str], tuple[str, tuple[str, str] | None]] = field(
        default_factory=dict, repr=False)
    _stage_counts: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def sha(self) -> str:
        return self.revision.sha

    @property
    def peer_urls(self) -> tuple[str, ...]:
        """Every base URL a machine may try, this peer's first."""
        return (self.base_url, *site_fallback_urls(self.site, self.base_url))

    def token(self, host: str, stage: int, arming: str) -> str:
        return host_token(self.secret, host, stage, arming)

    def stages(self, host: str) -> int:
        count = self._stage_counts.get(host)
        if count is None:  # asked on every script request: the model walk once per host
            entry = self.hosts[host]
            count = self._stage_counts[host] = len(
                self.revision.sot.workflows[entry.host.workflow].stages)
        return count

    def cached_stage_content(self, host: str, stage: int, arming: str
                             ) -> tuple[str, tuple[str, str] | None] | None:
        return self._rendered.get((host, stage, arming))

    def stage_content(self, host: str, stage: int, arming: str
                      ) -> tuple[str, tuple[str, str] | None]:
        """(iPXE script, (kind, config) or None), rendered once per arming with the tokens
        of this stage and of the next (an installer writes the next stage's phone-home into
        the system it installs); no other stage's token is ever rendered."""
        key = (host, stage, arming)
        cached = self._rendered.get(key)
        if cached is None:
            if self._renderer is None:
                self._renderer = Renderer(self.revision.sot, self.revision.sha,
                                          {self.site.id: self.base_url})
            tokens = {s: self.token(host, s, arming) for s in (stage, stage + 1)}
            cached = self._renderer.render_stage(self.hosts[host], stage, tokens)
            self._rendered[key] = cached
        return cached

    def artifacts(self) -> list[Artifact]:
        """Every artifact a host of this site may fetch under this revision."""
        sot = self.revision.sot
        seen: dict[str, Artifact] = {}
        for entry in self.hosts.values():
            for stage in sot.workflows[entry.host.workflow].stages:
                if stage.boot is None:
                    continue
                os_ = sot.os[sot.boots[stage.boot].operating_system]
                for a in (os_.boot.kernel, *os_.boot.initrd):
                    seen.setdefault(a.sha256, a)
        return list(seen.values())


def _subnet_spec(subnet: Subnet) -> SubnetSpec:
    ntp = []
    for server in subnet.ntp:
        try:
            ntp.append(str(IPv4Address(server)))
        except ValueError:
            log.info("dhcp.ntp_name_skipped", subnet=subnet.id, server=server,
                     reason="option 42 carries addresses only")
    return SubnetSpec(
        cidr=str(subnet.cidr), gateway=str(subnet.gateway) if subnet.gateway else None,
        dns=tuple(str(d) for d in subnet.dns), domain=subnet.domain, ntp=tuple(ntp),
        lease_time=subnet.lease_time, mtu=subnet.mtu,
        extra_options=tuple((o.option, o.encode()) for o in subnet.dhcp_options))


def compile_boot_table(revision: Revision, site_id: str, interface: str,
                       server_address: str, secret: bytes,
                       http_port: int | None = None) -> BootTable:
    """Compile the table this peer serves for `site_id`. The revision must be valid.
    `http_port`: where this peer serves boot HTTP, when its config overrides the site's."""
    if not revision.valid:
        raise ValueError(f"revision {revision.sha[:12]} is not valid; it cannot be served")
    sot = revision.sot
    site = sot.sites.get(site_id)
    if site is None:
        raise ValueError(f"site {site_id!r} is not in revision {revision.sha[:12]} "
                         f"(sites: {', '.join(sorted(sot.sites))})")
    # Unless the site names one boot URL (a VIP or load balancer), every peer points the
    # machines it answers at itself: any peer may be down, each serves the whole chain.
    port = http_port or site.netboot.http_port
    base = site.netboot.boot_url or (
        f"http://{server_address}" + ("" if port == 80 else f":{port}"))
    boot_files = BootFiles(
        ipxe_script_url=f"{base}/boot.ipxe", bios=site.netboot.ipxe_bios,
        uefi=site.netboot.ipxe_uefi, arm64=site.netboot.ipxe_arm64,
        http_boot_url=f"{base}/firmware/{site.netboot.ipxe_uefi}")
    hosts: dict[str, HostEntry] = {}
    by_mac: dict[str, str] = {}
    by_uuid: dict[str, str] = {}
    by_ip: dict[str, str] = {}
    by_serial: dict[str, str] = {}
    by_asset: dict[str, str] = {}
    reservations = []
    # A restarting peer compiles this before it answers anyone: the ipaddress and UUID
    # objects are turned into text once each (str() of one costs microseconds).
    cidrs = {subnet.id: str(subnet.cidr) for subnet in site.subnets}
    for name, entry in sot.hosts.items():
        if entry.site != site_id:
            continue
        hosts[name] = entry
        host = entry.host
        uuid = str(host.uuid) if host.uuid is not None else None
        if uuid is not None:
            by_uuid[uuid] = name
        if host.serial:
            by_serial[host.serial] = name
        if host.asset_tag:
            by_asset[host.asset_tag] = name
        boot_iface = host.boot_interface()
        for iface in host.interfaces:
            ipv4 = str(iface.ipv4)
            by_ip[ipv4] = name
            if iface.ignore_dhcp:
                continue
            by_mac[iface.mac] = name
            hostname = iface.hostname or (name if iface is boot_iface else f"{name}-{iface.type}")
            reservations.append(ReservationSpec(
                mac=iface.mac, ipv4=ipv4, hostname=hostname, subnet=cidrs[iface.subnet],
                boot=boot_files, uuid=uuid if iface is boot_iface else None))
    spec = TableSpec(
        subnets=tuple(_subnet_spec(s) for s in site.subnets),
        reservations=tuple(reservations),
        server=ServerIdentity(addresses={interface: server_address}, next_server=server_address))
    return BootTable(revision, site, base, hosts, by_mac, by_uuid, by_ip, spec, secret,
                     by_serial=by_serial, by_asset=by_asset)
