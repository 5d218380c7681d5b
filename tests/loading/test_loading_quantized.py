"""MLX-quantized folders and checkpoint dtypes: what load_model holds the weights in."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from mlxd.loading.loader import load_model

OVERRIDE = "model.layers.1.self_attn.q_proj"
# name -> (group_size, bits, per-layer overrides, relative logit error allowed against float32).
# Random Gaussian weights quantize worse than trained ones: measured 0.32 (4-bit) and 0.02 (8-bit).
# Group sizes stay below the 64-wide inputs: MLX 0.32.4's CUDA quantized matmul is wrong when a row is one group.
QUANTIZATIONS = {
    # down_proj is left in float (as mixed recipes do) and one layer uses 8 bits.
    "4bit": (32, 4, {OVERRIDE: {"group_size": 32, "bits": 8}}, 0.5),
    "8bit": (32, 8, {}, 0.05),
}
FLOAT_LAYERS = "mlp.down_proj"


def _quantize_folder(folder, group_size: int, bits: int, overrides: dict) -> None:
    """Turn a float fixture folder into the layout mlx-lm writes for a quantized model."""
    model = load_model(folder, dtype="float32").model

    def predicate(path, module):
        if not hasattr(module, "to_quantized") or (bits == 4 and path.endswith(FLOAT_LAYERS)):
            return False
        return overrides.get(path, True)

    nn.quantize(model, group_size, bits, class_predicate=predicate)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    config = json.loads((folder / "config.json").read_text())
    config["quantization"] = {"group_size": group_size, "bits": bits, **overrides}
    (folder / "config.json").write_text(json.dumps(config))


def _relative_error(a: mx.array, b: mx.array) -> float:
    return (mx.linalg.norm(a - b) / mx.linalg.norm(b)).item()


@pytest.fixture
def tokens(model_folder):
    return mx.load(str(model_folder("llama", "v4") / "expected.safetensors"))["input_ids"]


@pytest.mark.parametrize("name", sorted(QUANTIZATIONS))
def test_keep_loads_quantized_layers(model_folder, tokens, name):
    group_size, bits, overrides, tolerance = QUANTIZATIONS[name]
    reference = load_model(model_folder("llama"), dtype="float32").model(tokens)
    folder = model_folder("llama", "v4")
    _quantize_folder(folder, group_size, bits, overrides)
    loaded = load_model(folder, dtype="keep")
    assert loaded.quantized and loaded.quantization["bits"] == bits and loaded.dtype == "float32"
    layers = loaded.model.layers
    assert isinstance(loaded.model.model.embed_tokens, nn.QuantizedEmbedding)
    assert isinstance(layers[0].mlp.up_proj, nn.QuantizedLinear) and layers[0].mlp.up_proj.bits == bits
    assert isinstance(layers[0].mlp.down_proj, nn.QuantizedLinear) == (bits == 8)
    if overrides:
        assert layers[1].self_attn.q_proj.bits == 8 and layers[0].self_attn.q_proj.bits == bits
    assert _relative_error(loaded.model(tokens), reference) < tolerance


@pytest.mark.parametrize("name", sorted(QUANTIZATIONS))
def test_auto_on_cpu_dequantizes_to_float32(model_folder, tokens, on_cpu, name):
    group_size, bits, overrides, _ = QUANTIZATIONS[name]
    folder = model_folder("llama", "v4")
    _quantize_folder(folder, group_size, bits, overrides)
    kept = load_model(folder, dtype="keep")
    auto = load_model(folder)
    assert auto.dtype == "float32" and not auto.quantized and auto.quantization is not None
    assert "to float32" in auto.load_note
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(auto.model.parameters()))
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in auto.model.named_modules())
    assert auto.weight_bytes > kept.weight_bytes
    assert mx.abs(auto.model(tokens) - kept.model(tokens)).max().item() < 1e-4


def test_tied_quantized_embeddings_serve_as_the_output_layer(model_folder, tokens):
    folder = model_folder("qwen2")
    reference = load_model(folder, dtype="float32").model(tokens)
    _quantize_folder(folder, 32, 8, {})
    loaded = load_model(folder, dtype="keep")
    assert "lm_head" not in loaded.model and loaded.quantized
    assert _relative_error(loaded.model(tokens), reference) < 0.05


@pytest.mark.parametrize(
    "requested,held",
    [("auto", "float32"), ("keep", "bfloat16"), ("float16", "float16"), ("float32", "float32")],
)
def test_bfloat16_checkpoint(model_folder, tokens, on_cpu, requested, held):
    folder = model_folder("mistral")
    weights = mx.load(str(folder / "model.safetensors"))
    mx.save_safetensors(str(folder / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in weights.items()})
    loaded = load_model(folder, dtype=requested)
    assert loaded.checkpoint_dtype == "bfloat16" and loaded.dtype == held
    assert {v.dtype for _, v in tree_flatten(loaded.model.parameters())} == {getattr(mx, held)}
    assert loaded.model(tokens).dtype == getattr(mx, held)
