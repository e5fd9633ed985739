"""The peer's configuration: one YAML file, validated by pydantic, with file:line errors.

Secrets are never in this file: it names files (phone-home token secret, BMC credentials,
API tokens) that live on the peer with restrictive permissions.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.errors import StartupError

from .sot.loader import explain
from .sot.models import Id
from .sot.yamlsrc import Document, YamlError, load_documents

Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SotSource(_Strict):
    """Where this peer reads the revision it serves (until the Raft group feeds it)."""

    path: Path | None = None
    git: Path | None = None
    rev: str = "main"

    @model_validator(mode="after")
    def _one_source(self) -> SotSource:
        if (self.path is None) == (self.git is None):
            raise ValueError("give exactly one of `path` (a SoT directory) or `git` (a repository)")
        return self


class SourceConfig(_Strict):
    """Follow a git remote: every new commit of `ref` goes through the revision pipeline, and
    the data plane serves whatever revision the group applies."""

    url: str  # file://, git://, http(s)://, ssh://, or "local": this peer's own remote
    ref: str = "main"
    token_file: Path | None = None  # for http(s) remotes
    poll_interval: Annotated[float, Field(ge=1)] = 60.0
    poll_jitter: Annotated[float, Field(ge=0)] = 10.0


class RemoteConfig(_Strict):
    """Air-gapped sites: this peer is the SoT's git remote (`git push` to
    http://<peer>/git/sot.git; read tokens fetch, admin tokens push)."""

    enabled: bool = False
    max_push_mb: Annotated[int, Field(ge=1, le=4096)] = 256


class GithubConfig(_Strict):
    webhook_secret_file: Path | None = None  # enables POST /v1/hooks/github
    api_base: str = "https://api.github.com"
    repo: str | None = None  # owner/name, for commit statuses
    token_file: Path | None = None
    required_contexts: list[str] = []


class PipelineConfig(_Strict):
    require_manual_approval: bool = False  # even where the site allows auto_rerender
    approvals_required: Annotated[int, Field(ge=1, le=5)] = 1
    # Signed commits: SSH public keys trusted to sign SoT commits (one per line). Required
    # when the site policy says `signed_commits: true`, or when `require_signed_commits`.
    signing_keys_file: Path | None = None
    gpg_keys_file: Path | None = None  # ASCII-armored OpenPGP public keys, trusted likewise
    require_signed_commits: bool = False


class BmcConfig(_Strict):
    """Power control. Credentials live in this file, by the name the SoT gives each BMC."""

    secrets_file: Path | None = None
    max_sessions: Annotated[int, Field(ge=1, le=256)] = 8  # concurrent BMC sessions per peer


class HistoryConfig(_Strict):
    """Each host's events, kept on this peer's disk beyond the journal's 10,000-event ring."""

    max_events_per_host: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000
    max_age_days: Annotated[float, Field(gt=0)] = 365.0


class ConsoleConfig(_Strict):
    """Serial-over-LAN consoles of hosts in a stage, recorded by the leader (IPMI BMCs)."""

    enabled: bool = True
    max_bytes: Annotated[int, Field(ge=4096, le=1 << 30)] = 1 << 20  # per file, then rotated
    keep: Annotated[int, Field(ge=1, le=20)] = 3  # rotated files kept per host


class FederationConfig(_Strict):
    """This site's signing key (Ed25519, PEM): the same file on every peer of the site; its
    public key is declared in the site's env.yml (`federation.keys`). Without it the site
    still receives and verifies other sites' summaries but publishes none."""

    key_file: Path | None = None


class HttpConfig(_Strict):
    listen: str = "0.0.0.0"
    port: Port | None = None  # default: the site's netboot.http_port


class TftpConfig(_Strict):
    enabled: bool = True
    port: Port = 69
    roots: list[Path] = [Path("/usr/lib/ipxe")]


class DhcpConfig(_Strict):
    enabled: bool = True
    port: Port = 67
    proxy_port: Port = 4011


class RaftConfig(_Strict):
    """The peer group. Every peer lists the same `peers` (host:port on the peer network)."""

    address: str  # this peer's Raft address, host:port
    peers: list[str] = []  # all members, this one included; empty: a group of one
    password_file: Path  # shared secret: encrypts Raft traffic, same on every peer

    @model_validator(mode="after")
    def _self_listed(self) -> RaftConfig:
        if self.peers and self.address not in self.peers:
            raise ValueError(f"address {self.address} must be one of peers ({self.peers})")
        if len(self.peers) % 2 == 0 and self.peers:
            raise ValueError(f"{len(self.peers)} peers: use an odd number (1, 3 or 5)")
        return self


class ApiToken(_Strict):
    name: str
    role: Literal["read", "admin"] = "read"
    file: Path


class ApiConfig(_Strict):
    listen: str = "0.0.0.0"
    port: Port | None = None  # default: the boot HTTP port serves the API too
    # The URL other peers and `vaq-peer doctor` use to reach this API; recorded in the
    # replicated peer list. Default: http://<this peer's address>:<API port>.
    url: str | None = None
    tokens: list[ApiToken] = []


class WorkflowConfig(_Strict):
    """How long the leader waits for signs of a machine booting (seconds, on its own
    monotonic clock): a script fetch after a power step whose outcome it cannot know
    (evidence), and the kernel and initrds loaded after the script (silence)."""

    evidence_window: Annotated[float, Field(ge=5, le=86400)] = 600.0
    silence_window: Annotated[float, Field(ge=5, le=86400)] = 600.0


class PeerConfig(_Strict):
    site: Id
    peer: Id  # this peer's name in the site's env.yml
    data_dir: Path
    interface: str  # the boot network interface
    address: IPv4Address | None = None  # default: the peer's address in env.yml
    sot: SotSource | None = None  # a fixed revision to serve (tests, demos, a lab)
    source: SourceConfig | None = None  # or follow a git remote through the pipeline
    github: GithubConfig = GithubConfig()
    remote: RemoteConfig = RemoteConfig()
    bmc: BmcConfig = BmcConfig()
    pipeline: PipelineConfig = PipelineConfig()
    federation: FederationConfig = FederationConfig()
    token_secret_file: Path  # HMAC key for per-host phone-home tokens, same on every peer
    raft: RaftConfig
    api: ApiConfig = ApiConfig()
    http: HttpConfig = HttpConfig()
    tftp: TftpConfig = TftpConfig()
    dhcp: DhcpConfig = DhcpConfig()
    history: HistoryConfig = HistoryConfig()
    console: ConsoleConfig = ConsoleConfig()
    # Fetch every artifact of the applied revision at start, so a boot storm never waits on
    # the upstream mirror; off: fetched on first request.
    prefetch_artifacts: bool = True
    workflow: WorkflowConfig = WorkflowConfig()
    # Seconds added to this peer's wall clock, as if it had drifted: for tests that show no
    # decision depends on peers' clocks agreeing. Never set it on a real peer.
    clock_offset_s: Annotated[float, Field(ge=-86400, le=86400)] = 0.0
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _one_revision_source(self) -> PeerConfig:
        if (self.sot is None) == (self.source is None):
            raise ValueError("give exactly one of `sot` (a fixed SoT) or `source` (a git remote "
                             "to follow)")
        return self


class ConfigError(StartupError):
    """Every problem of a config file, one per line, each with file:line."""


def parse_config(path: str | Path) -> tuple[PeerConfig | None, Document | None, list[str]]:
    """The config (paths made absolute), its YAML document (for the line of any key), and
    every problem pydantic finds at once, each as `file:line: message`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        return None, None, [f"{path}: cannot read the peer config: {exc.strerror}"]
    try:
        docs = load_documents(text)
    except YamlError as exc:
        return None, None, [f"{path}:{exc.line}: {exc.message}"]
    if len(docs) != 1 or not isinstance(docs[0].data, dict):
        return None, None, [f"{path}:1: the peer config must be one YAML mapping"]
    doc = docs[0]
    try:
        config = PeerConfig.model_validate(doc.data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            _, sentence = explain(err, PeerConfig)
            lines.append(f"{path}:{doc.line_of(tuple(err['loc']))}: {sentence}")
        return None, doc, lines
    return _absolute(config, path.parent), doc, []


def load_config(path: str | Path) -> PeerConfig:
    """The config, or ConfigError with every problem of its YAML and fields (the files it
    names are checked by appliance.config_check, which `vaq-peer serve` runs first)."""
    config, _, problems = parse_config(path)
    if config is None:
        raise ConfigError("\n".join(problems))
    return config


def _absolute(config: PeerConfig, base: Path) -> PeerConfig:
    """Relative paths in the config are relative to the config file."""
    return config.model_copy(update={
        "data_dir": base / config.data_dir,
        "token_secret_file": base / config.token_secret_file,
        "sot": config.sot.model_copy(update={
            "path": base / config.sot.path if config.sot.path else None,
            "git": base / config.sot.git if config.sot.git else None}) if config.sot else None,
        "source": config.source.model_copy(update={
            "token_file": base / config.source.token_file if config.source.token_file
            else None}) if config.source else None,
        "bmc": config.bmc.model_copy(update={
            "secrets_file": base / config.bmc.secrets_file if config.bmc.secrets_file
            else None}),
        "pipeline": config.pipeline.model_copy(update={
            k: base / v for k, v in (("signing_keys_file", config.pipeline.signing_keys_file),
                                     ("gpg_keys_file", config.pipeline.gpg_keys_file)) if v}),
        "github": config.github.model_copy(update={
            k: base / v for k, v in (("webhook_secret_file", config.github.webhook_secret_file),
                                     ("token_file", config.github.token_file)) if v}),
        "federation": config.federation.model_copy(update={
            "key_file": base / config.federation.key_file if config.federation.key_file
            else None}),
        "tftp": config.tftp.model_copy(update={"roots": [base / r for r in config.tftp.roots]}),
        "raft": config.raft.model_copy(update={
            "password_file": base / config.raft.password_file}),
        "api": config.api.model_copy(update={"tokens": [
            t.model_copy(update={"file": base / t.file}) for t in config.api.tokens]}),
    })
