#!/usr/bin/env bash
# The test command: set up .venv, then run every test. pytest exits non-zero when no test ran.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
