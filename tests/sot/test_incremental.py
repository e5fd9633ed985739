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

from appliance.sot import loader
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


def _hosts_at(revision: Revision) -> list[tuple[str, str, int, int, str]]:
    return [(name, e.at.file, e.at.doc.line, e.at.doc.index, e.key)
            for name, e in revision.sot.hosts.items()]


def _cluster_file(root: Path) -> Path:
    site = sorted(p.name for p in (root / "sites").iterdir())[0]
    return max((root / "sites" / site).glob("cluster-*.yml"), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("edit", ["shift-and-duplicate", "quoted-marker", "anchor", "comment"])
def test_a_changed_file_parsed_document_by_document_equals_a_whole_parse(
        base: tuple[Path, Revision], tmp_path: Path, edit: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed cluster file is parsed only where its documents changed (split at `---`):
    lines, document indexes, keys, problems and renders are those of a whole parse, also
    where a split would be wrong (a `---` inside a quoted value, an anchor) and the loader
    must fall back to the whole file."""
    root, parent = base
    shutil.copytree(root, tmp_path / "sot")
    file = _cluster_file(tmp_path / "sot")
    docs = file.read_text().split("\n---\n")
    assert len(docs) >= 8, "the fixture's largest cluster file holds too few hosts"
    if edit == "shift-and-duplicate":
        # a line more in the second host moves every later one; the fourth host takes the
        # sixth's boot MAC (reported at the sixth's line, a document not parsed again)
        docs[1] = docs[1].replace("metadata:\n", "metadata:\n  note: moved\n", 1)
        mac = docs[5].split('mac: "', 1)[1].split('"', 1)[0]
        old = docs[3].split('mac: "', 1)[1].split('"', 1)[0]
        docs[3] = docs[3].replace(old, mac, 1)
    elif edit == "quoted-marker":
        docs[2] = docs[2].replace("metadata:\n", 'metadata:\n  note: "one\n---\ntwo"\n', 1)
    elif edit == "anchor":
        docs[2] = docs[2].replace("metadata:\n", "metadata: &m\n", 1)
        docs[4] = docs[4].replace("metadata:\n", "metadata2: *m\nmetadata:\n", 1)
    else:
        docs[3] = docs[3].replace("metadata:\n", "# a comment\nmetadata:\n", 1)
    file.write_text("\n---\n".join(docs))

    # a spy on the real document-by-document parse: which path the compile took
    reparsed: list[bool] = []
    real = loader._reparse_changed_documents

    def spy(*args, **kwargs):
        unit = real(*args, **kwargs)
        reparsed.append(unit is not None)
        return unit

    monkeypatch.setattr(loader, "_reparse_changed_documents", spy)
    incremental = compile_tree(DirectoryTree(tmp_path / "sot"), parent)
    # the split is used where it is right, refused where a `---` or an anchor spans pieces
    assert reparsed == [edit in ("comment", "shift-and-duplicate")], reparsed
    full = compile_tree(DirectoryTree(tmp_path / "sot"))
    _assert_same(full, incremental)
    assert _hosts_at(incremental) == _hosts_at(full)
    if edit == "shift-and-duplicate":
        assert "duplicate-mac" in {p.code for p in full.problems}
    if edit in ("comment", "shift-and-duplicate"):
        assert incremental.result.rendered_here <= 2
        assert make_plan(parent, incremental).to_json() == make_plan(parent, full).to_json()


def test_a_template_edited_under_its_name_is_compiled_again(base: tuple[Path, Revision],
                                                             tmp_path: Path) -> None:
    """Compiled templates are kept across revisions (and handed back by the render worker)
    by name and source digest: the same name with new text is new code, for validation and
    for the boot table's renders alike."""
    root, parent = base
    _edit(root, tmp_path / "sot", "assets/ignition/flatcar-node-install.ign",
          '"mode": 384', '"mode": 420')
    edited = compile_tree(DirectoryTree(tmp_path / "sot"))  # no parent: only the cache
    assert edited.result.fingerprints != parent.result.fingerprints
    configs = [r[1][1] for r in _renders(edited).values() if r[1] is not None]
    assert any('"mode": 420' in c for c in configs)
    assert not any('"mode": 420' in c for c in
                   (r[1][1] for r in _renders(parent).values() if r[1] is not None))


@pytest.mark.parametrize("text", [
    b"a: 1\r\n---\r\nb: 2\r\n",  # CR: libyaml breaks lines there too
    b"a: &x 1\n---\nb: *x\n",  # an anchor: aliases count across documents
    b"%YAML 1.1\n---\na: 1\n",  # a directive binds to the next document
    b"name: h\xc3\xa9\n---\nb: 2\n",  # not ASCII (NEL, LS and PS are line breaks)
])
def test_a_file_a_cut_could_change_is_not_cut(text: bytes) -> None:
    from appliance.sot.yamlsrc import split_documents

    assert split_documents(text) is None


def test_pieces_start_at_each_document_marker_after_a_comment_head() -> None:
    from appliance.sot.yamlsrc import split_documents

    assert split_documents(b"# head\n\n---\na: 1\n--- \nb: 2\n---\n") == [
        (2, b"---\na: 1\n"), (4, b"--- \nb: 2\n"), (6, b"---\n")]
    assert split_documents(b"a: 1\n---\nb: 2") == [(0, b"a: 1\n"), (1, b"---\nb: 2")]




def test_cuts_are_the_lines_the_document_start_pattern_matches() -> None:
    """split_documents finds `---` lines by substring search; its pieces must start exactly
    at the YAML document-start pattern's matches (and at 0 for a head that is more than
    comments), whatever surrounds them."""
    import random
    import re

    from appliance.sot.yamlsrc import split_documents

    pattern = re.compile(rb"^---(?=[ \t\n]|\Z)", re.M)
    atoms = [b"---", b"\n", b"a: 1", b" ", b"\t", b"#c", b"--", b"-", b"x", b"----", b"--- "]
    rnd = random.Random(15)
    for _ in range(5000):
        data = b"".join(rnd.choice(atoms) for _ in range(rnd.randint(0, 12)))
        pieces = split_documents(data)
        assert pieces is not None
        at = len(data) - sum(len(piece) for _, piece in pieces)  # a comment-only head left out
        assert b"".join(piece for _, piece in pieces) == data[at:]
        starts = []
        for line, piece in pieces:
            assert line == data[:at].count(b"\n")
            starts.append(at)
            at += len(piece)
        matches = [m.start() for m in pattern.finditer(data)]
        assert starts == matches or starts == [0, *matches], data
