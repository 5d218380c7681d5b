#!/usr/bin/env bash
# Make .venv with mlxd and its test tools installed from the package registries. Idempotent.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
# OpenBLAS from PyPI (cmeel-openblas) needs the GNU Fortran runtime; on Debian it is one package away.
# Without it mlxd still runs, on the slow reference BLAS (the log says so).
if [ "$(uname)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q libgfortran.so.5; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq libgfortran5 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libgfortran5; }) \
      >/dev/null 2>&1 || echo "setup: could not install libgfortran5; CPU matmuls will be slow" >&2
  else
    echo "setup: libgfortran5 is missing (apt-get install libgfortran5); CPU matmuls will be slow" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"
