"""Accepting a summary: its shape, the key the receiving site's SoT declares for the sender,
the signature, and a sequence newer than the last accepted one. Pure: no I/O, no clock.

Refusal reasons (the metric label and the journal's word):
malformed, too_large, unknown_site (the SoT declares no such site, or no key for it),
wrong_site_key (signed with a key another site declares), unknown_key (a key id nobody
declares), bad_signature (the declared key does not verify it: forged or altered),
replay (a sequence not newer than the last accepted, with other content).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .keys import PublicKey, parse_public_key
from .summary import MAX_ENVELOPE_BYTES, SummaryError, open_envelope

REASONS = ("malformed", "too_large", "unknown_site", "wrong_site_key", "unknown_key",
           "bad_signature", "replay")


@dataclass(frozen=True)
class Keyring:
    """The public keys one revision of the SoT declares, by site and by key id."""

    by_site: Mapping[str, tuple[PublicKey, ...]] = field(default_factory=dict)
    by_id: Mapping[str, PublicKey] = field(default_factory=dict)

    @classmethod
    def from_declared(cls, declared: Iterable[tuple[str, Iterable[str]]]) -> Keyring:
        by_site: dict[str, tuple[PublicKey, ...]] = {}
        by_id: dict[str, PublicKey] = {}
        for site, texts in declared:
            keys = tuple(parse_public_key(site, t) for t in texts)
            by_site[site] = keys
            for key in keys:
                by_id.setdefault(key.id, key)
        return cls(by_site, by_id)


class Refused(Exception):
    def __init__(self, reason: str, message: str, site: str | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.site = reason, message, site


@dataclass(frozen=True)
class Accepted:
    site: str
    seq: int
    digest: str
    envelope: dict


Held = tuple[int, str, str]  # (seq, digest, signature text) of the last accepted summary


def _duplicate(envelope: object, last: Mapping[str, Held]) -> bool:
    """The very envelope we hold (relays deliver each one many times): recognised by site,
    sequence and signature text, before any parsing. It is dropped, never stored."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("summary"), dict):
        return False
    held = last.get(str(envelope["summary"].get("site")))
    return (held is not None and envelope["summary"].get("seq") == held[0]
            and envelope.get("sig") == held[2])


def verify(envelope: object, keyring: Keyring, last: Mapping[str, Held]) -> Accepted | None:
    """The accepted summary; None for one already held (the same seq and content, as relays
    deliver it several times: cheap, no signature check); Refused otherwise."""
    if _duplicate(envelope, last):
        return None
    site = None
    try:
        if isinstance(envelope, dict) and isinstance(envelope.get("summary"), dict):
            site = envelope["summary"].get("site")
            site = site if isinstance(site, str) else None
        summary, kid, signature, data = open_envelope(envelope)
        if len(data) + len(envelope["sig"]) + 64 > MAX_ENVELOPE_BYTES:  # type: ignore[index]
            raise Refused("too_large", f"envelope over {MAX_ENVELOPE_BYTES} bytes", site)
    except SummaryError as exc:
        raise Refused(exc.reason, str(exc), site) from None
    except (TypeError, ValueError, RecursionError) as exc:  # not JSON-encodable
        raise Refused("malformed", str(exc), site) from None
    site, seq = summary["site"], summary["seq"]
    held = last.get(site)
    dig = hashlib.sha256(data).hexdigest()
    if held is not None and held[0] == seq and held[1] == dig:
        return None
    keys = keyring.by_site.get(site)
    if not keys:
        raise Refused("unknown_site", f"the SoT declares no site {site!r} (or no key for it)",
                      site)
    key = next((k for k in keys if k.id == kid), None)
    if key is None:
        other = keyring.by_id.get(kid)
        if other is not None:
            raise Refused("wrong_site_key", f"summary of {site} signed with the key of site "
                          f"{other.site}", site)
        raise Refused("unknown_key", f"summary of {site} signed with key {kid}, which the SoT "
                      "does not declare", site)
    if not key.verify(signature, data):
        raise Refused("bad_signature", f"summary of {site} does not verify against its key "
                      f"{kid}", site)
    if held is not None and seq <= held[0]:
        raise Refused("replay", f"summary of {site} with sequence {seq}; {held[0]} was already "
                      "accepted", site)
    return Accepted(site, seq, dig, envelope)  # type: ignore[arg-type]
