"""The YAML documents every lab-like SoT is made of (the virtual lab, the workflow tests, the
fleet bench): one writer each, so the three trees cannot drift apart in shape.

Each returns the document's text; the callers choose the file and the values.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def env_document(peers: list[str], subnets: list[str], http_port: int, policy: str,
                 name: str | None = None) -> str:
    """`sites/lab/env.yml`: site `lab`, the given subnet lines (flow maps), the peers named
    peer-1..N in order, the boot HTTP port and a policy flow map."""
    peer_lines = "\n".join(f"  - {{name: peer-{i}, address: {a}}}"
                           for i, a in enumerate(peers, start=1))
    subnet_lines = "".join(f"  - {s}\n" for s in subnets)
    title = f"name: {name}\n" if name else ""
    return (f"\nid: lab\n{title}subnets:\n{subnet_lines}peers:\n{peer_lines}\n"
            f"netboot: {{http_port: {http_port}}}\npolicy: {policy}\n")


def host_document(name: str, workflow: str, mac: str, ipv4: str, *, subnet: str = "boot",
                  head: str = "", bmc: tuple[str, str, str, int] | None = None,
                  bmc_subnet: str = "boot") -> str:
    """One host of a cluster file: its boot interface and, with `bmc` (the BMC interface's
    MAC and address, the BMC's address and port), an IPMI BMC using `lab-ipmi`. `head`:
    extra top-level lines after `workflow:` (e.g. "uuid: ...\\n")."""
    text = (f"name: {name}\nworkflow: {workflow}\n{head}interfaces:\n"
            f"  - {{type: physical, mac: \"{mac}\", subnet: {subnet}, ipv4: {ipv4}}}\n")
    if bmc is not None:
        bmc_mac, bmc_ipv4, address, port = bmc
        text += (f"  - {{type: bmc, mac: \"{bmc_mac}\", subnet: {bmc_subnet}, "
                 f"ipv4: {bmc_ipv4}, ignore_dhcp: true,\n"
                 f"     bmc: {{type: ipmi, address: \"{address}\", port: {port}, "
                 "credentials: lab-ipmi}}\n")
    return text


def os_document(ident: str, kernel: Path, initrd: Path, cmdline: list[str],
                kernel_sha: str | None = None, initrd_sha: str | None = None) -> str:
    """The test OS as an `os/` document: its kernel and initrd by file URL with their true
    sha256 (hashed here unless given), a serial console and the given cmdline items
    (`key: value` YAML)."""
    items = "".join(f"  - {item}\n" for item in ["console: ttyS0", *cmdline])
    return (f"\nid: {ident}\nos_family: busybox\nmajor_version: \"1\"\nboot:\n"
            f"  kernel: {{url: \"file://{kernel}\", sha256: {kernel_sha or sha256(kernel)}, "
            "name: vmlinuz}\n"
            f"  initrd:\n"
            f"    - {{url: \"file://{initrd}\", sha256: {initrd_sha or sha256(initrd)}, "
            "name: initrd.img}\n"
            f"cmdline:\n{items}")
