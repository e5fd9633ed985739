"""Where the bundled example SoTs are, for netboot tests that compile one."""

from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "sot_examples" / "lab"
