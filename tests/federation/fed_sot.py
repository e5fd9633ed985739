"""A SoT of several sites for federation tests: each site an env.yml with its peers, its
federation keys and endpoints, one host per site (no BMC: the test plays the machine) with a
one-stage network-boot workflow, and a federation.yml giving the cross-site order."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FedSite:
    id: str
    subnet: str  # e.g. "198.18.1" (a /24)
    peers: list[str]  # addresses
    keys: list[str] = field(default_factory=list)  # `ed25519:...` lines
    host_mac: str | None = None
    http_port: int = 8080
    endpoints: list[str] = field(default_factory=list)
    gateway: int = 1  # last octet

    @property
    def host(self) -> str:
        return f"{self.id}-node-1"


def write_fed_sot(root: Path, sites: list[FedSite], *, federation: str, artifact: Path,
                  note: str = "v1") -> None:
    """The whole tree. `note` lands on every host's install cmdline: change it to make every
    site reinstall its host."""
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    for sub in ("os", "boot", "workflows"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for site in sites:
        (root / "sites" / site.id).mkdir(parents=True, exist_ok=True)
        peers = "\n".join(f"  - {{name: {site.id}-vaq-{i}, address: {a}}}"
                          for i, a in enumerate(site.peers, start=1))
        keys = "".join(f"\n    - \"{k}\"" for k in site.keys) or " []"
        endpoints = ("\n  endpoints: [" + ", ".join(f'"{e}"' for e in site.endpoints) + "]"
                     if site.endpoints else "")
        (root / "sites" / site.id / "env.yml").write_text(f"""
id: {site.id}
subnets:
  - {{id: boot, cidr: {site.subnet}.0/24, gateway: {site.subnet}.{site.gateway},
     domain: {site.id}.test}}
peers:
{peers}
netboot: {{http_port: {site.http_port}}}
federation:
  keys:{keys}{endpoints}
""")
        if site.host_mac:
            (root / "sites" / site.id / "cluster-nodes.yml").write_text(
                f"name: {site.host}\nworkflow: install\ninterfaces:\n"
                f"  - {{type: physical, mac: \"{site.host_mac}\", subnet: boot, "
                f"ipv4: {site.subnet}.50}}\n")
    (root / "os/testos.yml").write_text(f"""
id: testos
os_family: busybox
major_version: "1"
boot:
  kernel: {{url: "file://{artifact}", sha256: {digest}, name: vmlinuz}}
  initrd:
    - {{url: "file://{artifact}", sha256: {digest}, name: initrd.img}}
cmdline:
  - vaq.note: "{note}"
  - vaq.phone_home: "{{{{ urls.phone_home }}}}"
""")
    (root / "boot/testos.yml").write_text("id: testos\noperating_system: testos\n")
    (root / "workflows/install.yml").write_text(
        "id: install\nstages:\n  - {name: install, boot: testos, timeout: 900, retries: 0}\n"
        "rollout: {max_concurrent: 1}\n")
    (root / "federation.yml").write_text(federation)
