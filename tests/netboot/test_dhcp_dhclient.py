"""ISC dhclient against our server across namespaces: the client a real machine would run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dhcp_support import SERVER_IP, BootNet, mac_of, run_dhclient

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(shutil.which("dhclient") is None, reason="dhclient missing")]


def test_dhclient_gets_reservation_and_options(boot_net: BootNet, tmp_path: Path) -> None:
    server = boot_net.start()
    cli = boot_net.client("cli", mac_of(11))
    rc, env = run_dhclient(cli, tmp_path, timeout=10)
    assert rc == 0, "dhclient did not get a lease"
    assert env["new_ip_address"] == "198.18.0.11"
    assert env["new_subnet_mask"] == "255.255.255.0"
    assert env["new_routers"] == SERVER_IP
    assert env["new_domain_name_servers"] == "198.18.0.53 198.18.0.54"
    assert env["new_domain_name"] == "lab.example"
    assert env["new_host_name"] == "node11"
    assert env["new_ntp_servers"] == "198.18.0.123"
    assert env["new_interface_mtu"] == "1500"
    assert env["new_broadcast_address"] == "198.18.0.255"
    assert env["new_dhcp_server_identifier"] == SERVER_IP
    assert env["new_dhcp_lease_time"] == "3600"
    leases = (tmp_path / "leases").read_text()
    assert "fixed-address 198.18.0.11;" in leases
    assert server.counters["discover"] >= 1
    assert server.counters["request"] >= 1
    assert server.counters["replies"] >= 2
    assert server.counters.get("unknown", 0) == 0


def test_unknown_mac_gets_no_answer_and_one_event(boot_net: BootNet, tmp_path: Path) -> None:
    server = boot_net.start()
    stranger = "52:54:00:99:99:99"
    cli = boot_net.client("cli", stranger)
    rc, env = run_dhclient(cli, tmp_path, timeout=3)
    assert rc != 0 and env == {}, "an undeclared host must not get a lease"
    assert server.counters["unknown"] >= 2  # dhclient retried...
    unknown = [f for kind, f in boot_net.events if kind == "unknown-mac"]
    assert unknown == [unknown[0]]  # ...but the peer journals the MAC once
    assert unknown[0]["mac"] == stranger
    assert server.counters.get("replies", 0) == 0
