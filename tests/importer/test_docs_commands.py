"""The commands of docs/import-vaquero.md work as written (run from the repository root)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from appliance.cli import main

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "import-vaquero.md"


def _commands() -> list[list[str]]:
    text = DOC.read_text()
    blocks = re.findall(r"```\n(.*?)```", text, re.S)
    out = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("vaq-peer "):
                out.append(shlex.split(line)[1:])
    return out


def test_doc_commands_run_with_the_exit_codes_the_doc_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    commands = _commands()
    assert [c[0] for c in commands] == ["import-vaquero", "validate", "import-vaquero",
                                        "validate", "plan"]
    codes = []
    for argv in commands:
        argv = [a.replace("/tmp/vagrant-sot", os.fspath(tmp_path / "vagrant-sot")) for a in argv]
        codes.append(main(argv))
    out = capsys.readouterr().out
    assert codes == [1, 1, 0, 0, 0], out
    assert "22 item(s) to decide" in out
    assert "9 to install" in out
