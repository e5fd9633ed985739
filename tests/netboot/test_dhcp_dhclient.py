"""ISC dhclient against our server across namespaces: the client a real machine would run."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import pytest
from dhcp_support import SERVER_IP, BootNet, mac_of

pytestmark = pytest.mark.skipif(shutil.which("dhclient") is None, reason="dhclient missing")

DHCLIENT_CONF = """
timeout {timeout};
retry 1;
initial-interval 1;
request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers,
        host-name, ntp-servers, interface-mtu;
"""

# dhclient calls this instead of configuring the interface: it records what it was given.
SCRIPT = """#!/bin/sh
env | grep -E '^(reason|new_|interface)' | sort > "{out}/$reason.env"
exit 0
"""


def run_dhclient(ns, tmp_path: Path, timeout: int) -> tuple[int, dict[str, str]]:
    (tmp_path / "dhclient.conf").write_text(DHCLIENT_CONF.format(timeout=timeout))
    script = tmp_path / "script.sh"
    script.write_text(SCRIPT.format(out=tmp_path))
    script.chmod(0o755)
    # -1: one attempt, exit 2 on failure; on success dhclient daemonizes: stopped below.
    args = ["dhclient", "-1", "-cf", str(tmp_path / "dhclient.conf")]
    args += ["-lf", str(tmp_path / "leases"), "-pf", str(tmp_path / "pid")]
    args += ["-sf", str(script), "eth0"]
    proc = ns.run(*args, check=False, timeout=timeout + 20)
    pidfile = tmp_path / "pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
    env_file = tmp_path / "BOUND.env"
    env: dict[str, str] = {}
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value.strip("'")
    return proc.returncode, env


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
