"""docs/peer.md, followed literally: its first-peer commands run as written (in a network
namespace of their own, so its fixed ports meet no other test), each with the exit code and
text its comment documents; its config example checked as written, with the result the doc
describes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.rigs.netns import NetnsRig, sweep_stale, unavailable_reason

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "peer.md").read_text()
VENV_BIN = str(Path(sys.executable).parent)
RESULT = re.compile(r"#\s*exit (\d+)(.*)$")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, re.S)


def _first_peer_script() -> tuple[str, list[tuple[int, str, int, list[str]]]]:
    """The block as a bash script that reports each documented command's exit code and
    output; and what the doc promises for each: (index, command, exit, texts)."""
    block = next(b for b in _blocks("sh") if "vaq-peer init" in b)
    lines, expected = ["set -m"], []
    for line in block.splitlines():
        match = RESULT.search(line)
        command = line[:match.start()].strip() if match else line.strip()
        if not command:
            continue
        if match is None:
            lines.append(command)
            continue
        n = len(expected)
        texts = re.findall(r'"([^"]+)"', match.group(2))
        expected.append((n, command, int(match.group(1)), texts))
        lines.append(f"{command} > /tmp/vaq-trial.out.{n} 2>&1; echo \"@@ {n} $?\"")
    return "\n".join(lines) + "\n", expected


@pytest.mark.slow
def test_first_peer_as_docs_peer_md_says() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    script, expected = _first_peer_script()
    assert len(expected) >= 5, script
    sweep_stale()
    shutil.rmtree("/tmp/vaq-trial", ignore_errors=True)
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    for key in ("VAQ_PEER", "VAQ_TOKEN", "VAQ_TOKEN_FILE"):
        env.pop(key, None)
    try:
        with NetnsRig() as rig:
            ns = rig.netns("doc")
            out = ns.run("bash", "-c", script, check=False, timeout=120, cwd=REPO, env=env)
            codes = dict(re.findall(r"^@@ (\d+) (\d+)$", out.stdout, re.M))
            for n, command, code, texts in expected:
                printed = Path(f"/tmp/vaq-trial.out.{n}").read_text()
                assert codes.get(str(n)) == str(code), (command, codes, printed, out.stderr)
                for text in texts:
                    assert text in printed, (command, text, printed)
            # `kill %1` stopped the peer: nothing of it is left in the namespace.
            left = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True,
                                  text=True).stdout.split()
            assert not left, left
    finally:
        shutil.rmtree("/tmp/vaq-trial", ignore_errors=True)
        for leftover in Path("/tmp").glob("vaq-trial.out.*"):
            leftover.unlink()


def test_config_example_as_written_gets_every_problem_at_once(tmp_path: Path) -> None:
    """On a machine with none of its files: exit 2, one line per missing file (at the line
    of the key naming it), the interface and the Raft address; nothing started."""
    example = next(b for b in _blocks("yaml") if "token_secret_file" in b)
    config = tmp_path / "peer.yaml"
    config.write_text(example)
    out = subprocess.run([f"{VENV_BIN}/vaq-peer", "serve", "--check", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    lines = example.splitlines()
    for number, line in enumerate(lines, start=1):
        named = re.search(r"\b(?:\w+_)?file: (secrets/[\w./-]+)", line)
        if named:
            assert re.search(rf"^{re.escape(str(config))}:{number}: .*{named.group(1)} does not "
                             "exist", out.stderr, re.M), (line, out.stderr)
    assert re.search(r":5: no network interface 'eno2'", out.stderr), out.stderr
    assert "10.0.0.11 is not an address of this machine" in out.stderr, out.stderr
    assert "nothing was started" in out.stderr
    assert not (tmp_path / "var").exists()
