"""The start-up check of a peer config: every problem at once, each as `file:line: message`.

A peer that fails half-way through its start (a token file missing after Raft is up) is a
peer an operator fixes one error per restart. So before anything starts, `vaq-peer serve`
(and `vaq-peer serve --check`) reads the config and every file it names, with the same
loaders the peer uses, and reports all of it: the line is the config key that names the
file, so the operator knows where to look. Warnings (a secret readable by others, an API
without tokens) do not stop the peer.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PeerConfig, parse_config
from .sot.yamlsrc import Document

MIN_SHARED_SECRET = 16


def _missing(path: Path) -> bool:
    """Not there at all (an unreachable file, behind a directory this user may not enter,
    is not missing: creating it is not the fix)."""
    try:
        path.stat()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


@dataclass(frozen=True)
class Finding:
    file: str
    line: int | None
    message: str
    error: bool = True

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {'' if self.error else 'warning: '}{self.message}"


@dataclass
class CheckResult:
    config: PeerConfig | None
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return self.config is not None and not any(f.error for f in self.findings)

    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.error]


class _Checker:
    def __init__(self, path: Path, doc: Document | None) -> None:
        self.path, self.doc = path, doc
        self.findings: list[Finding] = []

    def line(self, loc: tuple[Any, ...]) -> int | None:
        return self.doc.line_of(loc) if self.doc is not None else None

    def add(self, loc: tuple[Any, ...], message: str, error: bool = True) -> None:
        self.findings.append(Finding(str(self.path), self.line(loc), message, error))

    def raw(self, loc: tuple[Any, ...]) -> Any:
        node: Any = self.doc.data if self.doc is not None else None
        for part in loc:
            found = (part in node if isinstance(node, dict) else
                     isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
            if not found:
                return None
            node = node[part]
        return node

    def file(self, loc: tuple[Any, ...], what: str) -> Path | None:
        """A file the config names at `loc`: it must exist and be readable."""
        value = self.raw(loc)
        if not isinstance(value, str) or not value:
            return None
        target = self.path.parent / value
        try:
            target.stat()
        except FileNotFoundError:
            self.add(loc, f"{what}: {target} does not exist")
            return None
        except OSError as exc:  # a directory on the way this user may not enter
            self.add(loc, f"{what}: {target} cannot be reached by this user ({exc.strerror}); "
                     "each directory on its path must be searchable by it")
            return None
        if not os.access(target, os.R_OK):
            self.add(loc, f"{what}: {target} is not readable by this user")
            return None
        return target

    def secret(self, loc: tuple[Any, ...], what: str, min_bytes: int = 1,
               shared: bool = False) -> None:
        """A secret file: readable, long enough, and not readable by others."""
        target = self.file(loc, what)
        if target is None:
            if isinstance(self.raw(loc), str) and _missing(self.path.parent / self.raw(loc)):
                hint = (f" (create it: `head -c 32 /dev/urandom | base64 > {self.raw(loc)}; "
                        f"chmod 600 {self.raw(loc)}`"
                        + (", then copy it to every peer of the site)" if shared else ")"))
                last = self.findings[-1]
                self.findings[-1] = Finding(last.file, last.line, last.message + hint)
            return
        if target.is_dir():
            self.add(loc, f"{what}: {target} is a directory, not a file")
            return
        size = len(target.read_bytes().strip())
        if size < min_bytes:
            self.add(loc, f"{what}: {target} holds {size} byte(s); use at least {min_bytes} "
                     "random characters (`head -c 32 /dev/urandom | base64`)")
        mode = target.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.add(loc, f"{what}: {target} is readable by others (mode "
                     f"{oct(mode & 0o777)}); `chmod 600 {target}`", error=False)

    def loader(self, loc: tuple[Any, ...], what: str, load: Any,
               errors: tuple[type[BaseException], ...]
               ) -> None:
        """A file read by the peer's own loader; its complaint, whole, is the finding."""
        target = self.file(loc, what)
        if target is None:
            return
        try:
            load(target)
        except errors as exc:
            for text in str(exc).splitlines():
                self.add(loc, f"{what}: {text}")


def _check_files(c: _Checker) -> None:
    from .power.secrets import SecretsError, load_bmc_secrets
    from .source.github import WebhookSecretError, load_webhook_secret
    from .source.signatures import SigningKeysError, load_signing_keys

    c.secret(("token_secret_file",), "the phone-home token key", MIN_SHARED_SECRET, shared=True)
    c.secret(("raft", "password_file"), "the Raft password", MIN_SHARED_SECRET, shared=True)
    tokens = c.raw(("api", "tokens"))
    for i, entry in enumerate(tokens if isinstance(tokens, list) else []):
        name = entry.get("name") if isinstance(entry, dict) else None
        c.secret(("api", "tokens", i, "file"), f"API token {name!r}", MIN_SHARED_SECRET)  # as auth
    c.secret(("source", "token_file"), "the git remote's token")
    c.secret(("github", "token_file"), "the GitHub status token")
    c.loader(("github", "webhook_secret_file"), "the GitHub webhook secret",
             load_webhook_secret, (WebhookSecretError,))
    c.loader(("bmc", "secrets_file"), "the BMC secrets file", load_bmc_secrets, (SecretsError,))
    c.loader(("pipeline", "signing_keys_file"), "the SSH signing keys",
             load_signing_keys, (SigningKeysError,))
    c.file(("pipeline", "gpg_keys_file"), "the OpenPGP signing keys")
    from .federation.keys import SiteKeyError, load_signing_key

    c.loader(("federation", "key_file"), "the site's federation signing key", load_signing_key,
             (SiteKeyError,))


def _check_places(c: _Checker, config: PeerConfig) -> None:
    """What the config says about this machine: directories, the interface, the SoT."""
    if config.sot is not None and config.sot.path is not None and not config.sot.path.is_dir():
        c.add(("sot", "path"), f"the SoT directory {config.sot.path} does not exist")
    if config.sot is not None and config.sot.git is not None:
        from dulwich.errors import NotGitRepository

        from .source.gittree import GitTree, RevisionNotFound

        try:
            GitTree(config.sot.git, config.sot.rev)
        except RevisionNotFound as exc:
            c.add(("sot",), str(exc))
        except (OSError, ValueError, NotGitRepository) as exc:  # not a repository at all
            c.add(("sot", "git"), f"{config.sot.git} is not a git repository ({exc})")
    parent = config.data_dir
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        c.add(("data_dir",), f"{config.data_dir} cannot be created or written by this user")
    needs_interface = config.dhcp.enabled or config.tftp.enabled
    if needs_interface and not Path("/sys/class/net", config.interface).exists():
        c.add(("interface",), f"no network interface {config.interface!r} on this machine "
              f"(have: {', '.join(sorted(os.listdir('/sys/class/net')))})")
    if config.tftp.enabled:
        for i, root in enumerate(config.tftp.roots):
            if not root.is_dir():
                c.add(("tftp", "roots", i), f"the TFTP root {root} does not exist (iPXE's "
                      "binaries: apt-get install ipxe)")
    host = config.raft.address.rpartition(":")[0].strip("[]")
    if not _local_address(host):
        c.add(("raft", "address"), f"{host} is not an address of this machine: the Raft node "
              "binds to it (set raft.address to this peer's own address on the peer network)")
    if not config.api.tokens:
        c.add(("api",), "no API tokens (`api.tokens`): the API will refuse every request; "
              "`vaq-peer init` writes one", error=False)


def _local_address(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                           socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
    except OSError as exc:
        return exc.errno != errno.EADDRNOTAVAIL and not isinstance(exc, socket.gaierror)
    return True


def check_config(path: str | Path) -> CheckResult:
    """Every problem of the config and the files it names; nothing is started."""
    path = Path(path)
    config, doc, problems = parse_config(path)
    findings = [_finding(text) for text in problems]
    checker = _Checker(path, doc)
    if doc is not None:
        _check_files(checker)
    if config is not None:
        _check_places(checker, config)
    ordered = sorted(findings + checker.findings, key=lambda f: f.line or 0)
    return CheckResult(config, ordered)


def _finding(text: str) -> Finding:
    where, _, message = text.partition(": ")
    file, _, line = where.rpartition(":")
    if file and line.isdigit():
        return Finding(file, int(line), message)
    return Finding(where, None, message)
