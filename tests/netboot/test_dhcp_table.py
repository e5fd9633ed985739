"""Table compilation (validation, lookups, boot variants) and the responder's bookkeeping."""

from __future__ import annotations

import dataclasses

import pytest
from dhcp_support import dhcp_packet, mac_of, make_spec
from scapy.layers.dhcp import BOOTP

from appliance.netboot import dhcp_codec as wire
from appliance.netboot import dhcp_table as t
from appliance.netboot.dhcp_responder import EVENT_PERIOD_S, Responder
from appliance.netboot.refusals import DISTINCT_CAP, INTERVAL_S

SRC = ("0.0.0.0", 68)


def replace_reservation(spec: t.TableSpec, index: int, **changes) -> t.TableSpec:
    res = list(spec.reservations)
    res[index] = dataclasses.replace(res[index], **changes)
    return dataclasses.replace(spec, reservations=tuple(res))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mac": mac_of(10)}, "reserved twice"),
        ({"ipv4": "198.18.0.10"}, "reserved twice"),
        ({"ipv4": "198.18.1.10"}, "not a host address"),
        ({"ipv4": "198.18.0.255"}, "not a host address"),
        ({"subnet": "198.18.4.0/24"}, "not declared"),
        ({"uuid": "00000000-0000-4000-8000-00000000000a"}, "reserved twice"),
        ({"mac": "52:54:00:00:00"}, "not an Ethernet MAC"),
    ],
)
def test_contradictions_are_refused(changes: dict, message: str) -> None:
    spec = replace_reservation(make_spec(), 1, **changes)
    with pytest.raises(ValueError, match=message):
        t.compile_table(spec, "br0")


def test_table_needs_an_address_for_its_interface() -> None:
    with pytest.raises(ValueError, match="no server address"):
        t.compile_table(make_spec(), "eth7")


@pytest.mark.parametrize(
    ("options", "variant"),
    [
        ([], t.PLAIN),
        ([("vendor_class_id", b"MSFT 5.0")], t.PLAIN),
        ([("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001")], t.BIOS),
        ([("vendor_class_id", b"PXEClient")], t.BIOS),  # old ROM without option 93
        ([("vendor_class_id", b"PXEClient"), ("pxe_client_architecture", b"\x00\x06")], t.UEFI),
        ([("vendor_class_id", b"PXEClient"), ("pxe_client_architecture", b"\x00\x07")], t.UEFI),
        ([("vendor_class_id", b"PXEClient"), ("pxe_client_architecture", b"\x00\x09")], t.UEFI),
        ([("vendor_class_id", b"PXEClient"), ("pxe_client_architecture", b"\x00\x0b")], t.ARM64),
        ([("vendor_class_id", b"PXEClient"), ("pxe_client_architecture", b"\x00\x02")], t.PLAIN),
        ([("vendor_class_id", b"HTTPClient:Arch:00016")], t.HTTP),
        ([("pxe_client_architecture", b"\x00\x10")], t.HTTP),
        ([("vendor_class_id", b"HTTPClient"), ("pxe_client_architecture", b"\x00\x13")], t.PLAIN),
        ([("vendor_class_id", b"PXEClient"), ("user_class", b"iPXE")], t.IPXE),
    ],
)
def test_boot_variant(options: list, variant: str) -> None:
    req = wire.parse_request(dhcp_packet(mac_of(10), "discover", 1, options=options))
    assert t.boot_variant(req) == variant


def test_http_boot_without_url_is_not_answered() -> None:
    spec = make_spec()
    boot = dataclasses.replace(spec.reservations[0].boot, http_boot_url=None)
    table = t.compile_table(replace_reservation(spec, 0, boot=boot), "br0")
    r = Responder(table)
    http = [("vendor_class_id", b"HTTPClient:Arch:00016")]
    assert r.handle(dhcp_packet(mac_of(10), "discover", 1, options=http), SRC) is None
    assert r.counters["unbootable"] == 1
    assert r.handle(dhcp_packet(mac_of(10), "discover", 2), SRC) is not None


def test_unknown_mac_events_are_digested_per_interval() -> None:
    now = [1000.0]
    events: list[tuple[str, dict]] = []
    r = Responder(
        t.compile_table(make_spec(), "br0"),
        on_event=lambda k, **f: events.append((k, f)),
        clock=lambda: now[0],
    )
    stranger, other = "52:54:00:99:00:01", "52:54:00:99:00:02"
    for xid in range(5):
        assert r.handle(dhcp_packet(stranger, "discover", xid), SRC) is None
    r.handle(dhcp_packet(other, "discover", 9), SRC)
    now[0] += INTERVAL_S + 1
    r.handle(dhcp_packet(stranger, "discover", 10), SRC)
    assert [k for k, _ in events] == ["unknown-mac", "unknown-mac-digest", "unknown-mac"]
    assert events[0][1]["mac"] == stranger and events[2][1]["mac"] == stranger
    digest = events[1][1]
    assert digest["count"] == 6 and digest["distinct"] == 2
    assert digest["sample"] == f"{stranger},{other}"
    assert r.counters["unknown"] == 7


def test_a_failing_event_sink_costs_nothing() -> None:
    def broken(kind: str, **fields) -> None:
        raise RuntimeError("journal down")

    r = Responder(t.compile_table(make_spec(), "br0"), on_event=broken)
    assert r.handle(dhcp_packet("52:54:00:99:00:01", "discover", 1), SRC) is None
    assert r.handle(b"junk", SRC) is None
    reply = r.handle(dhcp_packet(mac_of(10), "discover", 2), SRC)
    assert reply is not None and BOOTP(reply[0]).yiaddr == "198.18.0.10"


def test_swapped_table_answers_the_next_request() -> None:
    r = Responder(t.compile_table(make_spec(count=1), "br0"))
    assert r.handle(dhcp_packet(mac_of(11), "discover", 1), SRC) is None
    r.table = t.compile_table(make_spec(count=2), "br0")
    reply = r.handle(dhcp_packet(mac_of(11), "discover", 2), SRC)
    assert reply is not None and BOOTP(reply[0]).yiaddr == "198.18.0.11"


def test_relay_from_another_subnet_is_not_answered() -> None:
    r = Responder(t.compile_table(make_spec(), "br0"))
    pkt = dhcp_packet(mac_of(10), "discover", 1, giaddr="198.18.7.1")
    assert r.handle(pkt, ("198.18.7.1", 67)) is None
    assert r.counters["wrong_subnet"] == 1


def test_renewing_client_is_answered_by_unicast() -> None:
    r = Responder(t.compile_table(make_spec(), "br0"))
    reply = r.handle(
        dhcp_packet(mac_of(10), "request", 1, ciaddr="198.18.0.10"), ("198.18.0.10", 68)
    )
    assert reply is not None and reply[1] == ("198.18.0.10", 68)
    assert BOOTP(reply[0]).yiaddr == "198.18.0.10"
    nak = r.handle(dhcp_packet(mac_of(10), "request", 2, ciaddr="198.18.0.77"), ("198.18.0.77", 68))
    assert nak is not None and nak[1] == ("255.255.255.255", 68)
    assert r.counters["nak"] == 1


def test_declines_are_journaled_once_per_period() -> None:
    now = [0.0]
    events: list[str] = []
    r = Responder(
        t.compile_table(make_spec(), "br0"),
        on_event=lambda k, **f: events.append(k),
        clock=lambda: now[0],
    )
    decline = dhcp_packet(mac_of(10), "decline", 1, options=[("requested_addr", "198.18.0.10")])
    for _ in range(3):
        assert r.handle(decline, SRC) is None
    now[0] += EVENT_PERIOD_S + 1
    r.handle(decline, SRC)
    assert events == ["decline", "decline"]
    assert r.counters["decline"] == 4


def test_a_flood_of_fresh_macs_is_counted_but_not_journaled() -> None:
    now = [0.0]
    events: list[tuple[str, dict]] = []
    r = Responder(
        t.compile_table(make_spec(), "br0"),
        on_event=lambda k, **f: events.append((k, f)),
        clock=lambda: now[0],
    )
    flood = DISTINCT_CAP + 500
    for i in range(flood):
        r.handle(
            dhcp_packet(f"52:54:01:{i >> 16:02x}:{i >> 8 & 255:02x}:{i & 255:02x}", "discover", i),
            SRC,
        )
    assert [k for k, _ in events] == ["unknown-mac"]  # one event, the rest counted
    assert r.counters["unknown"] == flood
    now[0] += INTERVAL_S + 1  # the interval ends: one digest, then new MACs are reported
    r.handle(dhcp_packet("52:54:02:00:00:01", "discover", 1), SRC)
    assert [k for k, _ in events] == ["unknown-mac", "unknown-mac-digest", "unknown-mac"]
    assert events[1][1]["count"] == flood and events[1][1]["distinct"] == f">={DISTINCT_CAP}"
