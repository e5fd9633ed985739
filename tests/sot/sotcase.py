"""Materialise a test SoT: a base SoT plus the edits of a corpus case, in a temp folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# "lab": the bundled lab site as it was on Flatcar (Ignition configs with snippets, invented
# sha256 values, never fetched): the corpus's cases edit its Ignition files.
BASES = {
    "lab": REPO / "tests" / "sot" / "fixtures" / "flatcar-lab",
    "kinds": REPO / "tests" / "sot" / "fixtures" / "kinds",
}


def materialise(case: dict, dest: Path) -> Path:
    """Copy the case's base SoT to `dest` and apply its replace/patch/delete edits."""
    shutil.copytree(BASES[case.get("base", "lab")], dest)
    for path, text in (case.get("replace") or {}).items():
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    for edit in case.get("patch") or []:
        target = dest / edit["file"]
        text = target.read_text()
        if edit["old"] not in text:
            raise AssertionError(f"patch target not found in {edit['file']}: {edit['old']!r}")
        target.write_text(text.replace(edit["old"], edit["new"], 1))
    for path in case.get("delete") or []:
        (dest / path).unlink()
    return dest


def load_case(path: Path) -> dict:
    return yaml.safe_load(path.read_text())
