#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, types, then every test (slow end-to-end ones
# included). mypy runs from the virtualenv so it sees every dependency (config: pyproject).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
