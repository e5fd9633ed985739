"""A short perfdhcp load run: every DORA at a modest rate must complete.

perfdhcp (DHCPv4) behaves as a relay agent: it sends from port 67 of its `-l` address with
giaddr set to that address, so this also exercises the unicast-to-giaddr path under load.
Every exchange draws its MAC from the reserved list (`-M`), so each one must be answered.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from dhcp_support import SERVER_IP, BootNet, mac_of, make_spec

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("perfdhcp") is None, reason="perfdhcp missing"),
]

HOSTS = 200
RATE = 300
PERIOD_S = 2
LOAD_IP = "198.18.0.2"

STATS = re.compile(
    r"Statistics for: ([A-Z-]+)\*+\s*\nsent packets: (\d+)\s*\nreceived packets: (\d+)"
    r"\s*\ndrops: (\d+)"
)


def test_perfdhcp_relayed_dora_without_drops(boot_net: BootNet, tmp_path: Path) -> None:
    server = boot_net.start(spec=make_spec(count=HOSTS, first=10))
    load = boot_net.client("load", "52:54:00:aa:00:05", cidr=f"{LOAD_IP}/24")
    macs = tmp_path / "macs.txt"
    macs.write_text("".join(f"{mac_of(i)}\n" for i in range(10, 10 + HOSTS)))
    out = load.run(
        "perfdhcp",
        "-4",
        "-l",
        LOAD_IP,
        "-r",
        str(RATE),
        "-p",
        str(PERIOD_S),
        "-W",
        "500000",
        "-M",
        str(macs),
        SERVER_IP,
        check=False,
        timeout=60,
    )
    stats = {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in STATS.finditer(out.stdout)}
    assert set(stats) == {"DISCOVER-OFFER", "REQUEST-ACK"}, out.stdout + out.stderr
    discovers, offers, drops_do = stats["DISCOVER-OFFER"]
    requests, acks, drops_ra = stats["REQUEST-ACK"]
    assert discovers >= RATE  # the run really offered load
    assert (drops_do, drops_ra) == (0, 0)
    assert offers == discovers and acks == requests == discovers
    assert out.returncode == 0  # perfdhcp: 3 when an exchange failed
    assert server.counters["discover"] == discovers
    assert server.counters["replies"] == offers + acks
    assert server.counters.get("unknown", 0) == 0
