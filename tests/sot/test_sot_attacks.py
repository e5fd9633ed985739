"""A commit is input: attacks a careless or hostile SoT committer can make, each asserting the
attack fails and a known machine (lab-01) still validates and renders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from sotcase import BASES

from appliance.cli import main
from appliance.sot.tree import DirectoryTree, UnsafeEntry

SECRET = "root:$6$THIS-IS-A-SECRET-HASH:19000:0:99999:7:::"


def _lab(tmp_path: Path) -> Path:
    root = tmp_path / "sot"
    shutil.copytree(BASES["lab"], root)
    return root


def _assert_lab01_renders(root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["render", "lab-01", "--sot", str(root), "--stage", "1", "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)["stages"][0]
    assert "data:,lab-01" in data["config"] and "phone-home/lab-01/1/" in data["config"]
    return out


def test_symlinks_out_of_the_tree_are_never_read(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "shadow"
    outside.write_text(SECRET + "\n")
    secret_dir = tmp_path / "secret-dir"
    secret_dir.mkdir()
    (secret_dir / "x.yml").write_text(SECRET + "\n")
    root = _lab(tmp_path)
    (root / "os" / "shadow.yml").symlink_to(outside)             # a file link: error lines
    (root / "assets" / "ignition" / "snippets" / "leak").symlink_to(outside)  # via include
    (root / "workflows" / "linked").symlink_to(secret_dir)       # a directory link
    os.mkfifo(root / "os" / "fifo.yml")                          # would block a reader
    ign = root / "assets" / "ignition" / "install.ign"
    ign.write_text(ign.read_text().replace('{% include "snippets/install-unit.json" %}',
                                           '{% include "snippets/install-unit.json" %}'
                                           '{# {% include "snippets/leak" %} #}'))
    tree = DirectoryTree(root)
    files = list(tree.files())
    assert "os/shadow.yml" not in files and "os/fifo.yml" not in files
    assert not any(f.startswith("workflows/linked") for f in files)
    for path in ("os/shadow.yml", "assets/ignition/snippets/leak", "workflows/linked/x.yml",
                 "../shadow", "os/../../shadow"):
        with pytest.raises(UnsafeEntry):
            tree.read(path)

    main(["validate", str(root)])
    assert SECRET not in capsys.readouterr().out
    # An include of the link is a missing template, not the file's content.
    ign.write_text(ign.read_text().replace('{# {% include "snippets/leak" %} #}',
                                           '{% include "snippets/leak" %}'))
    assert main(["validate", str(root)]) != 0
    out = capsys.readouterr().out
    assert SECRET not in out and "snippets/leak" in out
    ign.write_text(ign.read_text().replace('{% include "snippets/leak" %}', ""))
    assert SECRET not in _assert_lab01_renders(root, capsys)


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ['id: bomb', 'a0: &a0 ["' + "x" * 64 + '"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import resource
    import time

    root = _lab(tmp_path)
    (root / "os" / "bomb.yml").write_text(_alias_bomb())  # 9**9 values if expanded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    assert main(["validate", str(root)]) != 0
    elapsed = time.monotonic() - started
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    out = capsys.readouterr().out
    assert "os/bomb.yml" in out and "alias" in out
    assert elapsed < 30 and grown_kb < 512 * 1024, (elapsed, grown_kb)  # bounds, not timings
    (root / "os" / "bomb.yml").unlink()
    _assert_lab01_renders(root, capsys)


def test_peer_config_alias_bomb_is_refused(tmp_path: Path) -> None:
    from appliance.sot.yamlsrc import YamlError, load_documents

    with pytest.raises(YamlError, match="alias"):
        load_documents(_alias_bomb())
    # Anchors used as people use them still load.
    docs = load_documents("d: &d {a: 1}\nhosts:\n" + "".join(
        f"  - {{name: h{i}, <<: *d}}\n" for i in range(20000)))
    assert docs[0].data["hosts"][19999] == {"name": "h19999", "a": 1}


@pytest.mark.parametrize(("template", "expect"), [
    ("{{ ('a' * 3*10**9)|length }}", "more than its budget"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "time budget"),
    ("{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}{{ ns.s|length }}", "more than its budget"),
    ("{{ 'a'.ljust(10**10) }}{{ 'a'|center(10**10) }}", "more than its budget"),
    ("{{ 10 ** 100000000 }}", "too large"),
    ("{% macro m(n) %}{{ m(n) }}{{ m(n) }}{% endmacro %}{{ m(1) }}", "recursion"),
], ids=["multiply", "nested-range", "doubling", "widths", "power", "recursion"])
def test_runaway_template_is_stopped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     template: str, expect: str) -> None:
    import resource
    import time

    root = _lab(tmp_path)
    ign = root / "assets" / "ignition" / "install.ign"
    good = ign.read_text()
    ign.write_text(template + good)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    assert main(["validate", str(root)]) != 0
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert "assets/ignition/install.ign" in out and expect in out, out
    # One budget per template per revision (2 s), not one per host; memory untouched.
    assert elapsed < 60, elapsed
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024
    ign.write_text(good)
    _assert_lab01_renders(root, capsys)


def test_render_worker_bounds_memory_and_time() -> None:
    """What the in-template checks miss, the worker still bounds: an allocation past its
    address-space limit fails in the child, a pass past its clock is killed."""
    import time

    from appliance.sot.render_worker import WorkerFailed, run_bounded

    with pytest.raises(WorkerFailed, match="memory budget"):
        run_bounded(bytearray, 3 << 30, seconds=60, memory_bytes=256 << 20)
    started = time.monotonic()
    with pytest.raises(WorkerFailed, match="time budget"):
        run_bounded(time.sleep, 60, seconds=1, memory_bytes=256 << 20)
    assert time.monotonic() - started < 30
    assert run_bounded(sum, [1, 2, 3], seconds=30, memory_bytes=256 << 20) == 6


@pytest.mark.parametrize(("text", "expect"), [
    ("id: x\nname: \x1e\n", "control characters"),
    ("id: x\nn: " + "9" * 5000 + "\n", "not a usable number"),
    ("id: x\nx: " + "[" * 20000 + "]" * 20000 + "\n", "not valid YAML"),
], ids=["control-character", "huge-integer", "deep-nesting"])
def test_hostile_yaml_is_a_problem_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               text: str, expect: str) -> None:
    """Found by tools/fuzz/sot_fuzz.py: these escaped the loader as exceptions."""
    root = _lab(tmp_path)
    (root / "os" / "hostile.yml").write_text(text)
    assert main(["validate", str(root)]) != 0
    out = capsys.readouterr().out
    assert "os/hostile.yml" in out and expect in out, out
    (root / "os" / "hostile.yml").unlink()
    _assert_lab01_renders(root, capsys)
