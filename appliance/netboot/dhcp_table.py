"""The DHCP boot table: what every peer answers, as immutable data compiled once per revision.

Hosts are declared, never discovered, so the table is the whole truth: static reservations,
identical on every peer, no leases to coordinate. The `*Spec` dataclasses are the input a
later step fills from the SoT model; `compile_table` turns them into `DhcpTable`, which holds
each reservation's options already encoded, so that answering a request is a dict lookup and
a header patch. Compile off the hot path (it validates and encodes everything) and hand the
result to `DhcpServer.swap_table`, which installs it with one reference assignment.
"""

from __future__ import annotations

import ipaddress
import struct
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from appliance.netboot import dhcp_codec as wire

# Boot variants: which boot file a client gets, from options 60, 77 and 93.
PLAIN, BIOS, UEFI, ARM64, HTTP, IPXE = "plain", "bios", "uefi", "arm64", "http", "ipxe"
UEFI_X86_ARCHES = frozenset({6, 7, 9})
ARCH_BIOS, ARCH_ARM64, ARCH_HTTP_X64 = 0, 11, 16

# Reply kinds.
OFFER, ACK, INFORM_ACK = "offer", "ack", "inform"
PROXY_OFFER, PROXY_ACK = "proxy-offer", "proxy-ack"

# PXE vendor options (option 43): discovery control 8 = "boot the file named in this offer,
# skip boot server discovery and menus", then the PXE END.
PXE_BOOT_FILE_ONLY = wire.encode_option(6, b"\x08") + b"\xff"
IPXE_ENCAP = 175
IPXE_NO_PXEDHCP = bytes((176, 1, 1))


@dataclass(frozen=True, slots=True)
class SubnetSpec:
    """One boot subnet; `extra_options` are raw (code, value) pairs appended as given."""

    cidr: str
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None
    ntp: tuple[str, ...] = ()  # IPv4 addresses only: option 42 carries no names
    lease_time: int = 86400
    mtu: int | None = None
    extra_options: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class BootFiles:
    """Boot file per client architecture; iPXE (user class "iPXE") gets the script URL."""

    ipxe_script_url: str
    bios: str = "undionly.kpxe"
    uefi: str = "snponly.efi"
    arm64: str = "snponly-arm64.efi"
    # UEFI HTTP boot (arch 16) fetches an EFI binary by URL; None: such clients get no answer.
    http_boot_url: str | None = None


@dataclass(frozen=True, slots=True)
class ReservationSpec:
    mac: str
    ipv4: str
    hostname: str
    subnet: str  # the cidr of one SubnetSpec
    boot: BootFiles
    uuid: str | None = None  # SMBIOS UUID, matched against option 97 when the MAC is unknown


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """This peer's address on each boot interface (option 54) and the TFTP next-server."""

    addresses: Mapping[str, str]  # interface name -> IPv4
    next_server: str


@dataclass(frozen=True, slots=True)
class TableSpec:
    subnets: tuple[SubnetSpec, ...]
    reservations: tuple[ReservationSpec, ...]
    server: ServerIdentity


def _ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not an Ethernet MAC: {text!r}")
    return raw


@dataclass(slots=True)
class Host:
    """One reservation with its options encoded; reply bodies are memoised per kind/variant."""

    hostname: str
    mac: bytes
    ip: bytes
    network: ipaddress.IPv4Network
    lease_opts: bytes  # address options with lease time (OFFER/ACK)
    inform_opts: bytes  # the same without lease time (ACK to INFORM)
    boot: BootFiles
    _bodies: dict[tuple[str, str], bytes | None] = field(default_factory=dict)
    net_addr: int = 0  # the subnet as integers, for a cheap "is this relay ours" test
    net_mask: int = 0

    def __post_init__(self) -> None:
        self.net_addr = int(self.network.network_address)
        self.net_mask = int(self.network.netmask)

    def on_subnet(self, address: bytes) -> bool:
        return int.from_bytes(address, "big") & self.net_mask == self.net_addr


@dataclass(frozen=True, slots=True)
class DhcpTable:
    """A compiled table for one server address. Immutable once built; swap, never mutate."""

    server_ip: bytes
    next_server: bytes
    by_mac: Mapping[bytes, Host]
    by_uuid: Mapping[bytes, Host]
    revision: str = ""

    def lookup(self, req: wire.Request) -> Host | None:
        """By hardware address first, then by option 97 (SMBIOS UUID) for NICs not declared."""
        host = self.by_mac.get(req.chaddr)
        if host is None and req.client_uuid is not None and len(req.client_uuid) == 17:
            host = self.by_uuid.get(req.client_uuid[1:])
        return host

    def body(self, host: Host, kind: str, variant: str) -> bytes | None:
        """The reply body (header + options, no END) for a kind and boot variant, or None
        when the host cannot boot that way (HTTP boot without a URL)."""
        key = (kind, variant)
        try:
            return host._bodies[key]
        except KeyError:
            pass
        body = self._build(host, kind, variant)
        host._bodies[key] = body  # racing builders produce equal bytes: no lock needed
        return body

    def _build(self, host: Host, kind: str, variant: str) -> bytes | None:
        bf = host.boot
        filename = {
            PLAIN: None,
            BIOS: bf.bios,
            UEFI: bf.uefi,
            ARM64: bf.arm64,
            HTTP: bf.http_boot_url,
            IPXE: bf.ipxe_script_url,
        }[variant]
        if variant != PLAIN and filename is None:
            return None
        msg_type = wire.OFFER if kind in (OFFER, PROXY_OFFER) else wire.ACK
        opts = [(wire.OPT_MESSAGE_TYPE, bytes((msg_type,))), (wire.OPT_SERVER_ID, self.server_ip)]
        proxy = kind in (PROXY_OFFER, PROXY_ACK)
        if variant == IPXE and not proxy:
            # iPXE's encapsulated option 175, setting 176 "no-pxedhcp" = 1: our answer is
            # complete, so iPXE need not wait ~2 s for a ProxyDHCP offer that never comes.
            opts.append((IPXE_ENCAP, IPXE_NO_PXEDHCP))
        if variant == HTTP:
            opts.append((wire.OPT_VENDOR_CLASS, b"HTTPClient"))
        elif proxy:
            # A proxy offer is only taken by a PXE ROM when it says PXEClient; option 43
            # tells it to boot the file named here instead of running boot server discovery.
            opts.append((wire.OPT_VENDOR_CLASS, b"PXEClient"))
            opts.append((wire.OPT_VENDOR_SPECIFIC, PXE_BOOT_FILE_ONLY))
        file_field = b""
        siaddr = wire.ZERO_IP
        if filename is not None:
            fname = filename.encode()
            siaddr = self.next_server
            file_field = fname if len(fname) <= 127 else b""
            if variant in (BIOS, UEFI, ARM64):
                opts.append((wire.OPT_TFTP_SERVER, str(ipaddress.IPv4Address(siaddr)).encode()))
            opts.append((wire.OPT_BOOTFILE, fname))
        header = wire.encode_header(
            htype=1,
            hlen=6,
            chaddr16=host.mac,
            yiaddr=host.ip if kind in (OFFER, ACK) else wire.ZERO_IP,
            siaddr=siaddr,
            file=file_field,
        )
        tail = b""
        if kind in (OFFER, ACK):
            tail = host.lease_opts
        elif kind == INFORM_ACK:
            tail = host.inform_opts
        return header + wire.encode_options(opts) + tail


@dataclass(slots=True)
class _EncodedSubnet:
    """A subnet's options encoded once; each host only adds its hostname (option 12)."""

    network: ipaddress.IPv4Network
    first: int  # first and last host address, as integers
    last: int
    common: bytes
    lease: bytes
    extra: bytes


def _encode_subnet(sub: SubnetSpec) -> _EncodedSubnet:
    net = ipaddress.IPv4Network(sub.cidr)
    common: list[tuple[int, bytes]] = [(wire.OPT_SUBNET_MASK, net.netmask.packed)]
    if sub.gateway:
        common.append((wire.OPT_ROUTER, _ip(sub.gateway)))
    if sub.dns:
        common.append((wire.OPT_DNS, b"".join(_ip(a) for a in sub.dns)))
    if sub.domain:
        common.append((wire.OPT_DOMAIN, sub.domain.encode()))
    if sub.mtu:
        common.append((wire.OPT_MTU, struct.pack("!H", sub.mtu)))
    common.append((wire.OPT_BROADCAST, net.broadcast_address.packed))
    if sub.ntp:
        common.append((wire.OPT_NTP, b"".join(_ip(a) for a in sub.ntp)))
    return _EncodedSubnet(
        network=net,
        first=int(net.network_address) + 1,
        last=int(net.broadcast_address) - 1,
        common=wire.encode_options(common),
        lease=wire.encode_option(wire.OPT_LEASE_TIME, struct.pack("!I", sub.lease_time)),
        extra=wire.encode_options(sub.extra_options),
    )


def compile_table(spec: TableSpec, interface: str, revision: str = "") -> DhcpTable:
    """Validate the spec and encode every reservation's options for the given interface.

    Raises ValueError on a contradiction (duplicate MAC, UUID or address, an address outside
    its subnet, an unknown subnet): a bad table must never replace a good one. Costs about
    30 us per reservation: run it off the event loop for large sites.
    """
    try:
        server_ip = _ip(spec.server.addresses[interface])
    except KeyError:
        raise ValueError(f"no server address for interface {interface!r}") from None
    subnets: dict[str, _EncodedSubnet] = {}
    for s in spec.subnets:
        enc = _encode_subnet(s)
        subnets[s.cidr] = subnets[str(enc.network)] = enc
    by_mac: dict[bytes, Host] = {}
    by_uuid: dict[bytes, Host] = {}
    seen_ip: set[bytes] = set()
    for r in spec.reservations:
        sub = subnets.get(r.subnet)
        if sub is None:
            sub = subnets.get(str(ipaddress.IPv4Network(r.subnet)))
            if sub is None:
                raise ValueError(f"{r.hostname}: subnet {r.subnet} is not declared")
        addr = ipaddress.IPv4Address(r.ipv4)
        if not sub.first <= int(addr) <= sub.last:
            raise ValueError(f"{r.hostname}: {addr} is not a host address of {sub.network}")
        mac = _mac(r.mac)
        if mac in by_mac:
            raise ValueError(f"{r.hostname}: MAC {r.mac} is reserved twice")
        packed = addr.packed
        if packed in seen_ip:
            raise ValueError(f"{r.hostname}: address {addr} is reserved twice")
        seen_ip.add(packed)
        name = wire.encode_option(wire.OPT_HOSTNAME, r.hostname.split(".")[0].encode())
        host = Host(
            r.hostname,
            mac,
            packed,
            sub.network,
            sub.common + name + sub.lease + sub.extra,
            sub.common + name + sub.extra,
            r.boot,
        )
        by_mac[mac] = host
        if r.uuid:
            u = uuidlib.UUID(r.uuid)
            # Firmware sends the SMBIOS bytes (first three fields little-endian), iPXE the
            # RFC 4122 order: index both, a collision between the two forms is negligible.
            for raw in {u.bytes, u.bytes_le}:
                if raw in by_uuid and by_uuid[raw] is not host:
                    raise ValueError(f"{r.hostname}: UUID {r.uuid} is reserved twice")
                by_uuid[raw] = host
    return DhcpTable(
        server_ip=server_ip,
        next_server=_ip(spec.server.next_server),
        by_mac=by_mac,
        by_uuid=by_uuid,
        revision=revision,
    )


def boot_variant(req: wire.Request) -> str:
    """Which boot file the client wants, from options 77, 60 and 93 (DESIGN "Boot chain")."""
    uc = req.user_class
    if uc is not None and b"iPXE" in uc:
        return IPXE
    vc = req.vendor_class or b""
    arches = wire.client_arches(req)
    if ARCH_HTTP_X64 in arches:
        return HTTP
    if vc.startswith(b"HTTPClient"):
        # Only x64 HTTP boot has a declared URL: an ARM64 (19) or IA32 (15) HTTP client must
        # not be handed an x64 binary; it gets an address and no boot file.
        return PLAIN if arches else HTTP
    if not vc.startswith(b"PXEClient"):
        return PLAIN
    arch = arches[0] if arches else ARCH_BIOS  # PXE 2.1 ROMs without option 93 are BIOS
    if arch == ARCH_BIOS:
        return BIOS
    if arch in UEFI_X86_ARCHES:
        return UEFI
    if arch == ARCH_ARM64:
        return ARM64
    return PLAIN
