"""Gemma 4 (gemma4: per-layer embeddings and KV-shared layers; gemma4_moe: experts beside the MLP and K=V full
layers) reproduces transformers' float32 logits and greedy ids in both config layouts (published
`global_head_dim`, transformers 5's `per_layer_config`), in chunks and steps, with either kernel backend and fused
projections; KV-shared layers own no cache, so the KV budget counts only the layers that do."""

from __future__ import annotations

import json
import logging

import mlx.core as mx
import pytest

from mlxd.engine.kv_budget import KvLayout
from mlxd.loading.loader import load_model
from mlxd.models import ops
from mlxd.models.cache import KVCache, RotatingKVCache
from mlxd.models.gemma4.config import FULL, SLIDING, TextArgs
from tests.helpers.parity import copy_model_folder
from tests.helpers.parity_checks import greedy_with_cache, max_decode_error, prefill_in_chunks

CASES = [(arch, layout) for arch in ("gemma4", "gemma4_moe") for layout in ("v5", "v4")]
# HYBRID_NOTES.md §0: attention scores are not scaled down, so float32 rounding alone moves these logits by up
# to 6.5e-5 (transformers' float32 against float64).
LOGIT_TOL = 2e-4
SELF_TOL = 1e-4


@pytest.mark.parametrize("arch,layout", CASES)
def test_full_forward_and_greedy_ids_match_transformers(parity_model, arch, layout):
    loaded, expected = parity_model(arch, layout)
    tokens = expected["input_ids"]
    logits = loaded.model(tokens)
    assert logits.shape == (1, tokens.shape[1], 320)
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL
    want = expected["greedy_ids"].tolist()
    assert greedy_with_cache(loaded.model, tokens, len(want)) == want


# 13 and 14 are the windows; 5 and 7 cut them anywhere; 1 is decode steps all along.
@pytest.mark.parametrize("chunk", [1, 5, 7, 13, 14, 16, 45])
@pytest.mark.parametrize("arch,layout", CASES)
def test_chunked_prefill_equals_one_shot(parity_model, arch, layout, chunk):
    loaded, expected = parity_model(arch, layout)
    tokens = expected["input_ids"]
    chunked, cache = prefill_in_chunks(loaded.model, tokens, chunk)
    assert all(c.offset == tokens.shape[1] for c in cache)
    assert mx.abs(chunked - loaded.model(tokens)).max().item() < SELF_TOL


@pytest.mark.parametrize("arch,layout", CASES)
def test_decode_logits_equal_full_forward(parity_model, arch, layout):
    loaded, expected = parity_model(arch, layout)
    assert max_decode_error(loaded.model, expected["input_ids"], expected["greedy_ids"]) < SELF_TOL


@pytest.mark.parametrize("arch", ["gemma4", "gemma4_moe"])
def test_mlx_kernels_and_fused_projections_give_the_same_logits(parity_model, copy_model_folder_for, arch):
    """What a GPU runs (MLX's own attention with window masks, fused q/k/v and gate/up matmuls) on the CPU."""
    _, expected = parity_model(arch, "v5")
    loaded = load_model(copy_model_folder_for(arch), dtype="float32", fuse=True)
    model = loaded.model
    assert model.layers[0].self_attn.fused and model.layers[0].mlp.fused
    tokens = expected["input_ids"]
    with ops.using("mlx"):
        assert mx.abs(model(tokens)[0] - expected["logits"]).max().item() < LOGIT_TOL
        assert mx.abs(prefill_in_chunks(model, tokens, 7)[0][0] - expected["logits"]).max().item() < LOGIT_TOL
        assert greedy_with_cache(model, tokens, 16) == expected["greedy_ids"].tolist()


@pytest.fixture
def copy_model_folder_for(tmp_path):
    return lambda arch, layout="v5": copy_model_folder(arch, layout, tmp_path / arch)


def test_kv_shared_layers_own_no_cache_and_the_kv_budget_counts_the_others(parity_model):
    """gemma4: S S F S S F with the last two KV-shared (4 reads 3, 5 reads 2): four caches, none for 4 and 5,
    which have no key/value weights and a double-wide MLP."""
    model = parity_model("gemma4", "v5")[0].model
    cache = model.make_cache()
    assert [type(c) for c in cache] == [RotatingKVCache, RotatingKVCache, KVCache, RotatingKVCache]
    assert [c.window for c in cache] == [14, 14, None, 14]
    for layer in model.layers[4:]:
        assert not any(name in layer.self_attn for name in ("k_proj", "v_proj", "k_norm"))
        assert layer.mlp.down_proj.weight.shape == (64, 192)
    model(mx.array([[5, 6, 7]]), cache=cache)
    # Per position: 2 kv heads of 16 (sliding) or 32 (full) floats, keys and values.
    assert KvLayout.of(cache).layers == ((256, 14), (256, 14), (512, None), (256, 14))


def test_k_eq_v_layers_project_keys_only(parity_model):
    """gemma4_moe: its full layers (1 and 3) have one global kv head of 32 and no v_proj."""
    model = parity_model("gemma4_moe", "v4")[0].model
    full = model.layers[1].self_attn
    assert "v_proj" not in full and full.k_proj.weight.shape == (32, 64)
    cache = model.make_cache()
    model(mx.array([[5, 6, 7]]), cache=cache)
    assert KvLayout.of(cache).layers == ((256, 13), (256, None), (256, 13), (256, None))
    assert model.layers[0].moe.experts == 6 and model.layers[0].moe.routing.top_k == 2


def test_vision_and_audio_tensors_are_left_out_with_one_log_line(copy_model_folder_for, parity_model, caplog):
    folder = copy_model_folder_for("gemma4")
    weights = mx.load(str(folder / "model.safetensors"))
    extra = {"model.vision_tower.encoder.layers.0.mlp.up_proj.weight": mx.zeros((4, 4)),
             "model.embed_vision.embedding_projection.weight": mx.zeros((64, 4)),
             "model.audio_tower.output_proj.weight": mx.zeros((4, 4))}
    mx.save_safetensors(str(folder / "model.safetensors"), {**weights, **extra})
    with caplog.at_level(logging.INFO, logger="mlxd.models.gemma4.model"):
        model = load_model(folder, dtype="float32").model
    notes = [r.getMessage() for r in caplog.records if "vision/audio" in r.getMessage()]
    assert notes == ["leaving out 3 vision/audio tensors: mlxd serves Gemma 4 as a text model"]
    _, expected = parity_model("gemma4", "v5")
    assert mx.abs(model(expected["input_ids"])[0] - expected["logits"]).max().item() < LOGIT_TOL


@pytest.mark.parametrize("layout", ["v5", "v4"])
def test_a_flat_text_only_config_with_text_only_names_loads_the_same_model(copy_model_folder_for, parity_model,
                                                                          layout):
    """`gemma4_text` (what Gemma4ForCausalLM saves): the text config at the top, tensors under `model.`."""
    folder = copy_model_folder_for("gemma4", layout)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config["text_config"]))
    weights = mx.load(str(folder / "model.safetensors"))
    mx.save_safetensors(str(folder / "model.safetensors"),
                        {k.replace("model.language_model.", "model."): v for k, v in weights.items()})
    loaded = load_model(folder, dtype="float32")
    assert loaded.model_type == "gemma4_text"
    _, expected = parity_model("gemma4", layout)
    assert mx.abs(loaded.model(expected["input_ids"])[0] - expected["logits"]).max().item() < LOGIT_TOL


def _args(**overrides) -> TextArgs:
    return TextArgs.from_dict({"num_hidden_layers": 6, "layer_types": [SLIDING, SLIDING, FULL] * 2, **overrides})


def test_full_layers_head_size_and_kv_heads_in_either_config_layout():
    assert [_args().head_size(i) for i in range(6)] == [256, 256, 512] * 2  # global_head_dim defaults to 512
    published = _args(global_head_dim=64, num_global_key_value_heads=1)
    assert [published.head_size(i) for i in range(6)] == [256, 256, 64] * 2
    # num_global_key_value_heads only applies to K=V models, as in transformers.
    assert [published.kv_heads(i) for i in range(6)] == [4] * 6
    k_eq_v = _args(global_head_dim=64, num_global_key_value_heads=1, attention_k_eq_v=True)
    assert [k_eq_v.kv_heads(i) for i in range(6)] == [4, 4, 1] * 2
    per_layer = _args(global_head_dim=999, per_layer_config={"2": {"head_dim": 64, "num_key_value_heads": 1},
                                                             "5": {"head_dim": 64}})
    assert [(per_layer.head_size(i), per_layer.kv_heads(i)) for i in (2, 4, 5)] == [(64, 1), (256, 4), (64, 4)]


def test_kv_shared_layers_read_the_last_unshared_layer_of_their_type():
    """E2B's pattern: 35 layers, 4 sliding then 1 full, the last 20 KV-shared."""
    types = [FULL if (i + 1) % 5 == 0 else SLIDING for i in range(35)]
    args = TextArgs.from_dict({"num_hidden_layers": 35, "layer_types": types, "num_kv_shared_layers": 20,
                               "use_double_wide_mlp": True, "intermediate_size": 6144})
    assert [args.kv_source(i) for i in range(15)] == list(range(15))
    assert {args.kv_source(i) for i in range(15, 35) if types[i] == SLIDING} == {13}
    assert {args.kv_source(i) for i in range(15, 35) if types[i] == FULL} == {14}
    assert [args.mlp_width(i) for i in (14, 15)] == [6144, 12288]
    # transformers makes the last layer full whatever the config says.
    assert TextArgs.from_dict({"num_hidden_layers": 2, "layer_types": [SLIDING, SLIDING]}).layer_types[-1] == FULL
