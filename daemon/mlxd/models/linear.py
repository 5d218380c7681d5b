"""Quantized linear layers computed through models/ops.py, so the backend chosen at load picks the kernel.

nn.quantize makes MLX's nn.QuantizedLinear, which calls mx.quantized_matmul itself; the CUDA backend may lay a
decode batch's rows out as one product (ops_cuda.FLAT_ROWS). The loader turns every such layer into this subclass
once quantized (`route_through_ops`): the same parameters, settings and results, the matmul asked of the backend.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import ops


class QuantizedLinear(nn.QuantizedLinear):
    """nn.QuantizedLinear with its product from ops.quantized_matmul (MLX's own on the CPU and by default)."""

    def __call__(self, x: mx.array) -> mx.array:
        y = ops.quantized_matmul(x, self["weight"], self["scales"], self.get("biases"), True, self.group_size,
                                 self.bits, self.mode)
        return y + self["bias"] if "bias" in self else y


def route_through_ops(model: nn.Module) -> int:
    """Every nn.QuantizedLinear in `model` made a QuantizedLinear; how many. The class is swapped in place rather
    than the layer rebuilt: its constructor would draw and quantize random weights of the layer's size (seconds
    for an output layer of 150k tokens), and the subclass adds no state."""
    swapped = 0
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            module.__class__ = QuantizedLinear
            swapped += 1
    return swapped
