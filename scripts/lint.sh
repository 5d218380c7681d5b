#!/usr/bin/env bash
# Lint: ruff over the Python sources, then mypy over the mlxd, mlxd_client and bench packages, with the versions
# .venv pins (the test extra; scripts/setup.sh makes .venv). Both read pyproject.toml, which leaves the generated stubs
# out.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/mypy ]; then
  bash scripts/setup.sh
fi
.venv/bin/ruff check daemon tests bench scripts clients/python
.venv/bin/mypy
