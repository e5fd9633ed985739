"""What each host receives, for every unattended kind: golden files plus semantic checks.

The golden files under tests/sot/golden/ are the reviewed output of `vaq-peer render`; a
change to rendering shows up as a diff a reviewer can read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from sotcase import BASES, materialise

from appliance.cli import main
from appliance.sot.formats import check_rendered
from appliance.sot.render import Renderer
from appliance.sot.revision import compile_directory

GOLDEN = Path(__file__).parent / "golden"
KINDS = BASES["kinds"]


@pytest.fixture(scope="module")
def kinds():
    rev = compile_directory(str(KINDS))
    assert rev.valid, [str(p) for p in rev.problems]
    return rev


@pytest.mark.parametrize("golden", sorted(GOLDEN.iterdir()), ids=lambda p: p.name)
def test_render_matches_golden(golden: Path, capsys: pytest.CaptureFixture[str]) -> None:
    match = re.match(r"^(?P<host>.+)-(?P<stage>\d+)\.(?P<kind>.+)$", golden.name)
    assert match, golden.name
    host, stage, kind = match["host"], match["stage"], match["kind"]
    what = "ipxe" if kind == "ipxe" else "config"
    assert main(["render", host, "--sot", str(KINDS), "--stage", stage, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["stages"][0]
    got = data["ipxe"] if what == "ipxe" else data["config"]
    if what == "config":
        assert data["config_type"] == kind
    assert got == golden.read_text()


def test_each_kind_is_valid_for_its_format(kinds) -> None:
    r = Renderer(kinds.sot, kinds.sha)
    hosts = kinds.sot.hosts
    kind, text = r.render_config(hosts["ub-01"], 1)
    assert kind == "cloud-config" and text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["autoinstall"]["identity"]["hostname"] == "ub-01"
    assert data["autoinstall"]["network"]["ethernets"]["boot"]["addresses"] == ["198.18.8.12/24"]
    kind, text = r.render_config(hosts["fc-01"], 1)
    assert json.loads(text)["ignition"]["version"] == "3.4.0"
    kind, text = r.render_config(hosts["rk-01"], 1)
    assert check_rendered("kickstart", text, "rocky", "9") is None
    assert "--hostname=rk-01.kinds.test" in text
    kind, text = r.render_config(hosts["db-01"], 1)
    assert check_rendered("preseed", text) is None
    assert r.render_config(hosts["tool-01"], 3) is None  # local-disk stage


def test_ipxe_script_follows_vaquero_cmdline_rules_and_uefi_initrd(kinds) -> None:
    script = Renderer(kinds.sot, kinds.sha).render_ipxe(kinds.sot.hosts["fc-01"], 1)
    kernel = next(line for line in script.splitlines() if line.startswith("kernel "))
    # UEFI: every initrd named on the kernel command line, in order
    assert "initrd=initramfs.img initrd=rootfs.img" in kernel
    # a list value repeats the key once per item
    assert "console=tty0 console=ttyS0,115200n8" in kernel
    # templated values are rendered per host; URLs point at the peer being tried, which
    # starts with the site's boot URL
    assert "coreos.inst.ignition_url=${vq-base}/boot/fc-01/1/config" in kernel
    assert "\nset vq-base http://198.18.8.5:8080\n" in script
    assert script.count("\ninitrd --name ") == 2
    ubuntu = Renderer(kinds.sot, kinds.sha).render_ipxe(kinds.sot.hosts["ub-01"], 1)
    assert " autoinstall " in ubuntu  # an empty value gives the bare key


def test_every_fetch_falls_back_to_the_sites_other_peers_then_pxe(tmp_path: Path) -> None:
    sot = materialise({"base": "kinds", "patch": [{
        "file": "sites/kinds/env.yml", "old": "    address: 198.18.8.5\n",
        "new": "    address: 198.18.8.5\n  - {name: peer-2, address: 198.18.8.6}\n"
               "  - {name: peer-3, address: 198.18.8.7}\n"}]}, tmp_path / "sot")
    rev = compile_directory(str(sot))
    assert rev.valid, rev.problems
    # peer-2 renders for itself: its own URL first, then the others in the site's order
    r = Renderer(rev.sot, rev.sha, {"kinds": "http://198.18.8.6:8080"})
    script = r.render_ipxe(rev.sot.hosts["fc-01"], 1)
    order = re.findall(r"^set vq-base (\S+)$", script, re.M)
    assert order == ["http://198.18.8.6:8080", "http://198.18.8.5:8080", "http://198.18.8.7:8080"]
    nexts = re.findall(r"^set vq-next (\S+)$", script, re.M)
    assert nexts == ["vq-peer-1", "vq-peer-2", "vq-failed"]
    lines = script.splitlines()
    attempt = lines[lines.index(":vq-attempt") + 1:lines.index(":vq-failed")]
    # every fetch of the attempt, and its boot, goes on to the next peer when it fails
    assert attempt[0] == "imgfree"
    fetches = [x for x in attempt[1:] if not x.startswith("imgfetch --name vq-loaded")]
    assert [x.split()[0] for x in fetches] == ["kernel", "initrd", "initrd", "boot"]
    assert all(x.endswith(" || goto ${vq-next}") and "http://" not in x for x in fetches)
    # with everything loaded, the machine tells the peers before booting (failure is fine)
    assert attempt[-2] == ("imgfetch --name vq-loaded ${vq-base}/boot/fc-01/1/loaded "
                           "&& imgfree vq-loaded ||")
    # the whole chain failed: reboot into PXE (or start over where iPXE cannot reboot)
    assert lines[lines.index(":vq-failed"):][-2:] == ["reboot ||", "goto vq-peer-0"]
    # the config the installer fetches still names the peer that served it
    _, text = r.render_config(rev.sot.hosts["fc-01"], 1)
    assert "${vq-base}" not in text


def test_phone_home_token_is_per_render(kinds) -> None:
    r = Renderer(kinds.sot, kinds.sha)
    _, text = r.render_config(kinds.sot.hosts["rk-01"], 1, token="s3cr3t-token")
    assert "/phone-home/rk-01/1/s3cr3t-token" in text


def test_sandbox_refuses_python_internals(tmp_path: Path) -> None:
    sot = materialise({"base": "kinds", "patch": [{
        "file": "assets/untyped/raid.sh", "old": "mdadm",
        "new": "{{ ''.__class__.__mro__[1].__subclasses__() }} mdadm"}]}, tmp_path / "sot")
    rev = compile_directory(str(sot))
    (problem,) = rev.problems
    assert problem.file == "assets/untyped/raid.sh" and problem.line == 3
    assert "unsafe" in problem.message


def test_render_refuses_invalid_sot_and_unknown_host(tmp_path: Path, capsys) -> None:
    assert main(["render", "nope", "--sot", str(KINDS)]) == 2
    assert "no host named 'nope'" in capsys.readouterr().err
    assert main(["render", "fc-01", "--sot", str(KINDS), "--stage", "7"]) == 2
    sot = materialise({"base": "kinds", "patch": [{
        "file": "boot/all.yml", "old": "operating_system: rocky-9",
        "new": "operating_system: rocky-8"}]}, tmp_path / "sot")
    assert main(["render", "rk-01", "--sot", str(sot)]) == 1
    assert "nothing is rendered from an invalid revision" in capsys.readouterr().err
