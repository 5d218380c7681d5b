"""What GetModelInfo reads off a built model: its experts, and how its weights are held quantized."""

from __future__ import annotations

import mlx.nn as nn

from mlxd.loading.loader import load_model
from mlxd.models.inventory import expert_counts, quantization_modes
from tests.helpers.parity import PARITY


def test_a_dense_model_has_no_experts_and_float_weights():
    model = load_model(PARITY / "llama", dtype="float32").model
    assert expert_counts(model) == (0, 0) and quantization_modes(model) == []


def test_experts_and_quantization_modes_of_a_moe_model():
    model = load_model(PARITY / "qwen3_moe", dtype="float32").model
    assert expert_counts(model) == (8, 2)
    # Experts in mxfp4, everything else quantizable in 8-bit affine: each mode counted once per layer.
    nn.quantize(model, group_size=32, bits=4, mode="mxfp4",
                class_predicate=lambda path, m: "switch_mlp" in path and hasattr(m, "to_quantized"))
    nn.quantize(model, group_size=64, bits=8, class_predicate=lambda path, m: (
        isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.shape[-1] % 64 == 0))
    modes = quantization_modes(model)
    assert modes[0].startswith("affine 8-bit, group 64 (")
    assert any(m.startswith("mxfp4 4-bit, group 32 (") for m in modes)


def test_objects_that_are_not_modules_hold_nothing():
    assert expert_counts(object()) == (0, 0) and quantization_modes(object()) == []
