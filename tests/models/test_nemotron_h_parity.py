"""Nemotron-H (Mamba-2 + attention + relu² MLP + sigmoid-routed MoE, pattern `ME*M-E`) in both config layouts:
transformers' float32 logits at every position of a 45-token prompt (three 16-token SSD chunks), its greedy ids,
chunked prefill (chunks that cut the SSD chunks and the 4-tap conv window anywhere) equal to one shot, cached decode
equal to the full pass, and the Mamba-2 states after the prompt equal to expected_state.safetensors."""

from __future__ import annotations

import json
import logging

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import load_file, save_file

from mlxd.loading.loader import load_model
from mlxd.models.cache import KVCache
from mlxd.models.moe import QuantizedSwitchLinear
from mlxd.models.nemotron_h import ModelArgs
from mlxd.models.recurrent_cache import RecurrentCache
from tests.helpers.parity import PARITY, copy_model_folder
from tests.helpers.parity_checks import greedy_with_cache, max_decode_error, prefill_in_chunks

ARCH = "nemotron_h"
LOGIT_TOL = 1e-3  # the bar; measured: 2.2e-6
SELF_TOL = 1e-4   # chunked and recurrent forms of the same math agree to float32 rounding
STATE_TOL = 1e-4
MAMBA_LAYERS = [0, 3]  # of ME*M-E; their caches are make_cache()'s entries 0 and 2 (attention is entry 1)


@pytest.mark.parametrize("layout", ["v5", "v4"])
def test_full_forward_matches_transformers(parity_model, layout):
    loaded, expected = parity_model(ARCH, layout)
    logits = loaded.model(expected["input_ids"])
    assert logits.shape == (1, 45, 320)
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL


@pytest.mark.parametrize("layout", ["v5", "v4"])
def test_greedy_decode_with_cache_matches_transformers(parity_model, layout):
    loaded, expected = parity_model(ARCH, layout)
    want = expected["greedy_ids"].tolist()
    assert greedy_with_cache(loaded.model, expected["input_ids"], len(want)) == want


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 15, 16, 17, 40])
def test_chunked_prefill_equals_one_shot(parity_model, chunk):
    loaded, expected = parity_model(ARCH, "v5")
    one_shot = loaded.model(expected["input_ids"])
    chunked, cache = prefill_in_chunks(loaded.model, expected["input_ids"], chunk)
    assert all(c.offset == 45 for c in cache)
    assert mx.abs(chunked - one_shot).max().item() < SELF_TOL


def test_decode_logits_equal_full_forward(parity_model):
    loaded, expected = parity_model(ARCH, "v4")
    assert max_decode_error(loaded.model, expected["input_ids"], expected["greedy_ids"]) < SELF_TOL


@pytest.mark.parametrize("chunk", [45, 7])
def test_mamba_states_after_the_prompt_match_transformers(parity_model, chunk):
    loaded, expected = parity_model(ARCH, "v5")
    want = mx.load(str(PARITY / ARCH / "expected_state.safetensors"))
    _, cache = prefill_in_chunks(loaded.model, expected["input_ids"], chunk)
    assert [type(c) for c in cache] == [RecurrentCache, KVCache, RecurrentCache]
    for layer, c in zip(MAMBA_LAYERS, (cache[0], cache[2])):
        assert mx.abs(c.conv_state[0] - want[f"layers.{layer}.conv_state"]).max().item() < STATE_TOL
        assert mx.abs(c.recurrent_state[0] - want[f"layers.{layer}.ssm_state"]).max().item() < STATE_TOL


def test_fused_projections_give_the_same_logits(parity_model):
    loaded, expected = parity_model(ARCH, "v4")
    fused = load_model(PARITY / ARCH, dtype="float32", fuse=True).model
    assert fused.fused == {"backbone.layers.2.mixer"}
    tokens = expected["input_ids"]
    assert mx.abs(fused(tokens) - loaded.model(tokens)).max().item() < SELF_TOL


def test_sanitize_takes_its_own_output_and_in_memory_names(parity_model):
    """Sanitized weights (conv [C, K, 1], experts stacked as switch_mlp.fc1/fc2: mlx-lm's conversion layout) and
    transformers' in-memory `model.*` names give the same model."""
    loaded, _ = parity_model(ARCH, "v5")
    model = loaded.model
    raw = mx.load(str(PARITY / ARCH / "model.safetensors"))
    once = model.sanitize(raw)
    assert once["backbone.layers.1.mixer.switch_mlp.fc1.weight"].shape == (6, 32, 64)
    assert once["backbone.layers.0.mixer.conv1d.weight"].shape == (128, 4, 1)
    again = model.sanitize(once)
    assert again.keys() == once.keys() and all(mx.array_equal(again[k], v) for k, v in once.items())
    renamed = {k.replace("backbone.", "model.", 1): v for k, v in raw.items()}
    from_memory = model.sanitize(renamed)
    assert from_memory.keys() == once.keys() and all(mx.array_equal(from_memory[k], v) for k, v in once.items())


def test_mtp_head_is_skipped_with_one_log_line(tmp_path, caplog, parity_model):
    folder = copy_model_folder(ARCH, "v4", tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    tensors["mtp.layers.0.mixer.q_proj.weight"] = tensors["backbone.layers.2.mixer.q_proj.weight"].copy()
    tensors["mtp.norm.weight"] = tensors["backbone.norm_f.weight"].copy()
    save_file(tensors, folder / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="mlxd.models.nemotron_h.model"):
        model = load_model(folder, dtype="float32").model
    assert len([r for r in caplog.records if "multi-token-prediction" in r.getMessage()]) == 1
    loaded, expected = parity_model(ARCH, "v4")
    assert mx.array_equal(model(expected["input_ids"]), loaded.model(expected["input_ids"]))


def test_mlx_lm_quantized_conversion_loads(tmp_path, parity_model):
    """An 8-bit folder as mlx-lm writes it (experts stacked as switch_mlp.fc1/fc2, quantized where the input width
    allows): dequantized to float32 it is the quantized model exactly; kept quantized in bfloat16 the experts stay
    one quantized layer each and the logits stay near (the largest gaps are a routing choice flipping on a near
    tie at bfloat16's rounding, so the mean is the measure)."""
    loaded, expected = parity_model(ARCH, "v4")
    model = load_model(PARITY / ARCH, dtype="float32").model
    nn.quantize(model, 32, 8, class_predicate=lambda _, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % 32 == 0)
    folder = copy_model_folder(ARCH, "v4", tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization": {"group_size": 32, "bits": 8}}))
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    tokens = expected["input_ids"]
    want = model(tokens)
    assert mx.abs(load_model(folder).model(tokens) - want).max().item() < SELF_TOL
    kept = load_model(folder, dtype="bfloat16", fuse=True).model
    assert isinstance(kept.backbone.layers[1].mixer.switch_mlp.fc1, QuantizedSwitchLinear)
    # Measured: 0.031 (0.024 without the two flipped positions; Qwen3.5 dense in bfloat16: 0.017).
    assert mx.abs(kept(tokens).astype(mx.float32) - want).mean().item() < 0.05


def test_both_layer_lists_read_alike():
    v4 = json.loads((PARITY / ARCH / "config_v4.json").read_text())
    v5 = json.loads((PARITY / ARCH / "config.json").read_text())
    assert ModelArgs.from_dict(v4).hybrid_override_pattern == "ME*M-E"
    args = ModelArgs.from_dict(v5)
    assert (args.hybrid_override_pattern, args.num_hidden_layers) == ("ME*M-E", 6)
    older = {**v5, "layers_block_type": ["mamba", "moe", "attention", "mamba", "mlp", "moe"]}
    assert ModelArgs.from_dict(older).hybrid_override_pattern == "ME*M-E"
    remote_code = {k: v for k, v in v4.items() if k != "head_dim"} | {"attention_head_dim": 16}
    assert ModelArgs.from_dict(remote_code).head_dim == 16


@pytest.mark.parametrize("change", [
    {"hybrid_override_pattern": "MX*"},
    {"num_hidden_layers": 5},
    {"moe_latent_size": 16},
    {"mlp_hidden_act": "silu"},
])
def test_configs_it_cannot_serve_are_refused(change):
    v4 = json.loads((PARITY / ARCH / "config_v4.json").read_text())
    with pytest.raises(ValueError):
        ModelArgs.from_dict({**v4, **change})
