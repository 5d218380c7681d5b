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
        _kernels[name] = mx.fast.cuda_kernel(name=name, input_names=inputs, output_names=outputs, source=source,
                                             ensure_row_contiguous=row_contiguous)
    return _kernels[name]


def scalar(value: float) -> mx.array:
    """A float32 array [1] holding `value`, one per value (a kernel's float argument)."""
    if value not in _scalars:
        _scalars[value] = mx.array([value], mx.float32)
    return _scalars[value]
