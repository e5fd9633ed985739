"""Signed commits only: a gate that verifies a commit's SSH signature against the public keys
the peers trust (a file in the peer config, never in the SoT it would judge).

dulwich extracts the signed payload and runs `ssh-keygen -Y verify` with an allowed-signers
file. dulwich verifies against the fixed identity `git`, so the file lists every trusted key
for any principal (`*`): what is trusted is the key, not a name. GPG signatures are not
accepted yet (they would need a keyring on every peer).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import structlog
from dulwich.objects import Commit
from dulwich.repo import Repo
from dulwich.signature import (
    SignatureVerificationError,
    SSHCliSignatureVendor,
    detect_signature_format,
)

log = structlog.get_logger("vaquero.source.signatures")


class SigningKeysError(Exception):
    """The trusted keys file cannot be used."""


def load_signing_keys(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SigningKeysError(f"cannot read signing keys {path}: {exc.strerror}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for key in keys:
        if not key.startswith(("ssh-", "ecdsa-", "sk-")):
            raise SigningKeysError(f"{path}: {key[:30]!r}... is not an SSH public key line")
    if not keys:
        raise SigningKeysError(f"{path} lists no SSH public key")
    return keys


class CommitVerifier:
    def __init__(self, keys: list[str]) -> None:
        self._allowed = "".join(f"* {key}\n" for key in keys)

    def verify(self, repo_path: Path, sha: str) -> str | None:
        """None when the commit carries a valid signature by a trusted key; else the reason."""
        repo = Repo(str(repo_path))
        try:
            commit = repo[sha.encode()]
            if not isinstance(commit, Commit):
                return f"{sha} is not a commit"
            payload, signature, _ = commit.extract_signature()
            if signature is None:
                return "the commit is not signed"
            if detect_signature_format(signature) != "ssh":
                return "only SSH signatures are accepted (the commit has a GPG/X.509 one)"
            with tempfile.NamedTemporaryFile("w", suffix=".allowed_signers") as allowed:
                allowed.write(self._allowed)
                allowed.flush()
                vendor = SSHCliSignatureVendor(allowed_signers_file=allowed.name)
                try:
                    vendor.verify(payload, signature)
                except SignatureVerificationError as exc:
                    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "bad"
                    return f"the signature is not by a trusted key ({reason[:200]})"
            return None
        finally:
            repo.close()
