"""The compiled revision a restarting peer serves from is checked before it is trusted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from appliance.sot import revision_store
from appliance.sot.render import Renderer
from appliance.sot.revision import Revision, compile_directory
from appliance.sot.revision_store import RevisionStore, verdict

EXAMPLE = Path(__file__).resolve().parents[2] / "sot_examples" / "multisite"


@pytest.fixture(scope="module")
def revision() -> Revision:
    rev = compile_directory(str(EXAMPLE))
    assert rev.valid
    return rev


def _scripts(rev: Revision) -> list[str]:
    renderer = Renderer(rev.sot, rev.sha)
    return [renderer.render_ipxe(entry, 1, "t") for entry in rev.sot.hosts.values()]


def test_a_stored_revision_reads_back_the_same(tmp_path: Path, revision: Revision) -> None:
    store = RevisionStore(tmp_path)
    store.save(revision)
    loaded = store.load(revision.sha)
    assert loaded is not None
    back, known = loaded
    assert known == verdict(revision) == verdict(back)
    assert back.result.fingerprints == revision.result.fingerprints
    assert _scripts(back) == _scripts(revision)
    # a line number asked of the read-back model still comes from the YAML text
    entry = next(iter(back.sot.hosts.values()))
    original = revision.sot.hosts[entry.host.name]
    assert entry.at.line("interfaces", 0, "mac") == original.at.line("interfaces", 0, "mac") > 1


@pytest.mark.parametrize("damage", ["flip-a-body-byte", "truncate", "header", "other-code"])
def test_a_damaged_or_stale_file_is_ignored_and_logged(tmp_path: Path, revision: Revision,
                                                       damage: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = RevisionStore(tmp_path)
    path = store.save(revision)
    data = bytearray(path.read_bytes())
    if damage == "flip-a-body-byte":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[len(data) - 100:]
    elif damage == "header":
        data[:1] = b"X"
    path.write_bytes(bytes(data))
    if damage == "other-code":  # the SoT code changed since the file was written
        monkeypatch.setattr(revision_store, "code_version", lambda: "another")
    with capture_logs() as logs:
        assert store.load(revision.sha) is None
    (event,) = [e for e in logs if e["event"] == "revision_store.ignored"]
    assert event["file"] == str(path) and event["reason"]


def test_the_child_compile_writes_the_same_verdict(tmp_path: Path, revision: Revision) -> None:
    """What a restarted peer runs in the background to check the file it serves from."""
    proc = subprocess.run(
        [sys.executable, "-m", "appliance.revalidate", "--store", str(tmp_path),
         "--sha", revision.sha, "--path", str(EXAMPLE)],
        capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(proc.stdout.strip().rsplit("\n", 1)[-1])
    assert result["valid"] and result["verdict"] == verdict(revision)
    assert RevisionStore(tmp_path).load(revision.sha) is not None
