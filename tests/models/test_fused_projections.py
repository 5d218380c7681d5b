"""Serving builds each attention's q/k/v projections and each MLP's gate/up projections as one matmul where the
checkpoint's tensors allow (loading/fusion.py decides, models/projections.py joins the weights); the logits must
not change, and layers that cannot share a matmul (different quantization) must stay apart."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from mlxd.loading.loader import load_model
from mlxd.models.moe import QuantizedSwitchLinear, SwitchLinear
from tests.helpers.parity import copy_model_folder

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text"]
LOGIT_TOL = 1e-3  # against transformers, as in test_model_parity.py


def _folder(arch: str, tmp_path):
    folder = copy_model_folder(arch, "v5", tmp_path / arch)
    return folder, mx.load(str(folder / "expected.safetensors"))


def _quantize_folder(folder, bits: int, predicate, overrides: dict | None = None) -> None:
    """Rewrite a float folder as mlx-lm writes a quantized one, quantizing the layers `predicate` picks (with
    per-layer `overrides`, as mixed-precision recipes write them)."""
    model = load_model(folder, dtype="float32").model
    nn.quantize(model, group_size=32, bits=bits, class_predicate=predicate)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    config = json.loads((folder / "config.json").read_text())
    config["quantization"] = {"group_size": 32, "bits": bits, **(overrides or {})}
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_float_model_gives_the_same_logits(arch, tmp_path):
    folder, expected = _folder(arch, tmp_path)
    tokens = expected["input_ids"]
    split = load_model(folder, dtype="float32").model
    model = load_model(folder, dtype="float32", fuse=True).model
    assert model.fused == frozenset(model.fusable_projections()) and len(model.fused) == 2 * len(model.layers)
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert "qkv_proj" in attn and "q_proj" not in attn and "v_proj" not in attn
    assert "gate_up_proj" in mlp and "up_proj" not in mlp
    assert "q_proj" in split.layers[0].self_attn and "qkv_proj" not in split.layers[0].self_attn
    fused = model(tokens)
    assert mx.abs(fused - split(tokens)).max().item() < 1e-5
    assert mx.abs(fused[0] - expected["logits"]).max().item() < LOGIT_TOL


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text"])
def test_fused_quantized_model_gives_the_same_logits(arch, bits, tmp_path):
    folder, expected = _folder(arch, tmp_path)
    tokens = expected["input_ids"]
    _quantize_folder(folder, bits, lambda p, m: isinstance(m, nn.Linear))
    separate = load_model(folder, dtype="keep").model(tokens)
    model = load_model(folder, dtype="keep", fuse=True).model
    qkv = model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, nn.QuantizedLinear) and qkv.bits == bits
    assert mx.abs(model(tokens) - separate).max().item() < 1e-5


def test_layers_quantized_differently_stay_apart(tmp_path):
    folder, expected = _folder("llama", tmp_path)
    tokens = expected["input_ids"]
    _quantize_folder(folder, 4, lambda p, m: p.endswith("v_proj"))  # a float q beside a 4-bit v
    separate = load_model(folder, dtype="keep").model(tokens)
    model = load_model(folder, dtype="keep", fuse=True).model
    attn = model.layers[0].self_attn
    assert "q_proj" in attn and "qkv_proj" not in attn and isinstance(attn.v_proj, nn.QuantizedLinear)
    assert model.fused == frozenset(f"model.layers.{i}.mlp" for i in range(len(model.layers)))  # only the MLPs
    assert mx.abs(model(tokens) - separate).max().item() < 1e-5


def test_a_fused_layer_is_quantized_as_its_parts(tmp_path):
    """Per-layer overrides name the checkpoint's layers; a group whose parts share one takes it when fused."""
    folder, expected = _folder("llama", tmp_path)
    tokens = expected["input_ids"]
    eight = {f"model.layers.1.self_attn.{p}": {"group_size": 32, "bits": 8} for p in ("q_proj", "k_proj", "v_proj")}
    _quantize_folder(folder, 4, lambda p, m: isinstance(m, nn.Linear) and eight.get(p, True), eight)
    separate = load_model(folder, dtype="keep").model(tokens)
    model = load_model(folder, dtype="keep", fuse=True).model
    assert model.layers[1].self_attn.qkv_proj.bits == 8 and model.layers[0].self_attn.qkv_proj.bits == 4
    assert mx.abs(model(tokens) - separate).max().item() < 1e-5


@pytest.mark.parametrize("arch,moe", [("qwen3_moe", "mlp"), ("mixtral", "block_sparse_moe")])
def test_fused_moe_model_gives_the_same_logits(arch, moe, tmp_path):
    """q/k/v, the dense layers' gate/up, and the experts' stacked gate/up ([E, 2 * hidden, in]: one gathered
    matmul instead of two)."""
    folder, expected = _folder(arch, tmp_path)
    tokens = expected["input_ids"]
    split = load_model(folder, dtype="float32").model
    model = load_model(folder, dtype="float32", fuse=True).model
    assert model.fused == frozenset(model.fusable_projections()) and len(model.fused) == 2 * len(model.layers)
    experts, separate = model.layers[0][moe].switch_mlp, split.layers[0][moe].switch_mlp
    assert "gate_proj" not in experts and "gate_up_proj" not in separate
    n, hidden, dims = separate.gate_proj.weight.shape
    assert experts.gate_up_proj.weight.shape == (n, 2 * hidden, dims)
    if arch == "qwen3_moe":  # its dense layer
        assert "gate_up_proj" in model.layers[1].mlp and "gate_up_proj" not in split.layers[1].mlp
    fused = model(tokens)
    assert mx.abs(fused - split(tokens)).max().item() < 1e-5
    assert mx.abs(fused[0] - expected["logits"]).max().item() < LOGIT_TOL


@pytest.mark.parametrize("arch,moe", [("qwen3_moe", "mlp"), ("mixtral", "block_sparse_moe")])
def test_fused_quantized_experts_give_the_same_logits(arch, moe, tmp_path):
    """Quantized as mlx-lm converts MoE models: experts 4-bit, routers 8-bit through per-layer overrides."""
    folder, expected = _folder(arch, tmp_path)
    tokens = expected["input_ids"]
    routers = {f"model.layers.{i}.{moe}.gate": {"group_size": 64, "bits": 8} for i in range(3)}
    _quantize_folder(folder, 4, lambda p, m: isinstance(m, (nn.Linear, SwitchLinear)) and routers.get(p, True),
                     routers)
    separate = load_model(folder, dtype="keep").model(tokens)
    model = load_model(folder, dtype="keep", fuse=True).model
    layer = model.layers[0][moe]
    assert isinstance(layer.switch_mlp.gate_up_proj, QuantizedSwitchLinear) and layer.switch_mlp.gate_up_proj.bits == 4
    assert isinstance(layer.gate, nn.QuantizedLinear) and layer.gate.bits == 8
    assert mx.abs(model(tokens) - separate).max().item() < 1e-5
    # Dequantized to float32 on load (the CPU's fast path): the same values as float matrices.
    assert mx.abs(load_model(folder, dtype="float32").model(tokens) - separate).max().item() < 1e-4
