"""docs/federation.md's examples, as written: its YAML blocks load into the models they show,
the plan text it quotes is what `vaq-peer plan` prints for the multisite example, and
`vaq-peer federation-key` writes a key whose printed line the SoT accepts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from appliance.config import FederationConfig
from appliance.federation.keys import load_signing_key
from appliance.sot.models import Federation, SiteFederation

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "federation.md").read_text()
EXE = str(Path(sys.executable).parent / "vaq-peer")


def yaml_block(first_line: str) -> dict:
    for block in re.findall(r"```yaml\n(.*?)```", DOC, re.S):
        if block.startswith(first_line):
            return yaml.safe_load(block)
    raise AssertionError(f"no yaml block starting with {first_line!r}")


def test_the_yaml_examples_are_valid() -> None:
    fed = Federation.model_validate(yaml_block("# federation.yml"))
    assert fed.rollout is not None and fed.rollout.waves == [["fra1"], ["ams1"]]
    SiteFederation.model_validate(yaml_block("# sites/fra1/env.yml")["federation"])
    FederationConfig.model_validate(yaml_block("# /etc/vaquero/peer.yaml")["federation"])


def test_the_quoted_plan_text_and_the_key_command(tmp_path: Path) -> None:
    plan = subprocess.run([EXE, "plan", "none", str(REPO / "sot_examples/multisite")],
                          capture_output=True, text=True, timeout=300).stdout
    for line in ("Rollout across sites:", "  wave 1 (canary): fra1", "  wave 2: ams1",
                 "  site fra1: position 1; goes first", "  site ams1: position 2; applies "
                 "after fra1"):
        assert line in plan.splitlines() and line.strip() in DOC, line
    out = subprocess.run([EXE, "federation-key", str(tmp_path / "site.key")],
                         capture_output=True, text=True, check=True, timeout=60)
    line = out.stdout.strip()
    SiteFederation.model_validate({"keys": [line]})
    assert load_signing_key(tmp_path / "site.key").public_text() == line
    again = subprocess.run([EXE, "federation-key", str(tmp_path / "site.key")],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "never overwritten" in again.stderr
