"""Which declared host is this machine? Resolved from what iPXE reports about itself.

A machine reports the MAC it booted from, its SMBIOS UUID, serial number and asset tag
(iPXE's ${netX/mac}, ${uuid}, ${serial}, ${asset}). Each is looked up in the applied
revision's indexes, in this order: MAC (the NIC on the wire now), serial number and asset
tag (printed on the chassis, in purchase records), UUID last (firmware gets it wrong most:
zeros, batches cloned with one UUID, byte order differing between SMBIOS versions). Every
reported value is looked up, not only the first that matches: when two point to different
hosts the machine is refused, because serving either could install the wrong machine.
Placeholder values firmware reports when nothing was set never match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from appliance.sot.models import is_placeholder_identity

ORDER = ("mac", "serial", "asset", "uuid")
MAX_VALUE = 128  # longer is not an SMBIOS string or a MAC: not looked up
_NULL_UUIDS = {"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"}


class Indexes(Protocol):
    by_mac: dict[str, str]
    by_uuid: dict[str, str]
    by_serial: dict[str, str]
    by_asset: dict[str, str]


@dataclass(frozen=True)
class Identity:
    """The machine's own report, normalised; empty strings where it reported nothing."""

    mac: str = ""
    uuid: str = ""
    serial: str = ""
    asset: str = ""

    @classmethod
    def from_report(cls, mac: str = "", uuid: str = "", serial: str = "",
                    asset: str = "") -> Identity:
        def clean(value: str) -> str:
            if not value:
                return value  # most machines report no serial or asset tag
            value = value.strip()
            return "" if len(value) > MAX_VALUE or is_placeholder_identity(value) else value

        mac = clean(mac).lower().replace("-", ":")
        uuid = clean(uuid).lower()
        if uuid in _NULL_UUIDS:
            uuid = ""
        return cls(mac, uuid, clean(serial), clean(asset))

    def fields(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ORDER}


@dataclass(frozen=True)
class Resolution:
    host: str | None
    matched_by: str | None  # the first key, in ORDER, that found the host
    matches: dict[str, str]  # every key that found a host -> that host

    @property
    def conflict(self) -> bool:
        return len(set(self.matches.values())) > 1


def resolve(indexes: Indexes, identity: Identity) -> Resolution:
    tables = {"mac": indexes.by_mac, "uuid": indexes.by_uuid, "serial": indexes.by_serial,
              "asset": indexes.by_asset}
    matches: dict[str, str] = {}
    for key in ORDER:
        value = getattr(identity, key)
        if value and value in tables[key]:
            matches[key] = tables[key][value]
    if not matches or len(set(matches.values())) > 1:
        return Resolution(None, None, matches)
    key = next(iter(matches))
    return Resolution(matches[key], key, matches)
