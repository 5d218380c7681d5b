#!/usr/bin/env bash
# Make .bench-venv: mlxd plus the engines it is compared against (mlx-lm, llama-cpp-python). Never a
# dependency of mlxd itself. llama-cpp-python has no Linux wheel on PyPI, so it builds from source (CPU only,
# OpenBLAS when Debian's libopenblas-dev is there, plain ggml otherwise): ~15-25 minutes on 2 cores. Idempotent.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
MLX_LM_VERSION=0.32.2
TRANSFORMERS_VERSION=5.23.0
LLAMA_CPP_PYTHON_VERSION=0.3.36
PY_SPY_VERSION=0.4.3
[ -x .bench-venv/bin/python ] || python3 -m venv .bench-venv
py=.bench-venv/bin/python
$py -m pip install -q --upgrade pip >/dev/null
$py -m pip install -q -e . "mlx-lm==$MLX_LM_VERSION" "transformers==$TRANSFORMERS_VERSION" "py-spy==$PY_SPY_VERSION"
if ! $py -c "import llama_cpp" 2>/dev/null; then
  command -v cmake >/dev/null || $py -m pip install -q cmake
  command -v ninja >/dev/null || $py -m pip install -q ninja
  cmake_args="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF"
  # ggml's own CPU kernels are what llama.cpp users get by default; BLAS only helps large-batch prefill.
  if [ "${BENCH_LLAMA_BLAS:-0}" = 1 ] && [ -f /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ]; then
    cmake_args="$cmake_args -DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS"
  fi
  CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    $py -m pip install -v --no-cache-dir "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
fi
$py -c "import mlx_lm, llama_cpp, mlxd; print('bench env ready: mlx-lm', mlx_lm.__version__, 'llama-cpp-python', llama_cpp.__version__)"
