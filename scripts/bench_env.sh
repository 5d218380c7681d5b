#!/usr/bin/env bash
# Make .bench-venv: mlxd plus the engines it is compared against (mlx-lm, llama-cpp-python) and py-spy for
# profiling the daemon; then `.bench-venv/bin/python -m bench <name>` from the repository root (bench/README.md).
# Never a dependency of mlxd itself. llama-cpp-python has no Linux wheel on PyPI, so it builds from source (CPU
# only, OpenBLAS when Debian's libopenblas-dev is there, plain ggml otherwise): ~15-25 minutes on 2 cores.
# Idempotent.
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
# A build with the AMX kernels (an earlier version of this script) is replaced.
if ! $py -c "import llama_cpp, sys; sys.exit(b'AMX_INT8 = 1' in llama_cpp.llama_print_system_info())" 2>/dev/null; then
  $py -m pip uninstall -y -q llama-cpp-python >/dev/null 2>&1 || true
  command -v cmake >/dev/null || $py -m pip install -q cmake
  command -v ninja >/dev/null || $py -m pip install -q ninja
  # The ISA is spelled out instead of -march=native: that enables ggml's AMX kernels on Sapphire Rapids, and in
  # this VM their tile instructions die with SIGILL (tile config lost; seen in ggml_backend_amx_mul_mat).
  # LLAVA_BUILD=OFF skips the multimodal library (a third of the build); llama_cpp imports it only for llava.
  isa="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  if grep -q avx512f /proc/cpuinfo 2>/dev/null; then
    isa="$isa -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON"
  fi
  cmake_args="$isa -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF -DGGML_CUDA=OFF"
  cmake_args="$cmake_args -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF"
  # ggml's own CPU kernels are what llama.cpp users get by default; BLAS only helps large-batch prefill.
  if [ "${BENCH_LLAMA_BLAS:-0}" = 1 ] && [ -f /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ]; then
    cmake_args="$cmake_args -DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS"
  fi
  CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    $py -m pip install -v --no-cache-dir "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
fi
$py -c "import mlx_lm, llama_cpp, mlxd; print('bench env ready: mlx-lm', mlx_lm.__version__, 'llama-cpp-python', llama_cpp.__version__)"
