#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, then every test (slow end-to-end ones included).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
