"""Site signing keys: the private key in a file on the site's peers, public keys in the SoT.

A key id (the first 16 hex digits of the SHA-256 of the raw public key) travels with every
signature, so a receiver picks the right key among a site's declared ones while a key is
rotated, and can tell a summary signed with another site's key from a forged one.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.errors import StartupError


class SiteKeyError(StartupError):
    """A key file or key text that cannot be used, with what to do about it."""


def key_id(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    site: str
    id: str
    key: Ed25519PublicKey

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def parse_public_key(site: str, text: str) -> PublicKey:
    """`ed25519:<base64 raw key>` (the SoT's form, already checked by the SoT schema)."""
    kind, _, b64 = text.strip().partition(":")
    raw = base64.b64decode(b64, validate=True)
    if kind != "ed25519" or len(raw) != 32:
        raise SiteKeyError(f"site {site}: {text[:60]!r} is not an ed25519 public key")
    return PublicKey(site, key_id(raw), Ed25519PublicKey.from_public_bytes(raw))


@dataclass(frozen=True)
class SigningKey:
    """This site's private key: signs its summaries."""

    key: Ed25519PrivateKey

    @property
    def raw_public(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.Raw,
                                                  serialization.PublicFormat.Raw)

    @property
    def id(self) -> str:
        return key_id(self.raw_public)

    def public_text(self) -> str:
        """The line to declare in the site's env.yml (`federation.keys`)."""
        return "ed25519:" + base64.b64encode(self.raw_public).decode()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def load_signing_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SiteKeyError(f"{path}: cannot read the site's signing key ({exc.strerror}); create "
                        f"it with `vaq-peer federation-key {path}` and copy it to every peer "
                        "of the site") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise SiteKeyError(f"{path}: not a PEM private key (`vaq-peer federation-key` writes "
                        "one)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SiteKeyError(f"{path}: the site's key must be an Ed25519 key")
    return SigningKey(key)


def generate_signing_key(path: Path) -> SigningKey:
    """A new key in `path` (mode 600, never overwritten): the site's private key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return SigningKey(key)
