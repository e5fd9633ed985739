"""`vaq-peer serve` as a real process on a boot network in namespaces, driven by real clients.

The peer serves the `kinds` fixture SoT: dhclient gets the host's reservation, tftp-hpa
fetches the iPXE binary, curl walks the HTTP boot chain and phones home; after the phone-home
the host is told to boot its disk (no install loop). A MAC not in the SoT gets no lease.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dhcp_support import run_dhclient

from appliance.netboot.boottable import host_token
from tools.rigs.netns import NetnsRig

REPO = Path(__file__).resolve().parents[2]
SERVER = "198.18.8.5"
BASE = f"http://{SERVER}:8080"


def _wait_http(ns, url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"vaq-peer serve exited {proc.returncode}:\n{log.read_text()}")
        if ns.run("curl", "-fsS", "-o", "/dev/null", url, check=False, timeout=5).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} not up after {timeout}s:\n{log.read_text()}")


@pytest.fixture
def peer(netns_rig: NetnsRig, tmp_path: Path):
    srv = netns_rig.netns("peer")
    netns_rig.bridge(srv, "br0", f"{SERVER}/24")
    secret = tmp_path / "secret"
    secret.write_text("c2VjcmV0LXRva2VuLWtleS1mb3ItdGVzdHMtb25seQ==\n")
    raft_secret = tmp_path / "raft.secret"
    raft_secret.write_text("cmFmdC1wYXNzd29yZC1mb3ItdGVzdHM=\n")
    raft_secret.chmod(0o600)
    config = tmp_path / "peer.yaml"
    config.write_text(f"""
site: kinds
peer: peer-1
data_dir: {tmp_path / 'data'}
interface: br0
sot: {{path: {REPO / 'tests/sot/fixtures/kinds'}}}
token_secret_file: {secret}
raft: {{address: "127.0.0.1:7950", password_file: {raft_secret}}}
""")
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = srv.popen([str(Path(sys.executable).parent / "vaq-peer"), "serve", "--config",
                          str(config)], stdout=out, stderr=subprocess.STDOUT)
    _wait_http(srv, f"{BASE}/healthz", proc, log)
    yield srv, proc, log, secret.read_bytes().strip()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def _client(rig: NetnsRig, srv, label: str, mac: str):
    cli = rig.netns(label)
    rig.veth(srv, cli, bridge="br0", mac_b=mac)
    return cli


@pytest.mark.root
@pytest.mark.skipif(shutil.which("dhclient") is None, reason="isc-dhcp-client not installed")
def test_host_walks_the_boot_chain_against_a_serving_peer(peer, netns_rig, tmp_path) -> None:
    srv, proc, log, secret = peer
    cli = _client(netns_rig, srv, "rk01", "52:54:00:08:00:03")
    code, lease = run_dhclient(cli, tmp_path, timeout=15)
    assert code == 0, log.read_text()
    assert lease["new_ip_address"] == "198.18.8.13"
    assert lease["new_routers"] == "198.18.8.1"
    assert lease["new_host_name"] == "rk-01"
    assert lease["new_domain_name"] == "kinds.test"
    cli.run("ip", "addr", "add", "198.18.8.13/24", "dev", "eth0")

    got = tmp_path / "undionly.kpxe"
    cli.run("tftp", "-m", "binary", SERVER, "-c", "get", "undionly.kpxe", str(got), timeout=30)
    assert got.read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()

    chain = cli.run("curl", "-fsS", f"{BASE}/boot.ipxe").stdout
    assert chain.startswith("#!ipxe") and f"\nset vq-base {BASE}\n" in chain
    assert "chain --autofree ${vq-base}/ipxe?mac=${netX/mac}" in chain
    script = cli.run("curl", "-fsS", f"{BASE}/ipxe?mac=52:54:00:08:00:03").stdout
    assert "# rk-01: stage 1/1 install" in script
    assert f"\nset vq-base {BASE}\n" in script
    assert "inst.ks=${vq-base}/boot/rk-01/1/config" in script
    kickstart = cli.run("curl", "-fsS", f"{BASE}/boot/rk-01/1/config").stdout
    token = host_token(secret, "rk-01")
    assert f"/phone-home/rk-01/1/{token}" in kickstart

    refused = cli.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                      f"{BASE}/phone-home/rk-01/1/{'0' * 32}").stdout
    assert refused == "403"
    assert cli.run("curl", "-fsS", "-X", "POST", "--data", "installed",
                   f"{BASE}/phone-home/rk-01/1/{token}").returncode == 0
    after = cli.run("curl", "-fsS", f"{BASE}/ipxe?mac=52:54:00:08:00:03").stdout
    assert "workflow done: boot from the local disk" in after and "\nexit\n" in after

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    text = log.read_text()
    for step in ("boot.script", "boot.config", "boot.phone_home_refused", "boot.phone_home",
                 "boot.local_disk", "tftp.transfer.end"):
        assert step in text, f"no {step} in the peer log"
    assert token not in text  # secrets never reach the logs


@pytest.mark.root
@pytest.mark.skipif(shutil.which("dhclient") is None, reason="isc-dhcp-client not installed")
def test_unknown_machine_gets_no_lease_and_an_event(peer, netns_rig, tmp_path) -> None:
    srv, proc, log, _ = peer
    cli = _client(netns_rig, srv, "stray", "52:54:00:77:00:01")
    code, lease = run_dhclient(cli, tmp_path, timeout=4)
    assert code != 0 and not lease
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    assert "52:54:00:77:00:01" in log.read_text()


def test_bad_config_is_refused_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "peer.yaml"
    config.write_text("site: kinds\npeer: peer-1\ndata_dir: d\ninterface: br0\n"
                      "sot: {path: x, git: y}\ntoken_secret_file: s\nhttp: {port: 99999}\n"
                      "raft: {address: '127.0.0.1:7950', password_file: p}\n")
    out = subprocess.run([str(Path(sys.executable).parent / "vaq-peer"), "serve", "--config",
                          str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"{config}:5: sot: give exactly one of `path`" in out.stderr
    assert f"{config}:7: http.port" in out.stderr
