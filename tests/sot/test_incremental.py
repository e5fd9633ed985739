"""A revision compiled against its parent is the revision a full compile gives.

The incremental compile reuses the parent's parsed files and host renders by content
(files by their bytes, renders by the digests of everything they read). If a key missed an
input, a change to that input would be served stale: so each kind of change a push makes
(a template, a host, env.yml, a snippet a template includes, an error) is compiled both
ways and compared byte for byte: every rendered file, every problem, and the plan.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.sot.plan import make_plan
from appliance.sot.render import Renderer
from appliance.sot.revision import Revision, compile_tree
from appliance.sot.tree import DirectoryTree
from tools import gen_sot

HOSTS = 120


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Revision]:
    root = tmp_path_factory.mktemp("incremental") / "base"
    gen_sot.generate(root, HOSTS, 2, 1)
    revision = compile_tree(DirectoryTree(root))
    assert revision.valid, revision.problems[:3]
    return root, revision


def _edit(src: Path, dst: Path, path: str, old: str, new: str) -> None:
    shutil.copytree(src, dst)
    file = dst / path
    text = file.read_text()
    assert old in text, f"{path} does not contain {old!r}"
    file.write_text(text.replace(old, new, 1))


def _renders(revision: Revision) -> dict[tuple[str, int], tuple[str, object]]:
    """Every stage of every host as served (the boot table's renderer, real SHA)."""
    sot = revision.sot
    renderer = Renderer(sot, revision.sha)
    out = {}
    for name, entry in sot.hosts.items():
        for index in range(1, len(sot.workflows[entry.host.workflow].stages) + 1):
            out[(name, index)] = renderer.render_stage(entry, index, "t0ken")
    return out


def _assert_same(full: Revision, incremental: Revision) -> None:
    assert incremental.sha == full.sha
    assert [str(p) for p in incremental.problems] == [str(p) for p in full.problems]
    assert incremental.result.fingerprints == full.result.fingerprints
    assert incremental.result.renders == full.result.renders
    assert incremental.summary() == full.summary()


CHANGES = {
    # a template used by every Flatcar node pool
    "template": ("assets/ignition/flatcar-node-install.ign", '"mode": 384', '"mode": 256'),
    # a snippet included by several templates (and only by them)
    "snippet": ("assets/ignition/snippets/passwd.json", "core", "admin"),
    # one host's document: its disk
    "host": ("sites/{site}/cluster-{cluster}.yml", "os: /dev/", "os: /dev/disk/by-id/"),
    # the site: every host of it is served differently
    "env": ("sites/{site}/env.yml", "mirror: ", "mirror: http://mirror.example.net/x#"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_incremental_compile_equals_a_full_one(base: tuple[Path, Revision], tmp_path: Path,
                                               change: str) -> None:
    root, parent = base
    path, old, new = CHANGES[change]
    site = sorted(p.name for p in (root / "sites").iterdir())[0]
    cluster = sorted(p.name for p in (root / "sites" / site).glob("cluster-*.yml"))[0]
    path = path.format(site=site, cluster=cluster.removeprefix("cluster-").removesuffix(".yml"))
    _edit(root, tmp_path / "sot", path, old, new)

    incremental = compile_tree(DirectoryTree(tmp_path / "sot"), parent)
    full = compile_tree(DirectoryTree(tmp_path / "sot"))
    _assert_same(full, incremental)
    assert full.valid
    assert incremental.result.rendered_here < len(full.sot.hosts) or change == "env"
    assert incremental.result.fingerprints != parent.result.fingerprints  # it did change
    assert _renders(incremental) == _renders(full)
    assert make_plan(parent, incremental).to_json() == make_plan(parent, full).to_json()


def test_a_change_that_breaks_reports_the_same_problems_at_the_same_lines(
        base: tuple[Path, Revision], tmp_path: Path) -> None:
    """A duplicate MAC between a changed file and an unchanged one: the unchanged host's
    line comes from a file the incremental compile did not parse."""
    root, parent = base
    site = sorted(p.name for p in (root / "sites").iterdir())[0]
    first, second = sorted((root / "sites" / site).glob("cluster-*.yml"))[:2]
    mac = next(line.split("mac:")[1].strip() for line in first.read_text().splitlines()
               if "mac:" in line)
    text = second.read_text()
    theirs = next(line.split("mac:")[1].strip() for line in text.splitlines() if "mac:" in line)
    shutil.copytree(root, tmp_path / "sot")
    (tmp_path / "sot" / second.relative_to(root)).write_text(text.replace(theirs, mac, 1))
    # and a template that no longer renders for anyone who uses it
    tpl = tmp_path / "sot" / "assets/ignition/flatcar-node-install.ign"
    tpl.write_text(tpl.read_text().replace("host.metadata.disks.os", "host.metadata.nope", 1))

    incremental = compile_tree(DirectoryTree(tmp_path / "sot"), parent)
    full = compile_tree(DirectoryTree(tmp_path / "sot"))
    assert not full.valid
    codes = {p.code for p in full.problems}
    assert {"duplicate-mac", "render-failed"} <= codes, codes
    _assert_same(full, incremental)
    # and back: the broken revision as a parent of the fixed one
    fixed = compile_tree(DirectoryTree(root), incremental)
    _assert_same(parent, fixed)
