"""Which of a model's projection groups share one matmul, decided once at load from the checkpoint's tensors
(models/projections.py says why fusing pays), and the model built that way.

A group fuses when its layers hold the same arrays (weight, bias, and a quantized layer's scales and biases) in
the same dtypes and input widths, quantized alike or not at all. Checkpoints do not always store them so:
llama.cpp's Q4_K_M keeps some layers' attn_v at Q6_K beside Q4_K q and k, and MLX's mixed-precision recipes
give v_proj more bits; those groups stay split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlxd.models.projections import PARAMETERS, Projections

log = logging.getLogger(__name__)

# How the layer at a path is held: (bits, group_size, mode) when quantized, None when float.
Quantization = tuple[int, int, str] | None


def fusable(weights: dict[str, mx.array], groups: dict[str, Projections],
            quantization: Callable[[str], Quantization]) -> frozenset[str]:
    """The paths of `groups` whose layers can share one matmul, given the model's weights (split, as sanitize
    names them) and how each layer is held."""
    return frozenset(path for path, group in groups.items()
                     if _alike(weights, [f"{path}.{part}" for part in group.parts], quantization))


def _alike(weights: dict[str, mx.array], layers: list[str], quantization: Callable[[str], Quantization]) -> bool:
    arrays = [{name: weights[f"{layer}.{name}"] for name in PARAMETERS if f"{layer}.{name}" in weights}
              for layer in layers]
    first = arrays[0]
    if "weight" not in first:
        return False
    return all(
        held.keys() == first.keys()
        and all(held[n].dtype == first[n].dtype and held[n].shape[1:] == first[n].shape[1:] for n in first)
        and quantization(layer) == quantization(layers[0])
        for layer, held in zip(layers, arrays)
    )


def build_fused(module: ModuleType, args: Any, model: nn.Module, weights: dict[str, mx.array],
                quantization: Callable[[str], Quantization]) -> tuple[nn.Module, dict[str, mx.array], dict[str, str]]:
    """`module.Model(args)` rebuilt with every group that can fuse fused, and `weights` with those groups joined
    (`model` and `weights` as they are when none can). The dict maps each fused layer's path to its first
    part's, whose quantization it takes."""
    groups = model.fusable_projections()
    fused = fusable(weights, groups, quantization)
    log.info("input projections of %d of %d attention and MLP modules share one matmul", len(fused), len(groups))
    if not fused:
        return model, weights, {}
    model = module.Model(args, fused)
    layers = {f"{path}.{groups[path].fused}": f"{path}.{groups[path].parts[0]}" for path in fused}
    return model, model.sanitize(weights), layers
