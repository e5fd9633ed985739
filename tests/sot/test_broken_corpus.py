"""Each broken SoT of the corpus is refused with exactly the problems a person must see.

The cases are edits of a valid base SoT (tests/sot/broken/*.yml). Exact expectations catch
both a missing message and noise: one mistake must not be reported as several.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sotcase import REPO, load_case, materialise

from appliance.cli import main

CASES = sorted((Path(__file__).parent / "broken").glob("*.yml"))


@pytest.mark.parametrize("case_file", CASES, ids=[c.stem for c in CASES])
def test_broken_sot_is_refused_with_its_messages(case_file: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    case = load_case(case_file)
    sot = materialise(case, tmp_path / "sot")
    code = main(["validate", str(sot)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    problems = out[:-1]
    assert problems == case["expect"], f"{case['description']}: got\n" + "\n".join(out)
    assert out[-1].endswith(f"NOT valid: {len(case['expect'])} problem(s)")


def test_every_case_expects_at_least_one_problem() -> None:
    assert len(CASES) >= 30
    for case_file in CASES:
        case = load_case(case_file)
        assert case["expect"], f"{case_file.name} expects no problem"
        assert case["description"]


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    """Through the installed console script: 0 valid, 1 invalid with JSON, 2 usage error."""
    exe = Path(sys.executable).parent / "vaq-peer"
    ok = subprocess.run([exe, "validate", REPO / "sot_examples" / "lab", "--json"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["valid"] is True

    sot = materialise(load_case(Path(__file__).parent / "broken" / "duplicate-mac.yml"),
                      tmp_path / "sot")
    bad = subprocess.run([exe, "validate", sot, "--json"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["valid"] is False
    assert report["problems"][0]["code"] == "duplicate-mac"
    assert report["problems"][0]["file"] == "sites/lab/cluster-lab.yml"
    assert report["problems"][0]["line"] == 27

    usage = subprocess.run([exe, "validate", tmp_path / "nope"], capture_output=True, text=True,
                           timeout=60)
    assert usage.returncode == 2
    assert "is not a directory" in usage.stderr
    usage = subprocess.run([exe, "validate", "--bogus"], capture_output=True, text=True,
                           timeout=60)
    assert usage.returncode == 2
