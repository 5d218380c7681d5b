"""Serving fuses each attention's q/k/v projections and each MLP's gate/up projections into one matmul where the
weights allow (models/base.py fuse_linears); the logits must not change, and layers that cannot share a matmul
(different quantization) must stay apart."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from models.conftest import copy_model_folder

from mlxd.loading.loader import load_model
from mlxd.models.base import fuse_linears, fuse_projections

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text"]
LOGIT_TOL = 1e-3  # against transformers, as in test_model_parity.py


def _load(arch: str, tmp_path):
    folder = copy_model_folder(arch, "v5", tmp_path / arch)
    return load_model(folder, dtype="float32"), mx.load(str(folder / "expected.safetensors"))


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_float_model_gives_the_same_logits(arch, tmp_path):
    loaded, expected = _load(arch, tmp_path)
    model, tokens = loaded.model, expected["input_ids"]
    separate = model(tokens)
    assert fuse_projections(model) == 2 * len(model.layers)
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert "qkv_proj" in attn and "q_proj" not in attn and "v_proj" not in attn
    assert "gate_up_proj" in mlp and "up_proj" not in mlp
    fused = model(tokens)
    assert mx.abs(fused - separate).max().item() < 1e-5
    assert mx.abs(fused[0] - expected["logits"]).max().item() < LOGIT_TOL


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text"])
def test_fused_quantized_model_gives_the_same_logits(arch, bits, tmp_path):
    loaded, expected = _load(arch, tmp_path)
    model, tokens = loaded.model, expected["input_ids"]
    nn.quantize(model, group_size=32, bits=bits, class_predicate=lambda p, m: isinstance(m, nn.Linear))
    separate = model(tokens)
    fuse_projections(model)
    qkv = model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, nn.QuantizedLinear) and qkv.bits == bits
    assert mx.abs(model(tokens) - separate).max().item() < 1e-5


def test_layers_quantized_differently_stay_apart(tmp_path):
    loaded, expected = _load("llama", tmp_path)
    model, tokens = loaded.model, expected["input_ids"]
    nn.quantize(model, group_size=32, bits=4, class_predicate=lambda p, m: p.endswith("v_proj"))
    separate = model(tokens)
    attn = model.layers[0].self_attn
    assert not fuse_linears(attn, "qkv_proj", ["q_proj", "k_proj", "v_proj"])  # a float q beside a 4-bit v
    assert "q_proj" in attn and "qkv_proj" not in attn
    assert fuse_projections(model) == len(model.layers)  # only the MLPs
    assert mx.abs(model(tokens) - separate).max().item() < 1e-5
