"""Signed commits only: a gate that verifies a commit's SSH signature against the public keys
the peers trust (files in the peer config, never in the SoT they would judge).

dulwich extracts the signed payload. SSH signatures: dulwich runs `ssh-keygen -Y verify` with
an allowed-signers file; it verifies against the fixed identity `git`, so the file lists
every trusted key for any principal (`*`): what is trusted is the key, not a name. GPG
signatures: `gpg --verify` against a keyring private to the peer that holds only the trusted
keys, imported from the config at start, so a good signature is a trusted one.
"""

from __future__ import annotations

import subprocess
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

from appliance.errors import StartupError

log = structlog.get_logger("vaquero.source.signatures")


class SigningKeysError(StartupError):
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


def import_gpg_keys(armored: Path, home: Path) -> list[str]:
    """Import trusted public keys into a fresh keyring at `home`; return their fingerprints."""
    if home.exists():
        for stale in home.iterdir():  # the keyring is exactly the config's keys, every start
            if stale.is_file():
                stale.unlink()
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    try:
        result = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--status-fd=1",
                                 "--import", str(armored)], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SigningKeysError(f"cannot run gpg to import {armored}: {exc}") from None
    fingerprints = [line.split()[3] for line in result.stdout.decode(errors="replace")
                    .splitlines() if line.startswith("[GNUPG:] IMPORT_OK")]
    if result.returncode != 0 or not fingerprints:
        raise SigningKeysError(f"{armored}: no OpenPGP public key could be imported "
                               f"({result.stderr.decode(errors='replace').strip()[:200]})")
    return fingerprints


class CommitVerifier:
    def __init__(self, keys: list[str], gpg_home: Path | None = None) -> None:
        self._allowed = "".join(f"* {key}\n" for key in keys)
        self._gpg_home = gpg_home

    def _verify_gpg(self, payload: bytes, signature: bytes) -> str | None:
        if self._gpg_home is None:
            return "GPG signatures are not trusted here (no gpg_keys_file in the peer config)"
        with tempfile.TemporaryDirectory() as tmp:
            sig, data = Path(tmp) / "sig.asc", Path(tmp) / "data"
            sig.write_bytes(signature)
            data.write_bytes(payload)
            result = subprocess.run(["gpg", "--homedir", str(self._gpg_home), "--batch",
                                     "--status-fd=1", "--verify", str(sig), str(data)],
                                    capture_output=True, timeout=60)
        status = result.stdout.decode(errors="replace")
        if result.returncode == 0 and "[GNUPG:] VALIDSIG" in status:
            return None
        if "NO_PUBKEY" in status or "ERRSIG" in status:
            return "the signature is not by a trusted key (GPG key not in the trusted keys)"
        return "the GPG signature does not verify"

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
            kind = detect_signature_format(signature)
            if kind == "openpgp":
                return self._verify_gpg(payload, signature)
            if kind != "ssh":
                return f"{kind} signatures are not accepted (SSH or GPG only)"
            if not self._allowed:
                return "SSH signatures are not trusted here (no signing_keys_file)"
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
