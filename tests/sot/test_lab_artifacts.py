"""The bundled lab site names real artifacts: the Debian 12 installer's kernel and initrd on
Debian's mirror, with their true sha256. The same files ship in Debian's package
debian-installer-12-netboot-amd64 (tools/install.sh installs it): its version must be the
one in the URLs, and its bytes must hash to the sums in the example."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "debian-installer-12-netboot-amd64"
FILES = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64")
URL = re.compile(r"^https://deb\.debian\.org/debian/dists/bookworm/main/installer-amd64/"
                 r"(?P<version>[^/]+)/images/netboot/debian-installer/amd64/(?P<name>[^/]+)$")


def installed_version() -> str | None:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", PACKAGE],
                         capture_output=True, text=True, timeout=30)
    words = out.stdout.split()
    return words[-1] if out.returncode == 0 and words[:3] == ["install", "ok", "installed"] \
        else None


def test_the_lab_installer_artifacts_are_real_with_their_true_sha256() -> None:
    os_doc = yaml.safe_load((REPO / "sot_examples/lab/os/debian-12.yml").read_text())
    artifacts = [os_doc["boot"]["kernel"], *os_doc["boot"]["initrd"]]
    urls = [URL.match(a["url"]) for a in artifacts]
    assert all(urls), [a["url"] for a in artifacts]
    assert [u["name"] for u in urls] == ["linux", "initrd.gz"]
    (version,) = {u["version"] for u in urls}
    assert version in os_doc["name"]
    have = installed_version()
    if have is None:
        pytest.skip(f"{PACKAGE} is not installed (tools/install.sh installs it)")
    assert have == version, (f"Debian's installer is now {have}: point os/debian-12.yml at "
                             f"its directory and sums (the example names {version})")
    for artifact, url in zip(artifacts, urls, strict=True):
        digest = hashlib.sha256((FILES / url["name"]).read_bytes()).hexdigest()
        assert artifact["sha256"] == digest, (url["name"], digest)
