"""Linear layers that read the same input and may share one matmul, their outputs side by side: at small batch
sizes one wide matmul runs faster than several narrow ones (13-27% per batched decode step on the GPU).

A model declares where such groups sit (`fusable_projections()`, keyed by module path) and is built with the
ones that fuse (`Model(args, fused)`); the loader decides which do from the checkpoint's tensors
(loading/fusion.py), and the model's `sanitize` joins their weights, as gpt-fast's load hook builds `wqkv`.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import ops

# A linear layer's arrays: a float layer's weight and bias, and a quantized one's scales and biases besides.
PARAMETERS = ("weight", "bias", "scales", "biases")


@dataclass(frozen=True)
class Projections:
    """The layers `parts` of one module, held fused as one layer `fused` when they can share a matmul."""

    fused: str
    parts: tuple[str, ...]


QKV = Projections("qkv_proj", ("q_proj", "k_proj", "v_proj"))
GATE_UP = Projections("gate_up_proj", ("gate_proj", "up_proj"))


def add_linears(module: nn.Module, group: Projections, dims: int, widths: tuple[int, ...], bias: bool,
                fused: bool) -> None:
    """Give `module` the layers of `group`, each reading `dims` features: one layer `group.fused` with the parts'
    output `widths` side by side when `fused`, else one layer per part, as checkpoints store them."""
    if fused:
        module[group.fused] = nn.Linear(dims, sum(widths), bias=bias)
    else:
        for part, width in zip(group.parts, widths):
            module[part] = nn.Linear(dims, width, bias=bias)


class GatedMLP(nn.Module):
    """down(activation(gate x) * up x), `activation` a kind of ops.gated_activation; gate and up held as one
    `gate_up_proj` when `fused`, else as `gate_proj` and `up_proj`."""

    def __init__(self, dims: int, hidden: int, activation: str, bias: bool = False, fused: bool = False):
        super().__init__()
        self.fused, self.activation = fused, activation
        add_linears(self, GATE_UP, dims, (hidden, hidden), bias, fused)
        self.down_proj = nn.Linear(hidden, dims, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        if self.fused:
            gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(ops.gated_activation(gate, up, self.activation))


def decoder_projections(prefix: str, n_layers: int) -> dict[str, Projections]:
    """The groups of decoder layers `prefix`.0 .. n_layers-1: each attention's q/k/v and each gated MLP's gate/up."""
    return {f"{prefix}.{i}.{name}": group for i in range(n_layers)
            for name, group in (("self_attn", QKV), ("mlp", GATE_UP))}


def decoder_fusion(fused: Set[str], prefix: str, n_layers: int) -> list[tuple[bool, bool]]:
    """(attention fused, MLP fused) for each decoder layer of decoder_projections(prefix, n_layers)."""
    return [(f"{prefix}.{i}.self_attn" in fused, f"{prefix}.{i}.mlp" in fused) for i in range(n_layers)]


def join_fused_weights(weights: dict[str, mx.array], groups: dict[str, Projections],
                       fused: Set[str]) -> dict[str, mx.array]:
    """`weights` with the parts of each group in `fused` concatenated along the output features into the fused
    layer, every array the parts have (a quantized layer's packed codes, scales and biases alike). Groups whose
    parts are gone already stay as they are, so sanitize may run on its own output."""
    out = dict(weights)
    for path in fused:
        group = groups[path]
        layers = [f"{path}.{part}" for part in group.parts]
        if f"{layers[0]}.weight" not in out:
            continue
        # Output features are the first axis of a linear layer's arrays, the second of stacked experts' ([E, out, in]).
        axis = out[f"{layers[0]}.weight"].ndim - 2
        for name in PARAMETERS:
            if f"{layers[0]}.{name}" in out:
                out[f"{path}.{group.fused}.{name}"] = mx.concatenate([out.pop(f"{lay}.{name}") for lay in layers],
                                                                     axis=axis)
    return out
