"""What the routed-experts kernels compile to for the H200 (sm_90), on a machine without a GPU: registers per thread
and machine instructions (SASS) by kind, for a published shape's projections at a decode size.

    python -m bench sass_stats [--shapes gpt-oss-20b qwen3-30b-a3b --tokens 16 --float] [--nvrtc DIR]

NVRTC's PTX (nvrtc_compile.py's wrapper) goes through `ptxas -arch=sm_90` (PyPI's nvidia-cuda-nvcc-cu12) and
`nvdisasm` (nvidia-cuda-nvdisasm), unpacked into DIR once. Not a timing: it shows what a kernel asks of the
device before a GPU is lent. Session 20 found this way why the few-pairs kernel lost to MLX's on MXFP4 experts
(4,112 instructions against 2,016 for affine 4-bit; its E2M1 decoding was most of them) and checked the fix (1,776)
before the GPU run that measured it 2x faster. Registers decide how many blocks of 256 threads an SM holds (65,536
registers: 2 at 96-128 a thread, 3 at 72-80, 4 at 64).
"""

from __future__ import annotations

import collections
import re
import subprocess
import tempfile
from pathlib import Path

from bench import common
from bench.kernels.nvrtc_compile import CHUNKED_TEMPLATE, FEW_TEMPLATE, compiled, unpack_wheels, unpacked

TOOL_WHEELS = ("nvidia-cuda-nvcc-cu12==12.9.86", "nvidia-cuda-nvdisasm==13.5.37")
TYPES = {"float": ("__nv_bfloat16", "__nv_bfloat16", "float"), "affine": ("__nv_bfloat16", "uint32_t", "__nv_bfloat16"),
         "mxfp4": ("__nv_bfloat16", "uint32_t", "uint8_t")}  # weight kind -> (T, W, S)


def tools(folder: Path) -> tuple[Path, Path]:
    """ptxas and nvdisasm, downloaded and unpacked into `folder` the first time."""
    ptxas, nvdisasm = folder / "nvidia" / "cuda_nvcc" / "bin" / "ptxas", folder / "nvidia" / "cu13" / "bin" / "nvdisasm"
    if not (ptxas.exists() and nvdisasm.exists()):
        unpack_wheels(folder, TOOL_WHEELS)
        ptxas.chmod(0o755)
        nvdisasm.chmod(0o755)
    return ptxas, nvdisasm


def sass_of(ptx: str, ptxas: Path, nvdisasm: Path) -> tuple[int, collections.Counter[str]]:
    """Registers per thread and the count of each SASS opcode of the PTX's kernel."""
    with tempfile.TemporaryDirectory() as work:
        source, cubin = Path(work) / "k.ptx", Path(work) / "k.cubin"
        source.write_text(ptx)
        built = subprocess.run([str(ptxas), "-arch=sm_90", "-O3", "-v", str(source), "-o", str(cubin)],
                               capture_output=True, text=True, check=True)
        listing = subprocess.run([str(nvdisasm), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
    registers = re.search(r"Used (\d+) registers", built.stderr)
    opcodes = collections.Counter(m.group(1) for m in re.finditer(
        r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)", listing, re.MULTILINE))
    return int(registers.group(1)) if registers else -1, opcodes


def instances(kind: str, bits: int, group: int, in_dims: int, out_dims: int, pairs: int, experts: int,
              top_k: int, rows: int, ahead: int = 1) -> dict[str, tuple[str, str, int, str]]:
    """kernel -> (its source, its template parameters, MODE, its instantiation) for this projection and size, the
    few-pairs kernel with `rows` weight rows a warp and `ahead` loads a lane issued before use."""
    from mlxd.models import cuda_experts, cuda_experts_few

    mode = {"float": 0, "affine": 1, "mxfp4": 2}[kind]
    t, w, s = TYPES[kind]
    per_word = 2 if mode == 0 else 32 // bits
    chunk = cuda_experts_few.largest_chunk(pairs // top_k, top_k, experts, rows)
    head = f"k<{t}, {w}, {s}, {mode}, {bits if mode else 0}"
    gs = group if mode else 1
    return {
        "chunked": (cuda_experts.kernel_source(mode), CHUNKED_TEMPLATE, mode,
                    f"{head}, {8 if mode else per_word}, {in_dims}, {out_dims}, {gs}, 1, 2048>"),
        "few": (cuda_experts_few.source(mode), FEW_TEMPLATE, mode,
                f"{head}, {per_word}, {in_dims}, {out_dims}, {gs}, 1, 2048, {chunk}, "
                f"{str(pairs < experts).lower()}, {rows}, {ahead}>"),
    }


def main(argv: list[str] | None = None) -> None:
    from bench.suite.expert_matmul import SHAPES

    p = common.parser(__doc__)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--float", action="store_true", help="bfloat16 experts instead of the shape's quantization")
    p.add_argument("--rows-per-warp", type=int, default=None, help="the few-pairs kernel's (default: its own)")
    p.add_argument("--loads-ahead", type=int, default=None, help="the few-pairs kernel's (default: its own)")
    p.add_argument("--nvrtc", type=Path, default=Path("/tmp/mlxd-nvrtc"))
    args = p.parse_args(argv)
    from mlxd.models import cuda_experts, cuda_experts_few

    rows = args.rows_per_warp or cuda_experts_few.ROWS_PER_WARP
    ahead = args.loads_ahead or cuda_experts_few.LOADS_AHEAD

    nvrtc = unpacked(args.nvrtc)
    ptxas, nvdisasm = tools(args.nvrtc)
    lines = []
    for shape in args.shapes:
        projections, experts, top_k, (mode_name, bits, group) = SHAPES[shape]
        kind = "float" if args.float else mode_name
        for name, out_dims, in_dims in projections:
            made = instances(kind, bits, group, in_dims, out_dims, args.tokens * top_k, experts, top_k, rows,
                             ahead)
            for kernel, (source, template, mode, instance) in made.items():
                log, ptx = compiled(nvrtc, source, cuda_experts.INPUTS[mode], template, [instance])
                if log:
                    raise SystemExit(f"{kernel} {shape} {name}: NVRTC failed\n{log[:3000]}")
                registers, opcodes = sass_of(ptx, ptxas, nvdisasm)
                top = ", ".join(f"{op} {n}" for op, n in opcodes.most_common(6))
                lines.append([shape, name, kind, kernel, registers, sum(opcodes.values()), top])
                print(lines[-1], flush=True)
    print(common.table(["shape", "projection", "weights", "kernel", "registers", "SASS", "most frequent"], lines))


if __name__ == "__main__":
    main()
