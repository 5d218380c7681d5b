#!/usr/bin/env bash
# The main job: set up .venv, fetch SmolLM2-135M-Instruct (once, into ~/.cache/mlxd), serve it with mlxd and
# stream one chat answer over gRPC. Extra arguments go to scripts/demo.py (--model PATH, --prompt TEXT).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
