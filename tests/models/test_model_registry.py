"""The architecture registry, ModelArgs parsing, rope construction and the model interface the engine relies on."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxd.errors import ModelLoadError
from mlxd.loading.config import normalize_config
from mlxd.models import TEXT_MODELS, VISION_LANGUAGE_MODELS, architecture
from mlxd.models.cache import KVCache, RotatingKVCache
from mlxd.models.rope import make_rope

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"


@pytest.mark.parametrize("model_type", sorted(TEXT_MODELS + VISION_LANGUAGE_MODELS))
def test_every_architecture_imports_a_complete_module(model_type):
    arch = architecture(model_type)
    assert hasattr(arch.module, "ModelArgs") and hasattr(arch.module, "Model")
    assert arch.model_type == model_type and arch.takes_images == (model_type in VISION_LANGUAGE_MODELS)


@pytest.mark.parametrize("model_type", ["bert", "cache", "ops", "base"])
def test_unknown_model_type_is_named(model_type):
    """Modules of mlxd.models that are not architectures are refused like unknown names."""
    with pytest.raises(ModelLoadError, match=f"'{model_type}'"):
        architecture(model_type)


def _args(arch: str):
    config = normalize_config(json.loads((PARITY / arch / "config.json").read_text()))
    return architecture(arch).module.ModelArgs.from_dict({**config, "not_a_field": 1})


@pytest.mark.parametrize(
    "arch,cache_types",
    [
        ("llama", [KVCache] * 3),
        ("qwen2", [KVCache] * 3),
        ("qwen3", [KVCache] * 3),
        ("mistral", [RotatingKVCache] * 3),
        ("gemma3_text", [RotatingKVCache] * 5 + [KVCache]),
        ("qwen3_moe", [KVCache] * 3),
        ("mixtral", [KVCache] * 3),
        ("gpt_oss", [RotatingKVCache, KVCache, RotatingKVCache]),
        ("glm4_moe_lite", [KVCache] * 3),
    ],
)
def test_make_cache_has_one_cache_per_layer(arch, cache_types):
    model = architecture(arch).module.Model(_args(arch))
    assert [type(c) for c in model.make_cache()] == cache_types
    assert len(model.layers) == model.args.num_hidden_layers == len(cache_types)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "qwen3_moe", "mixtral", "gpt_oss", "glm4_moe_lite",
                                  "qwen3_next", "nemotron_h"])
def test_batched_forward_equals_rows_one_at_a_time(arch):
    model = architecture(arch).module.Model(_args(arch))
    tokens = mx.random.randint(0, model.args.vocab_size, (2, 20), key=mx.random.key(0))
    batched = model(tokens, model.make_cache())
    for row in range(2):
        single = model(tokens[row : row + 1], model.make_cache())
        assert mx.abs(batched[row] - single[0]).max().item() < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_input_embeddings_stand_for_the_token_embeddings(arch):
    """Gemma's input embeddings come after its sqrt(hidden) scale (Model.embed), as transformers' inputs_embeds."""
    model = architecture(arch).module.Model(_args(arch))
    tokens = mx.random.randint(0, model.args.vocab_size, (1, 12), key=mx.random.key(1))
    embeddings = model.embed(tokens) if arch == "gemma3_text" else model.model.embed_tokens(tokens)
    assert mx.array_equal(model(tokens, input_embeddings=embeddings), model(tokens))


def test_sanitize_drops_rotary_buffers_and_tied_lm_head():
    model = architecture("qwen2").module.Model(_args("qwen2"))
    weights = {
        "model.norm.weight": mx.ones((64,)),
        "model.layers.0.self_attn.rotary_emb.inv_freq": mx.ones((8,)),
        "lm_head.weight": mx.ones((320, 64)),
    }
    assert list(model.sanitize(weights)) == ["model.norm.weight"]


def test_qwen2_ignores_sliding_window_unless_enabled():
    module = architecture("qwen2").module
    base = dict(model_type="qwen2", hidden_size=8, num_hidden_layers=2, intermediate_size=8,
                num_attention_heads=2, vocab_size=10, sliding_window=4)
    assert module.ModelArgs.from_dict(base).window(0) is None
    assert module.ModelArgs.from_dict({**base, "use_sliding_window": True}).window(0) == 4


def test_qwen3_moe_layers_and_expert_count_as_transformers_reads_them():
    module = architecture("qwen3_moe").module
    base = dict(model_type="qwen3_moe", hidden_size=64, num_hidden_layers=6, intermediate_size=8,
                num_attention_heads=4, vocab_size=10)
    args = module.ModelArgs.from_dict({**base, "num_experts": 4, "decoder_sparse_step": 2, "mlp_only_layers": [3]})
    assert [args.sparse(i) for i in range(6)] == [False, True, False, False, False, True]
    assert args.head_dim == 16 and not args.norm_topk_prob  # Qwen3MoeConfig's defaults, not Qwen3's
    v5 = module.ModelArgs.from_dict({**base, "num_local_experts": 4, "mlp_only_layers": None})
    assert v5.num_experts == 4 and all(v5.sparse(i) for i in range(6))
    layers = module.Model(args).layers
    assert [type(layer.mlp).__name__ for layer in layers[:2]] == ["MLP", "SparseMoe"]


def test_linear_rope_divides_positions_by_the_factor():
    x = mx.random.normal((1, 2, 3, 16), key=mx.random.key(0))
    scaled = make_rope(16, {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})(x, offset=8)
    reference = nn.RoPE(16, traditional=False, base=10000.0, scale=0.25)(x, offset=8)
    assert mx.abs(scaled - reference).max().item() < 1e-5


def test_llama3_rope_keeps_high_and_stretches_low_frequencies():
    params = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64, "rope_theta": 500000.0}
    periods = make_rope(16, params)._periods
    default = make_rope(16, {"rope_theta": 500000.0})._periods
    assert periods[0].item() == pytest.approx(default[0].item())  # wavelength 2*pi < 64/4: kept
    assert periods[-1].item() == pytest.approx(8.0 * default[-1].item(), rel=1e-5)  # longer than 64: stretched


def test_unsupported_rope_type_is_named():
    with pytest.raises(ModelLoadError, match="'longrope'"):
        make_rope(16, {"rope_type": "longrope", "factor": 4.0})
