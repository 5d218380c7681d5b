"""MLX custom CUDA kernels made once per name (models/ops_cuda.py's kernels: cuda_delta.py, cuda_attention.py,
cuda_moe.py). MLX compiles a kernel with NVRTC on its first use for each template, and keeps the PTX on disk."""

from __future__ import annotations

from typing import Any

import mlx.core as mx

_kernels: dict[str, Any] = {}
_scalars: dict[float, mx.array] = {}


def kernel(name: str, inputs: list[str], outputs: list[str], source: str, row_contiguous: bool = False) -> Any:
    """The custom kernel `name`: inputs read through their strides (no copies of slices), or with
    `row_contiguous` laid out row-major, MLX copying any that are not (weights as loaded are)."""
    if name not in _kernels:
        _kernels[name] = mx.fast.cuda_kernel(name=name, input_names=inputs, output_names=outputs,
                                             source=compact(source), ensure_row_contiguous=row_contiguous)
    return _kernels[name]


def compact(source: str) -> str:
    """`source` without its comments, indentation and blank lines (the same code, ~40 % fewer bytes for the experts
    kernels). MLX 0.32 copies a custom kernel's source into a new string at every call and hashes all of it at every
    launch (mlx/backend/cuda/custom_kernel.cpp), and a 16-row GLM-4.7-Flash step is bound by such host work: its
    ~185 custom-kernel launches spent 1.4 % of the step in that hash alone (py-spy, H200, session 32)."""
    lines = (_without_comment(line).strip() for line in source.splitlines())
    return "\n".join(line for line in lines if line) + "\n"


def _without_comment(line: str) -> str:
    """The line up to a `//` that is not inside a string literal (the kernels' inline PTX is in strings)."""
    quoted = False
    for i, c in enumerate(line):
        if c == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and line.startswith("//", i):
            return line[:i]
    return line


def scalar(value: float) -> mx.array:
    """A float32 array [1] holding `value`, one per value (a kernel's float argument)."""
    if value not in _scalars:
        _scalars[value] = mx.array([value], mx.float32)
    return _scalars[value]
