"""Validation reports everything at once: files the format does not know are warnings with
their path (errors under --strict), and templates are parsed whatever else failed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sotcase import REPO

from appliance.cli import main

VAQUERO_SOTS = REPO / "tests" / "importer" / "originals"


def _lab(tmp_path: Path) -> Path:
    sot = tmp_path / "sot"
    shutil.copytree(REPO / "sot_examples" / "lab", sot)
    (sot / "host_groups").mkdir()
    (sot / "host_groups" / "etcd.yml").write_text("hosts: [lab-01]\n")
    (sot / "os" / "notes.txt").write_text("kernel from the mirror\n")
    (sot / "README.md").write_text("# lab\n")  # documentation is not reported
    (sot / ".drone.yml").write_text("pipeline: {}\n")
    return sot


def test_unknown_files_are_warnings_with_their_path(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    sot = _lab(tmp_path)
    assert main(["validate", str(sot)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:-1] == [
        "warning: host_groups/etcd.yml: host_groups/ is not a folder of the SoT format (it "
        "reads sites/, os/, boot/, workflows/, assets/); host_groups/etcd.yml is ignored",
        "warning: os/notes.txt: os/ holds *.yml or *.yaml files directly; os/notes.txt is "
        "ignored",
    ]
    assert out[-1].endswith(": valid, 2 warning(s)")


def test_strict_makes_unknown_files_errors(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    sot = _lab(tmp_path)
    assert main(["validate", "--strict", str(sot)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("error: host_groups/etcd.yml: host_groups/ is not a folder")
    assert out[-1].endswith("NOT valid: 2 problem(s)")


def test_original_sot_reports_hosts_and_templates_despite_broken_env(
        capsys: pytest.CaptureFixture[str]) -> None:
    """env.yml of the original fails our schema; the hosts and templates behind it are still
    checked, and every Go-template construct that is not Jinja is listed."""
    assert main(["validate", str(VAQUERO_SOTS / "vagrant-local")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("sites/test-site/env.yml:14: site 'test-site': unknown field "
                               "'agents'") for line in out)
    assert any(line.startswith("sites/test-site/inventory.yml:136: host 'centos1'")
               for line in out)
    syntax = [line for line in out if line.startswith("assets/ignition/etcd.yml:")]
    assert len(syntax) >= 5  # several per file, not the first only
