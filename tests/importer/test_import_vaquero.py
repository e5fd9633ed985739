"""`vaq-peer import-vaquero` on the three SoTs written for the original Vaquero.

Without decisions the import lists what needs a person (the committed IMPORT-TODO.md of
each) and exits 1; with the answers a person would give (tests/importer/answers/) it exits
0, `vaq-peer validate` accepts the result and `vaq-peer plan none` answers.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from appliance.cli import main

HERE = Path(__file__).parent
ORIGINALS = HERE / "originals"
SOTS = ["examples-master", "examples-vagrant-branch", "vagrant-local"]
HOSTS = {"examples-master": 6, "examples-vagrant-branch": 9, "vagrant-local": 9}


@pytest.mark.parametrize("name", SOTS)
def test_import_lists_what_needs_a_person(name: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / name
    assert main(["import-vaquero", str(ORIGINALS / name), str(dst)]) == 1
    out = capsys.readouterr().out
    expected = (HERE / "expected" / f"{name}.IMPORT-TODO.md").read_text()
    assert (dst / "IMPORT-TODO.md").read_text() == expected
    count = expected.count("\n- [ ] ")
    assert f"{count} item(s) to decide" in out
    # The converted SoT is checked like any other: what is left makes it invalid.
    assert main(["validate", str(dst)]) == 1
    assert "NOT valid" in capsys.readouterr().out


@pytest.mark.parametrize("name", SOTS)
def test_import_with_answers_validates_and_plans(name: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / name
    answers = HERE / "answers" / f"{name}.yml"
    code = main(["import-vaquero", str(ORIGINALS / name), str(dst), "--answers", str(answers)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "nothing left to decide; it validates" in out
    assert main(["validate", str(dst)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(": valid")
    assert main(["plan", "none", str(dst)]) == 0
    plan = capsys.readouterr().out
    assert f"{HOSTS[name]} to install" in plan


def test_sha256_from_a_directory_of_artifacts(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    artifacts = tmp_path / "files"
    artifacts.mkdir()
    digests = {}
    for name in ("coreos_production_pxe.vmlinuz", "coreos_production_pxe_image.cpio.gz"):
        data = f"not really {name}".encode()
        (artifacts / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    dst = tmp_path / "sot"
    main(["import-vaquero", str(ORIGINALS / "vagrant-local"), str(dst), "--sha256-from",
          str(artifacts)])
    capsys.readouterr()
    os_file = (dst / "os" / "coreos-pxe.yml").read_text()
    for digest in digests.values():
        assert f"sha256: {digest}" in os_file
    todo = (dst / "IMPORT-TODO.md").read_text()
    assert "sha256@os/coreos-pxe.yml" not in todo
    assert "sha256@os/centos-pxe.yml:9" in todo  # not in the directory: still to decide


def test_bmc_password_goes_to_a_secrets_stub_not_the_sot(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    dst = tmp_path / "sot"
    main(["import-vaquero", str(ORIGINALS / "examples-master"), str(dst)])
    capsys.readouterr()
    stub = tmp_path / "sot.bmc-secrets.yml"
    assert stat.S_IMODE(stub.stat().st_mode) == 0o600
    assert "password: schaub" in stub.read_text()
    for path in dst.rglob("*"):
        if path.is_file():
            assert "schaub" not in path.read_text(), path
    cluster = (dst / "sites" / "test-site" / "cluster-inventory.yml").read_text()
    assert "credentials: test-site-host1-ipmi" in cluster


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import-vaquero", str(tmp_path / "nope"), str(tmp_path / "dst")]) == 2
    src = ORIGINALS / "vagrant-local"
    assert main(["import-vaquero", str(src), str(src / "out")]) == 2
    assert "must not be SRC or inside it" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    assert main(["import-vaquero", str(src), str(other)]) == 2
    assert "is not empty and holds no previous import" in capsys.readouterr().err


def test_import_again_replaces_the_previous_import(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "sot"
    main(["import-vaquero", str(ORIGINALS / "vagrant-local"), str(dst)])
    stale = dst / "assets" / "untyped" / "left-over.sh"
    stale.parent.mkdir(parents=True)
    stale.write_text("#!/bin/sh\n")  # a person's own file: kept
    (dst / "os" / "coreos-pxe.yml").unlink()
    main(["import-vaquero", str(ORIGINALS / "vagrant-local"), str(dst), "--answers",
          str(HERE / "answers" / "vagrant-local.yml")])
    capsys.readouterr()
    assert (dst / "os" / "coreos-pxe.yml").is_file() and stale.is_file()


GOLDEN = sorted((HERE / "golden").iterdir())


@pytest.mark.parametrize("golden", GOLDEN, ids=[g.name for g in GOLDEN])
def test_imported_templates_render_what_the_original_rendered(golden: Path,
                                                              tmp_path: Path) -> None:
    """The config an imported template renders for a host, against the text the original
    Go template rendered for it (worked out by hand from Go's rules: trim markers, range
    bodies repeated with their surrounding whitespace, `index` of a missing key false)."""
    from appliance.sot.render import Renderer
    from appliance.sot.revision import compile_directory

    name, host = golden.stem.rsplit("-", 1)
    dst = tmp_path / name
    answers = HERE / "answers" / f"{name}.yml"
    assert main(["import-vaquero", str(ORIGINALS / name), str(dst), "--answers",
                 str(answers)]) == 0
    revision = compile_directory(str(dst))
    kind, text = Renderer(revision.sot, revision.sha).render_config(revision.sot.hosts[host], 1)
    assert kind == golden.suffix[1:]
    assert text == golden.read_text()


def test_deciding_an_item_does_not_make_an_invalid_import_pass(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Marking the checksum items decided without giving checksums leaves them missing:
    the import still does not validate, so it still exits 1."""
    answers = (HERE / "answers" / "vagrant-local.yml").read_text()
    answers = answers.replace("sha256:\n", "unused_sha256:\n", 1).replace(
        "decided:  #", 'decided:\n  - "sha256@os/centos-pxe.yml:9"\n  - '
        '"sha256@os/centos-pxe.yml:11"\n  - "sha256@os/coreos-pxe.yml:9"\n  - '
        '"sha256@os/coreos-pxe.yml:11"\n  #', 1)
    path = tmp_path / "answers.yml"
    path.write_text(answers)
    code = main(["import-vaquero", str(ORIGINALS / "vagrant-local"), str(tmp_path / "sot"),
                 "--answers", str(path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "invalid: the import does not validate" in out and "sha256 is missing" in out


def test_validate_steps_become_the_health_checks_of_the_stages_booting_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """etcd-master's curl of the host becomes an http check of its stage; etcd-proxy's, turned
    into `nc -z` of the host here, a tcp check; neither lands on the workflow's rollout."""
    src = tmp_path / "src"
    shutil.copytree(ORIGINALS / "examples-master", src)
    proxy = src / "boot" / "etcd-proxy.yml"
    text = proxy.read_text()
    start = text.index("validate:")
    proxy.write_text(text[:start] + "validate:\n  - image: busybox\n    command: "
                     "'nc -z -w 5 {{.interface.ipv4}} 2379'\n    timeout: 30\n")
    dst = tmp_path / "dst"
    assert main(["import-vaquero", str(src), str(dst)]) == 1
    capsys.readouterr()
    master = yaml.safe_load((dst / "workflows" / "etcd-master.yml").read_text())
    assert master["stages"] == [{"boot": "etcd-master", "health": {
        "type": "http", "port": 2379, "path": "/health", "timeout": 61}}]
    assert "health" not in master.get("rollout", {})
    wf = yaml.safe_load((dst / "workflows" / "etcd-proxy.yml").read_text())
    assert wf["stages"] == [{"boot": "etcd-proxy", "health": {
        "type": "tcp", "port": 2379, "timeout": 30}}]
    todo = (dst / "IMPORT-TODO.md").read_text()
    assert "boot/etcd-proxy.yml:21" not in todo  # the tcp check was mapped: nothing to decide
    assert "secrets@boot/etcd-proxy.yml:15" in todo  # its before_shutdown's IPMI password


def test_before_shutdown_steps_become_hooks_of_the_stages_booting_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A before_shutdown container that curls the host (with its method) or runs `nc -z` of
    it becomes a hook of each stage booting that boot; an `echo` (no effect outside its
    container) and an IPMI chassis status (the leader's own query before each power action)
    are left out with a note, not a decision; any other container still needs a person."""
    src = tmp_path / "src"
    shutil.copytree(ORIGINALS / "examples-master", src)
    master = src / "boot" / "etcd-master.yml"
    text = master.read_text()
    start, end = text.index("before_shutdown:"), text.index("# Validate")
    master.write_text(text[:start] + "before_shutdown:\n"
                      "  - image: byrnedo/alpine-curl\n    command: 'echo'\n"
                      "    args: ['shutting down etcd master']\n"
                      "  - image: byrnedo/alpine-curl\n    command: 'curl -fs -X POST "
                      "http://{{.interface.ipv4}}:2379/v2/members/leave'\n    timeout: 90\n"
                      "  - image: busybox\n    commands: ['nc -z {{.interface.ipv4}} 4001']\n"
                      "  - image: busybox\n    commands: ['etcdctl member remove x']\n"
                      + text[end:])
    dst = tmp_path / "dst"
    assert main(["import-vaquero", str(src), str(dst)]) == 1
    capsys.readouterr()
    stages = yaml.safe_load((dst / "workflows" / "etcd-master.yml").read_text())["stages"]
    assert stages[0]["before_shutdown"] == [
        {"name": "etcd-master-2", "type": "http", "port": 2379, "path": "/v2/members/leave",
         "timeout": 90, "method": "POST"},
        {"name": "etcd-master-3", "type": "tcp", "port": 4001, "timeout": 60}]
    todo = (dst / "IMPORT-TODO.md").read_text()
    decide, notes = todo.split("## Left out, nothing to decide")
    assert "containers@boot/etcd-master.yml:25" in decide  # etcdctl: needs a person
    for line in (17, 20, 23):  # the echo (a note), the curl and the nc (mapped)
        assert f"boot/etcd-master.yml:{line}`" not in decide, line
    assert "inert `boot/etcd-master.yml:17`" in notes
    assert "covered `boot/etcd-proxy.yml:15`" in notes
    assert main(["validate", str(dst)]) == 1  # what is left (checksums, ...), not the hooks
    assert "workflows/etcd-master.yml" not in capsys.readouterr().out


def test_validate_on_is_listed_with_why_it_has_no_equivalent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    shutil.copytree(ORIGINALS / "examples-master", src)
    proxy = src / "workflows" / "etcd-proxy.yml"
    proxy.write_text(proxy.read_text().replace(
        "  block_deps: ['etcd-master']", "  block_deps: ['etcd-master']\n"
        "  validate_on: ['etcd-master']", 1))
    dst = tmp_path / "dst"
    assert main(["import-vaquero", str(src), str(dst)]) == 1
    capsys.readouterr()
    todo = (dst / "IMPORT-TODO.md").read_text()
    assert "**validate-on** `workflows/etcd-proxy.yml:7`" in todo, todo
    assert "validate_on: [etcd-master] reran this workflow's `validate` containers" in todo
    assert "validate_on" not in (dst / "workflows" / "etcd-proxy.yml").read_text()
