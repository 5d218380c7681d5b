"""What a built model holds, read off its modules for GetModelInfo: its experts and how its weights are quantized.

Plain attributes only (no MLX work), so the service may read them once the worker has loaded the model.
"""

from __future__ import annotations

import collections

import mlx.nn as nn

from mlxd.models.moe import QuantizedSwitchLinear, SparseMoe

_QUANTIZED = (nn.QuantizedLinear, nn.QuantizedEmbedding, QuantizedSwitchLinear)


def expert_counts(model: object) -> tuple[int, int]:
    """(experts of a MoE layer, experts each token runs through); (0, 0) for a dense model."""
    for module in _modules(model):
        if isinstance(module, SparseMoe):
            return module.experts, module.routing.top_k
    return 0, 0


def quantization_modes(model: object) -> list[str]:
    """Each way weights are held quantized now, most layers first: e.g. "mxfp4 4-bit, group 32 (72 layers)"."""
    counts: collections.Counter[tuple[str, int, int]] = collections.Counter()
    for module in _modules(model):
        if isinstance(module, _QUANTIZED):
            counts[(module.mode, module.bits, module.group_size)] += 1
    return [f"{mode} {bits}-bit, group {group} ({n} layer{'s' if n > 1 else ''})"
            for (mode, bits, group), n in counts.most_common()]


def _modules(model: object) -> list[nn.Module]:
    # Every architecture is an nn.Module; a test's fake model (the LanguageModel protocol alone) holds nothing here.
    return [m for _, m in model.named_modules()] if isinstance(model, nn.Module) else []
