"""Another DHCP server on the boot network, found by a real DHCPDISCOVER.

dnsmasq plays the rogue server in its own namespace on the boot bridge, beside our own DHCP
server (which must neither answer the probe nor journal it as an unknown machine). The
operator's view is `vaq-peer doctor --boot-network eth0`, run as a process in a namespace
that has no address yet, like a peer's boot interface before it serves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dhcp_support import BootNet

from appliance.netboot.rogue_dhcp import ProbeError, probe, probe_mac, watch
from tools.rigs.netns import Netns

ROGUE_IP = "198.18.0.2"
VAQ_PEER = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vaq-peer")


def _wait_listening(ns: Netns, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns.run("ss", "-Hlun", f"sport = :{port}").stdout.strip():
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on UDP {port} in {ns.name}")


@pytest.fixture
def rogue(boot_net: BootNet, tmp_path: Path) -> Iterator[Netns]:
    """dnsmasq handing out addresses and a boot file that are not ours."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq missing")
    ns = boot_net.client("rogue", "52:54:00:aa:00:66", cidr=f"{ROGUE_IP}/24")
    proc = ns.popen(["dnsmasq", "--keep-in-foreground", "--port=0", "--interface=eth0",
                     "--bind-interfaces", "--leasefile-ro",
                     "--dhcp-range=198.18.0.100,198.18.0.150,255.255.255.0,1h",
                     "--dhcp-boot=elsewhere.efi", f"--pid-file={tmp_path / 'dnsmasq.pid'}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_listening(ns, 67)
    yield ns
    proc.terminate()
    proc.wait(timeout=10)


def _doctor(ns: Netns) -> tuple[int, list[dict[str, str]]]:
    """The doctor as an operator runs it; no peer answers in this namespace, so only the
    boot network check is of interest here."""
    done = ns.run(VAQ_PEER, "doctor", "--peer", "http://127.0.0.1:9", "--json",
                  "--boot-network", "eth0", check=False,
                  timeout=60)
    checks = json.loads(done.stdout)["checks"]
    return done.returncode, [c for c in checks if c["check"] == "DHCP on eth0"]


@pytest.mark.root
def test_doctor_names_the_other_server(boot_net: BootNet, rogue: Netns) -> None:
    server = boot_net.start()
    peer = boot_net.client("peer", "52:54:00:aa:00:01")
    _, checks = _doctor(peer)
    assert len(checks) == 1, checks
    assert checks[0]["result"] == "WARN"
    detail = checks[0]["detail"]
    assert f"DHCP server {ROGUE_IP} (MAC 52:54:00:aa:00:66) offered 198.18.0.1" in detail
    assert "boot file elsewhere.efi" in detail
    # Ours saw the probe, did not answer it, and journaled nothing about it.
    assert server.counters["unknown"] >= 1
    assert server.counters.get("replies", 0) == 0
    assert not [e for e in boot_net.events if e[0] == "unknown-mac"]


@pytest.mark.root
def test_doctor_passes_when_no_other_server_answers(boot_net: BootNet) -> None:
    server = boot_net.start()
    peer = boot_net.client("peer", "52:54:00:aa:00:01")
    _, checks = _doctor(peer)
    assert [c["result"] for c in checks] == ["PASS"], checks
    assert "no other DHCP server answered" in checks[0]["detail"]
    assert server.counters["unknown"] >= 1  # the DISCOVER did reach the network


@pytest.mark.root
def test_probe_of_a_missing_interface_is_a_clear_error(boot_net: BootNet) -> None:
    peer = boot_net.client("peer", "52:54:00:aa:00:01")
    with peer.loop_thread() as lt, pytest.raises(ProbeError, match="'nope0'"):
        lt.run(_in_thread(probe, "nope0"))


async def _in_thread(fn: Any, *args: Any) -> Any:
    return fn(*args)


def test_probe_uses_a_locally_administered_client_address() -> None:
    assert probe_mac(bytes.fromhex("525400aa0001")) == bytes.fromhex("525400aa0001")
    assert probe_mac(bytes.fromhex("001b21aa0001")) == bytes.fromhex("021b21aa0001")
    assert probe_mac(bytes.fromhex("ffffffffffff"))[0] & 0x03 == 0x02  # never multicast


class _Stop(Exception):
    pass


@pytest.mark.root
def test_watch_journals_the_other_server_unless_expected(boot_net: BootNet,
                                                         rogue: Netns) -> None:
    peer = boot_net.client("peer", "52:54:00:aa:00:01")
    events: list[tuple[str, dict[str, Any]]] = []
    expected = [True, False]  # first round: proxy mode, skip; second: report

    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:  # after the second round
            raise _Stop

    with peer.loop_thread() as lt, pytest.raises(_Stop):
        lt.run(watch("eth0", lambda: expected.pop(0),
                     lambda kind, **f: events.append((kind, f)), every=5.0, first=1.0,
                     sleep=sleep))
    assert sleeps == [1.0, 5.0, 5.0]
    assert [k for k, _ in events] == ["rogue-dhcp"]
    fields = events[0][1]
    assert fields["server_id"] == ROGUE_IP and fields["interface"] == "eth0"
    assert fields["offered"].startswith("198.18.0.1")
