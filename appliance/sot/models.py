"""The SoT schema: pydantic models of every document in a source-of-truth repository.

Names follow the original Vaquero data model (env, subnets, hosts with interfaces, os, boot
with `unattended {type, use}`, workflows) so its users feel at home. What Vaquero lacked is
added here: a sha256 on every downloaded artifact, an explicit rollout policy, and BMC
credentials referenced by name (the secret itself lives on the peers, never in git).

Every model forbids unknown fields: a typo in a key must be an error, not a silent default.
"""

from __future__ import annotations

import base64
import binascii
import re
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOSTNAME_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

UNATTENDED_TYPES = ("cloud-config", "ignition", "kickstart", "preseed", "untyped")
ASSET_TYPES = (*UNATTENDED_TYPES, "ipxe")


def _check_id(value: str) -> str:
    if not _ID_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid id: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    return value


def _check_hostname(value: str) -> str:
    if not _HOSTNAME_RE.match(value) or len(value) > 253:
        raise ValueError(
            f"{value!r} is not a valid hostname: use letters, digits and '-' in labels "
            "separated by '.', no label starting or ending with '-'"
        )
    return value.lower()


def _normalize_mac(value: Any) -> Any:
    if isinstance(value, int):  # YAML 1.1 reads some unquoted MACs as sexagesimal ints
        raise ValueError("write the MAC address in quotes: YAML read it as a number")
    if not isinstance(value, str):
        return value
    mac = value.strip().lower()
    if not _MAC_RE.match(mac):
        raise ValueError(
            f"{value!r} is not a MAC address: write six hex pairs like 52:54:00:12:34:56"
        )
    return mac.replace("-", ":")


def _sha256_text(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("write the sha256 in quotes: YAML read these digits as a number")
    return value


def _check_sha256(value: str) -> str:
    value = value.strip().lower()
    if not _SHA256_RE.match(value):
        raise ValueError(f"{value!r} is not a sha256: expected 64 hex digits (`sha256sum FILE`)")
    return value


# What firmware reports when nobody set a serial or asset tag: shared by whole batches of
# machines, so never an identity (the boot path ignores them too).
PLACEHOLDER_IDENTITIES = frozenset({
    "", "0", "none", "null", "n/a", "na", "default string", "not specified", "not applicable",
    "to be filled by o.e.m.", "to be filled by oem", "system serial number",
    "chassis serial number",
    "asset tag", "no asset tag", "asset-1234567890", "0123456789", "1234567890", "123456789",
    "serial", "unknown", "invalid", "not available", "empty", "xxxxxxxxxx",
})


def is_placeholder_identity(value: str) -> bool:
    return value.strip().lower() in PLACEHOLDER_IDENTITIES


def _check_smbios_string(value: str) -> str:
    value = value.strip()
    if is_placeholder_identity(value):
        raise ValueError(f"{value!r} is what firmware reports when nothing was set; machines "
                         "share it, so it cannot identify one: use the real value or leave "
                         "the field out")
    if len(value) > 64 or not value.isprintable():
        raise ValueError(f"{value!r} is not an SMBIOS string (printable, at most 64 "
                         "characters)")
    return value


def _as_str(value: Any) -> Any:
    """YAML reads `major_version: 3815` as an int; versions are strings."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[str, AfterValidator(_check_id)]
Hostname = Annotated[str, AfterValidator(_check_hostname)]
Mac = Annotated[str, BeforeValidator(_normalize_mac)]
Sha256 = Annotated[str, BeforeValidator(_sha256_text), AfterValidator(_check_sha256)]
VersionStr = Annotated[str, BeforeValidator(_as_str)]
Metadata = dict[str, Any]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- env.yml -------------------------------------------------------------------------------

DhcpOptionType = Literal[
    "string", "uint8", "uint16", "uint32", "int8", "int16", "int32", "bool",
    "addresses", "base64", "hex",
]
_INT_RANGES = {
    "uint8": (0, 2**8 - 1), "uint16": (0, 2**16 - 1), "uint32": (0, 2**32 - 1),
    "int8": (-(2**7), 2**7 - 1), "int16": (-(2**15), 2**15 - 1), "int32": (-(2**31), 2**31 - 1),
}
# Options the server computes itself from the subnet and the host; setting them by hand
# would contradict the reservation.
RESERVED_DHCP_OPTIONS = {0, 1, 3, 6, 12, 15, 28, 42, 50, 51, 53, 54, 55, 57, 61, 66, 67, 82, 255}


class DhcpOption(Strict):
    """An extra DHCP option for a subnet (RFC 2132 / IANA numbering), as in Vaquero."""

    option: Annotated[int, Field(ge=1, le=254)]
    type: DhcpOptionType
    value: str | int | bool | list[str]

    @model_validator(mode="after")
    def _value_fits_type(self) -> DhcpOption:
        self.encode()
        if self.option in RESERVED_DHCP_OPTIONS:
            raise ValueError(
                f"option {self.option} is computed from the subnet and host; "
                "set the matching subnet field instead"
            )
        return self

    def encode(self) -> bytes:
        """The option's payload as sent on the wire (compiled once per revision)."""
        t, v = self.type, self.value
        if t == "string":
            return str(v).encode()
        if t == "bool":
            if not isinstance(v, bool):
                raise ValueError(f"value {v!r} is not a bool (write true or false)")
            return bytes([int(v)])
        if t in _INT_RANGES:
            lo, hi = _INT_RANGES[t]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"value {v!r} is not an {t} ({lo}..{hi})")
            size = int(t.lstrip("uint")) // 8
            return v.to_bytes(size, "big", signed=not t.startswith("u"))
        if t == "addresses":
            items = v if isinstance(v, list) else str(v).split(",")
            try:
                return b"".join(IPv4Address(str(a).strip()).packed for a in items)
            except ValueError as exc:
                raise ValueError(f"value {v!r} is not a list of IPv4 addresses: {exc}") from None
        if t == "base64":
            try:
                return base64.b64decode(str(v), validate=True)
            except binascii.Error:
                raise ValueError(f"value {v!r} is not base64") from None
        try:  # hex
            return bytes.fromhex(str(v).replace(":", ""))
        except ValueError:
            raise ValueError(f"value {v!r} is not hex bytes like 01:02:ff") from None


class Subnet(Strict):
    id: Id
    cidr: IPv4Network
    gateway: IPv4Address | None = None
    dns: list[IPv4Address] = []
    ntp: list[str] = []
    domain: Hostname | None = None
    vlan: Annotated[int, Field(ge=1, le=4094)] | None = None
    mtu: Annotated[int, Field(ge=576, le=9216)] | None = None
    lease_time: Annotated[int, Field(ge=60)] = 86400
    dhcp_options: list[DhcpOption] = []
    metadata: Metadata = {}

    @field_validator("cidr", mode="before")
    @classmethod
    def _network_address(cls, value: Any) -> Any:
        if isinstance(value, str) and "/" in value:
            try:
                IPv4Network(value)
            except ValueError:
                net = IPv4Network(value, strict=False)
                raise ValueError(
                    f"{value!r} has host bits set: the network is {net.with_prefixlen}"
                ) from None
        return value


class Peer(Strict):
    """A peer appliance of the site, by its address on the boot network."""

    name: Id
    address: IPv4Address
    subnet: Id | None = None


class Netboot(Strict):
    """How the site's peers serve the boot network."""

    dhcp_mode: Literal["server", "proxy"] = "server"
    http_port: Annotated[int, Field(ge=1, le=65535)] = 80
    # The URL hosts use for scripts, configs, artifacts and phone-home. It must reach every
    # peer (a DNS name with every peer's address, or a VIP); it defaults to the first peer.
    boot_url: str | None = None
    ipxe_bios: str = "undionly.kpxe"
    ipxe_uefi: str = "snponly.efi"
    ipxe_arm64: str = "snp-arm64.efi"

    @field_validator("boot_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/") if value else value


class Policy(Strict):
    """The site's gates and defaults for applying revisions."""

    install_new_hosts: bool = True
    # The original Vaquero's `force_provision`: every revision applied reinstalls every host
    # of the site that has a workflow (never_provision hosts excepted), changed or not.
    force_provision: bool = False
    approval: Literal["manual", "auto_rerender"] = "manual"
    required_status_contexts: list[str] = []
    signed_commits: bool = False


def _check_public_key(value: str) -> str:
    """`ed25519:<base64 of the 32-byte raw public key>`, as `vaq-peer federation-key` prints."""
    kind, _, b64 = value.strip().partition(":")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if kind != "ed25519" or len(raw) != 32:
        raise ValueError(f"{value[:60]!r} is not a site key: write `ed25519:` and the base64 "
                         "of the 32-byte public key (`vaq-peer federation-key FILE` prints it)")
    return f"ed25519:{b64}"


PublicKey = Annotated[str, AfterValidator(_check_public_key)]


class SiteFederation(Strict):
    """How other sites verify and reach this one. Public keys are not secrets: the private
    key lives in a file on the site's peers (peer config `federation.key_file`). Several keys
    while one is rotated: a summary is accepted if it verifies against any of them."""

    keys: list[PublicKey] = []
    # API URLs of the site's peers that other sites push summaries to; default
    # http://<peer address>:<netboot.http_port> of every peer.
    endpoints: list[Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")]] = []


class Site(Strict):
    """`sites/<site>/env.yml`."""

    id: Id
    name: str | None = None
    subnets: Annotated[list[Subnet], Field(min_length=1)]
    peers: list[Peer] = []
    netboot: Netboot = Netboot()
    policy: Policy = Policy()
    federation: SiteFederation = SiteFederation()
    metadata: Metadata = {}

    def federation_endpoints(self) -> list[str]:
        if self.federation.endpoints:
            return [e.rstrip("/") for e in self.federation.endpoints]
        return [f"http://{p.address}:{self.netboot.http_port}" for p in self.peers]

    def subnet(self, subnet_id: str) -> Subnet | None:
        for s in self.subnets:
            if s.id == subnet_id:
                return s
        return None

    def boot_url(self) -> str:
        if self.netboot.boot_url:
            return self.netboot.boot_url
        if self.peers:
            port = self.netboot.http_port
            suffix = "" if port == 80 else f":{port}"
            return f"http://{self.peers[0].address}{suffix}"
        return "http://boot.invalid"


# --- hosts (cluster files) -----------------------------------------------------------------


class Bmc(Strict):
    """How a host is powered. `credentials` names an entry in the peers' secrets file."""

    type: Literal["ipmi", "redfish"]
    address: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    credentials: Id
    system_id: VersionStr | None = None  # Redfish system id ("1" on iLO); found if absent
    verify_tls: bool = True


class Interface(Strict):
    type: Literal["physical", "bmc"]
    mac: Mac
    subnet: Id
    ipv4: IPv4Address
    hostname: Hostname | None = None
    ignore_dhcp: bool = False
    bmc: Bmc | None = None
    # The original Vaquero's interface name on the host (eth0, p6p1): for templates, and a
    # way to tell interfaces apart where a MAC is not known.
    identifier: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @model_validator(mode="after")
    def _bmc_only_on_bmc(self) -> Interface:
        if self.type == "bmc" and self.bmc is None:
            raise ValueError("an interface of type bmc needs a `bmc` block (type, credentials)")
        if self.type == "physical" and self.bmc is not None:
            raise ValueError("`bmc` belongs on the interface of type bmc, not on a physical one")
        return self


class Host(Strict):
    """One machine: one YAML document in a cluster file."""

    name: Hostname
    interfaces: Annotated[list[Interface], Field(min_length=1)]
    uuid: UUID | None = None
    # SMBIOS system serial number and chassis asset tag: iPXE's ${serial} and ${asset}
    serial: Annotated[str, BeforeValidator(_as_str),
                      AfterValidator(_check_smbios_string)] | None = None
    asset_tag: Annotated[str, BeforeValidator(_as_str),
                         AfterValidator(_check_smbios_string)] | None = None
    workflow: Id
    never_provision: bool = False
    metadata: Metadata = {}

    def boot_interface(self) -> Interface | None:
        """The first physical interface that takes DHCP: the one the host netboots from."""
        for i in self.interfaces:
            if i.type == "physical" and not i.ignore_dhcp:
                return i
        return None

    def bmc_interface(self) -> Interface | None:
        for i in self.interfaces:
            if i.type == "bmc":
                return i
        return None


# --- os/ boot/ workflows/ ------------------------------------------------------------------


class Artifact(Strict):
    """A file a host downloads (kernel, initrd); peers cache and verify it by sha256."""

    url: str
    sha256: Sha256
    name: str | None = None
    size: Annotated[int, Field(ge=0)] | None = None

    @field_validator("url")
    @classmethod
    def _fetchable(cls, value: str) -> str:
        if not re.match(r"^(https?|file)://\S+$", value):
            raise ValueError(f"{value!r} is not an http(s):// or file:// URL")
        return value

    @property
    def filename(self) -> str:
        return self.name or self.url.rstrip("/").rsplit("/", 1)[-1]


class OsBoot(Strict):
    kernel: Artifact
    initrd: list[Artifact] = []


CmdlineValue = str | int | float | bool | None | list[Any]


def _one_key(entry: dict[str, Any]) -> dict[str, Any]:
    if len(entry) != 1:
        raise ValueError(f"this entry has {len(entry)} keys: each cmdline entry is a one-key "
                         "map like `- console: ttyS0,115200`")
    return entry


CmdlineEntry = Annotated[dict[str, CmdlineValue], AfterValidator(_one_key)]


class OperatingSystem(Strict):
    """`os/*.yml`: what to boot, and the kernel command line as Vaquero's list of one-key maps."""

    id: Id
    name: str | None = None
    os_family: str
    major_version: VersionStr
    minor_version: VersionStr | None = None
    release_name: str | None = None
    boot: OsBoot
    cmdline: list[CmdlineEntry] = []


class Unattended(Strict):
    type: Literal["cloud-config", "ignition", "kickstart", "preseed", "untyped"]
    use: str


class Boot(Strict):
    """`boot/*.yml`: an operating system plus its unattended config: one network boot."""

    id: Id
    name: str | None = None
    operating_system: Id
    unattended: Unattended | None = None
    ipxe: str | None = None  # a template in assets/ipxe/ replacing the generated script
    metadata: Metadata = {}


class HealthCheck(Strict):
    """A TCP connect or HTTP GET against the host's boot address, retried until it passes or
    `timeout` ends: a workflow's (after the last stage) or a stage's (after its phone-home)."""

    type: Literal["http", "tcp"]
    port: Annotated[int, Field(ge=1, le=65535)]
    path: str = "/"
    expect_status: Annotated[int, Field(ge=100, le=599)] = 200
    timeout: Annotated[int, Field(ge=1)] = 300


class ShutdownHook(HealthCheck):
    """A request the leader makes to the host before it power-cycles the machine out of the
    stage that names it (the original Vaquero's per-boot `before_shutdown`): drain a node,
    hand off a lease. Retried until it answers `expect_status` (or, tcp, accepts) or its
    `timeout` ends, so the endpoint must be idempotent; failing it holds the host, unpowered."""

    name: Id | None = None
    method: Literal["GET", "POST", "PUT", "DELETE"] = "POST"
    timeout: Annotated[int, Field(ge=1, le=3600)] = 60

    @property
    def label(self) -> str:
        what = f"{self.method} :{self.port}{self.path}" if self.type == "http" else \
            f"tcp :{self.port}"
        return f"{self.name} ({what})" if self.name else what


class Stage(Strict):
    """One network boot of a workflow, or (`local: true`) a boot from the installed disk whose
    phone-home proves the install came up."""

    boot: Id | None = None
    local: bool = False
    name: Id | None = None
    timeout: Annotated[int, Field(ge=10)] = 3600  # seconds to wait for the phone-home
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    # checked after this stage's phone-home; the next stage is not powered until it passes
    # (the original Vaquero's per-boot `validate`); failing it fails the host
    health: HealthCheck | None = None
    # run by the leader, in order, before it power-cycles the machine out of this stage: into
    # the next stage, or (the last stage) into stage 1 of a reinstall
    before_shutdown: Annotated[list[ShutdownHook], Field(max_length=8)] = []

    @model_validator(mode="after")
    def _boot_or_local(self) -> Stage:
        if (self.boot is None) == (not self.local):
            raise ValueError("a stage names a `boot`, or sets `local: true` to boot the disk; "
                             "not both, not neither")
        return self

    @property
    def label(self) -> str:
        return self.name or self.boot or "local-disk"


class Rollout(Strict):
    max_concurrent: Annotated[int, Field(ge=1)] = 1
    min_standing: Annotated[int, Field(ge=0)] = 0
    max_fail: Annotated[int, Field(ge=0)] = 0
    # reinstall: changed hosts are reinstalled in batches. rerender: they only get their new
    # configs served (applied at their next provisioning, when an operator re-arms them).
    on_change: Literal["reinstall", "rerender"] = "reinstall"
    health: HealthCheck | None = None


class Workflow(Strict):
    """`workflows/*.yml`: ordered boot stages and how changes roll out."""

    id: Id
    name: str | None = None
    stages: Annotated[list[Stage], Field(min_length=1)]
    rollout: Rollout = Rollout()
    depends_on: list[Id] = []


# --- federation.yml (top level) --------------------------------------------------------------


class FederationRollout(Strict):
    """How a revision travels between sites: `waves` (each wave after the previous one is done
    and healthy for `soak` seconds), or `order` with at most `max_parallel` sites at once."""

    waves: list[Annotated[list[Id], Field(min_length=1)]] = []
    order: list[Id] = []
    max_parallel: Annotated[int, Field(ge=1)] = 1
    soak: Annotated[float, Field(ge=0, le=7 * 86400)] = 300
    # halt_all: a failed site halts every site that has not started (Nomad's fail_all);
    # halt_site: only the failed site stops, the others go on without it.
    on_failure: Literal["halt_all", "halt_site"] = "halt_all"

    @model_validator(mode="after")
    def _one_shape(self) -> FederationRollout:
        if bool(self.waves) == bool(self.order):
            raise ValueError("give exactly one of `waves` (lists of sites) or `order` (a list "
                             "of sites, with `max_parallel`)")
        return self

    def sites(self) -> list[str]:
        return [s for wave in self.waves for s in wave] if self.waves else list(self.order)


class Federation(Strict):
    """`federation.yml`: the cross-site rollout order and how summaries age."""

    rollout: FederationRollout | None = None
    interval: Annotated[float, Field(ge=0.5, le=3600)] = 5  # seconds between exchanges
    summary_ttl: Annotated[float, Field(ge=1, le=86400)] = 120  # older: stale
    # wait: a stale site holds the sites after it until it is heard from again; proceed: it
    # stops holding them once its last summary is `stale_timeout` seconds old.
    on_stale: Literal["wait", "proceed"] = "wait"
    stale_timeout: Annotated[float, Field(ge=0)] = 3600
