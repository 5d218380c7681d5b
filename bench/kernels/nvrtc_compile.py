"""Compile the routed-experts kernels (models/cuda_experts.py, cuda_experts_few.py) with NVIDIA's NVRTC on a machine
without a GPU: every weight kind, activations in bfloat16 and float32, every template choice; then the routing and
combining kernels (models/cuda_moe.py) and the decode-attention ones (models/cuda_attention.py: whole, split over
the keys, the splits' merge) at a few sizes. Catches what a GPU run
would first fail on (syntax, types, templates), not wrong numbers.

    python -m bench nvrtc_compile [--nvrtc DIR]

NVRTC and the CUDA headers come from PyPI's nvidia-cuda-nvrtc-cu12 and nvidia-cuda-runtime-cu12 wheels, unpacked
into DIR once (default: /tmp/mlxd-nvrtc). The kernel is wrapped in a signature like the one MLX's
`mx.fast.cuda_kernel` generates (inputs by name, `idx_shape`, the output). Exits non-zero if any fails.
"""

from __future__ import annotations

import ctypes
import itertools
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bench import common

WHEELS = ("nvidia-cuda-nvrtc-cu12", "nvidia-cuda-runtime-cu12")
PREAMBLE = ("#include <cuda_bf16.h>\n#include <cuda_fp16.h>\n"
            "typedef unsigned int uint32_t; typedef unsigned char uint8_t;\n")
# (mode, activation type, scales type); the weight is T for floats, packed uint32 otherwise.
KINDS = [(0, "__nv_bfloat16", "float"), (0, "float", "float"), (1, "__nv_bfloat16", "__nv_bfloat16"),
         (1, "float", "float"), (2, "__nv_bfloat16", "uint8_t")]
# Each kernel's template parameters after the three types (T, W, S), in the order models/cuda_experts.py passes them.
CHUNKED_TEMPLATE = "int MODE, int BITS, int PER, int IN, int OUT, int GS, int DIV, int MAXP"
FEW_TEMPLATE = ("int MODE, int BITS, int PW, int IN, int OUT, int GS, int DIV, int MAXP, int MAXCH, bool BY_PAIR, "
                "int RW, int AHEAD")


def unpacked(folder: Path) -> Path:
    """The folder holding nvidia/cuda_nvrtc and nvidia/cuda_runtime, downloaded and unpacked the first time."""
    if not (folder / "nvidia" / "cuda_nvrtc").is_dir():
        unpack_wheels(folder, WHEELS)
    return folder


def unpack_wheels(folder: Path, wheels: tuple[str, ...]) -> None:
    """PyPI's x86-64 Linux wheels of `wheels` (pip requirements), downloaded and unpacked into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
                        "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_28_x86_64",
                        "-d", download, *wheels], check=True)
        for wheel in Path(download).glob("*.whl"):
            zipfile.ZipFile(wheel).extractall(folder)


def compile_all(nvrtc: Path, source: str, inputs: list[str], template: str, instances: list[str]) -> str:
    """NVRTC's log for the kernel `source` with these inputs, instantiated as `instances` ("" when it compiles)."""
    return compiled(nvrtc, source, inputs, template, instances)[0]


def compiled(nvrtc: Path, source: str, inputs: list[str], template: str, instances: list[str]) -> tuple[str, str]:
    """NVRTC's log ("" when it compiles) and the PTX of the kernel `source` instantiated as `instances` (compacted
    as models/cuda_jit.py hands it to MLX)."""
    from mlxd.models.cuda_jit import compact
    params = {"x": "const T* x", "idx": "const uint32_t* idx", "w": "const W* w", "scales": "const S* scales",
              "biases": "const S* biases"}
    signature = ", ".join([params[n] for n in inputs] + ["const int* idx_shape", "T* out"])
    return compiled_text(nvrtc, f"template <typename T, typename W, typename S, {template}>\n"
                                f"__global__ void k({signature}) {{\n{compact(source)}\n}}\n", instances)


# The MoE routing and combining kernels (models/cuda_moe.py): each one's parameters as MLX's cuda_kernel writes them
# (an input's shape and strides beside it), its template, and instances.
ROUTING = {
    "route": ("const T* logits, const int* logits_shape, const long long* logits_strides, uint32_t* indices, "
              "T* weights", "typename T, int E, int K, bool RENORM",
              ["k<__nv_bfloat16, 64, 4, true>", "k<float, 256, 8, false>", "k<float, 40, 6, true>"]),
    "route_sigmoid": ("const float* logits, const int* logits_shape, const long long* logits_strides, "
                      "const float* bias, const int* bias_shape, const long long* bias_strides, const float* scale, "
                      "uint32_t* indices, TW* weights", "typename TW, int E, int K, bool NORM",
                      ["k<float, 64, 4, true>", "k<__nv_bfloat16, 256, 8, false>", "k<float, 40, 6, true>",
                       "k<__nv_bfloat16, 128, 1, false>"]),
    "combine": ("const T* y, const int* y_shape, const long long* y_strides, const T* w, const int* w_shape, "
                "const long long* w_strides, const T* plus, const long long* plus_strides, T* out",
                "typename T, int K, int D, bool PLUS",
                ["k<__nv_bfloat16, 4, 2048, true>", "k<float, 8, 96, false>"]),
}


# The decode-attention kernels (models/cuda_attention.py): whole-keys, split over the keys, and the splits' merge.
_ATTENTION_INPUTS = ("const T* q, const long long* q_strides, const T* k, const int* k_shape, "
                     "const long long* k_strides, const T* v, const long long* v_strides, const float* scale, "
                     "const M* mask, const long long* mask_strides, const float* sinks, const T* q2, "
                     "const long long* q2_strides, "
                     "const T* k2, const long long* k2_strides")
_ATTENTION_TEMPLATE = ("typename T, typename M, int D, int DV, int D2, bool V_IS_K, int G, int HKV, int W, int S, "
                       "bool HAS_MASK, bool MASK_BOOL, bool HAS_SINKS")
_ATTENTION_INSTANCES = ["k<__nv_bfloat16, bool, 512, 512, 64, true, 1, 20, 4, {s}, true, true, false>",
                        "k<float, float, 128, 128, 0, false, 4, 2, 8, {s}, true, false, true>",
                        "k<__nv_bfloat16, __nv_bfloat16, 64, 64, 0, false, 8, 8, 8, {s}, false, false, false>"]
ATTENTION = {
    "decode_attention": (_ATTENTION_INPUTS + ", T* out", _ATTENTION_TEMPLATE,
                         [i.format(s=1) for i in _ATTENTION_INSTANCES]),
    "decode_attention_split": (_ATTENTION_INPUTS + ", float* parts, float* stats", _ATTENTION_TEMPLATE,
                               [i.format(s=s) for i in _ATTENTION_INSTANCES for s in (2, 8, 64)]),
    "decode_attention_merge": ("const float* parts, const int* parts_shape, const float* stats, T* out",
                               "typename T, int DV, int S", ["k<__nv_bfloat16, 512, 4>", "k<float, 128, 64>"]),
}


def compiled_text(nvrtc: Path, text: str, instances: list[str]) -> tuple[str, str]:
    """NVRTC's log ("" when it compiles) and the PTX of a program's `text` (after PREAMBLE) as `instances`."""
    lib = ctypes.CDLL(str(nvrtc / "nvidia" / "cuda_nvrtc" / "lib" / "libnvrtc.so.12"))
    text = PREAMBLE + text
    program = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(program), text.encode(), b"k.cu", 0, None, None) == 0
    for name in instances:
        assert lib.nvrtcAddNameExpression(program, name.encode()) == 0
    options = [b"--std=c++17", b"-arch=compute_90", b"-default-device",
               f"-I{nvrtc / 'nvidia' / 'cuda_runtime' / 'include'}".encode()]
    status = lib.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(program, log)
    if status != 0:
        return log.value.decode(errors="replace") or f"status {status}", ""
    lib.nvrtcGetPTXSize(program, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(program, ptx)
    return "", ptx.value.decode()


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--nvrtc", type=Path, default=Path("/tmp/mlxd-nvrtc"))
    args = p.parse_args(argv)
    from mlxd.models import cuda_experts, cuda_experts_few

    nvrtc = unpacked(args.nvrtc)
    failures = 0
    for mode, t, s in KINDS:
        w = t if mode == 0 else "uint32_t"
        per = (2 if t == "__nv_bfloat16" else 1) if mode == 0 else 8
        gs = {0: 1, 1: 64, 2: 32}[mode]
        head = f"k<{t}, {w}, {s}, {mode}, {4 if mode else 0}"
        chunked = compile_all(nvrtc, cuda_experts.kernel_source(mode), cuda_experts.INPUTS[mode], CHUNKED_TEMPLATE,
                              [f"{head}, 8, 512, 96, {gs}, 4, 2048>"])
        few = compile_all(nvrtc, cuda_experts_few.source(mode), cuda_experts.INPUTS[mode], FEW_TEMPLATE,
                          [f"{head}, {per}, 512, 96, {gs}, 4, 2048, {c}, {str(b).lower()}, {rw}, {ahead}>"
                           for c, b, rw, ahead in itertools.product((1, 2, 4, 8), (True, False), (2, 4), (1, 2))
                           if c * rw <= 32])
        for name, log in (("chunked", chunked), ("few", few)):
            print(f"{name} mode {mode} {t}: {'ok' if not log else 'FAILED'}")
            if log:
                print(log[:3000])
                failures += 1
    from mlxd.models import cuda_attention, cuda_moe
    from mlxd.models.cuda_jit import compact

    sources = {"route": cuda_moe._ROUTE, "route_sigmoid": cuda_moe._ROUTE_SIGMOID, "combine": cuda_moe._COMBINE,
               "decode_attention": cuda_attention._DECODE_ATTENTION,
               "decode_attention_split": cuda_attention._DECODE_ATTENTION_SPLIT,
               "decode_attention_merge": cuda_attention._MERGE}
    for name, (signature, template, instances) in (ROUTING | ATTENTION).items():
        body = compact(sources[name])
        log = compiled_text(nvrtc, f"template <{template}>\n__global__ void k({signature}) {{\n{body}\n}}\n",
                            instances)[0]
        print(f"{name}: {'ok' if not log else 'FAILED'}")
        if log:
            print(log[:3000])
            failures += 1
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
