#!/usr/bin/env bash
# The test command: set up .venv, then run every test. pytest exits non-zero when no test ran.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/setup.sh
# The in-process model tests run on the fast CPU path too (OpenBLAS preloaded, as `mlxd serve` does itself);
# they pass without it, only slower.
blas=$(.venv/bin/python -c "from mlxd.launcher import find_loadable_blas; print(find_loadable_blas()[0] or '')")
if [ -n "$blas" ] && [ "$(uname)" = Linux ]; then
  export LD_PRELOAD="$blas${LD_PRELOAD:+:$LD_PRELOAD}" MLXD_BLAS_PRELOAD="openblas:$blas"
fi
# --fast: only the tier without real models, child processes or stress runs (under a minute on 2 cores).
if [ "${1:-}" = "--fast" ]; then
  shift
  set -- -m "not real_model and not process and not stress" "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
