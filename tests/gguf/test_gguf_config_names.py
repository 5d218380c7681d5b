"""Pure functions of GGUF loading: metadata to config, tensor names, q/k row order, the cache folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES

from mlxd.demo_models import cache_dir
from mlxd.errors import ModelLoadError
from mlxd.loading.gguf import names
from mlxd.loading.gguf.config import hf_config
from tests.gguf.tiny_gguf import permute_like_llama_cpp

SHAPES = {"token_embd.weight": (49152, 576), "blk.0.attn_q.weight": (576, 576)}
LLAMA = {
    "general.architecture": "llama",
    "llama.embedding_length": 576,
    "llama.block_count": 30,
    "llama.feed_forward_length": 1536,
    "llama.attention.head_count": 9,
    "llama.attention.head_count_kv": 3,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "llama.context_length": 8192,
    "llama.rope.freq_base": 100000.0,
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
}


def _renamed(arch: str) -> dict:
    """LLAMA's hyperparameters under another architecture's keys."""
    return {k.replace("llama.", f"{arch}."): v for k, v in LLAMA.items() if k.startswith("llama.")}


@pytest.mark.parametrize(
    ("changes", "shapes", "expected"),
    [
        ({}, {}, {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
                  "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
                  "max_position_embeddings": 8192, "rope_theta": 100000.0, "vocab_size": 49152,
                  "tie_word_embeddings": True, "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2,
                  "head_dim": 64}),
        ({}, {"output.weight": (49152, 576)}, {"tie_word_embeddings": False}),
        ({}, {"blk.0.attn_q.bias": (576,)}, {"attention_bias": True}),
        ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}, {},
         {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
        ({"llama.rope.scaling.type": "none"}, {}, {"rope_theta": 100000.0, "rope_scaling": None}),
        ({"llama.rope.scaling.type": ""}, {}, {"rope_scaling": None}),  # Ollama's spelling of none
        ({"llama.attention.key_length": 128, "llama.attention.value_length": 128}, {}, {"head_dim": 128}),
        ({"llama.attention.key_length": 0}, {}, {"head_dim": 64}),  # Ollama writes 0 when config has none
        ({"general.architecture": "qwen2", **_renamed("qwen2")}, {}, {"model_type": "qwen2"}),
        # Without key_length, llama.cpp's embedding / heads, not Qwen3's own default of 128.
        ({"general.architecture": "qwen3", **_renamed("qwen3")}, {}, {"model_type": "qwen3", "head_dim": 64}),
        # transformers' MistralConfig would default to a 4096 window; a file without one has none.
        ({"general.architecture": "mistral3", **_renamed("mistral3")}, {},
         {"model_type": "mistral", "sliding_window": None}),
        ({"general.architecture": "mistral", **_renamed("mistral"), "mistral.attention.sliding_window": 4096}, {},
         {"model_type": "mistral", "sliding_window": 4096}),
    ],
)
def test_hf_config(changes, shapes, expected):
    config = hf_config({**LLAMA, **changes}, {**SHAPES, **shapes})
    assert {k: config.get(k) for k in expected} == expected


def test_gemma3_gets_what_llama_cpp_hard_codes():
    meta = {"general.architecture": "gemma3", "gemma3.embedding_length": 640, "gemma3.block_count": 18,
            "gemma3.feed_forward_length": 2048, "gemma3.attention.head_count": 4,
            "gemma3.attention.key_length": 256, "gemma3.attention.sliding_window": 512}
    config = hf_config(meta, {"token_embd.weight": (262144, 640)})
    assert config["model_type"] == "gemma3_text"
    assert (config["sliding_window_pattern"], config["rope_local_base_freq"], config["rope_theta"]) == (6, 1e4, 1e6)
    assert config["query_pre_attn_scalar"] == 256 and config["sliding_window"] == 512


@pytest.mark.parametrize(
    ("changes", "shapes", "message"),
    [
        ({"general.architecture": "mamba"}, SHAPES, "unsupported GGUF architecture 'mamba'"),
        ({"general.architecture": None}, SHAPES, "no general.architecture"),
        ({"llama.attention.head_count_kv": [3, 3]}, SHAPES, "llama.attention.head_count_kv holds one value per layer"),
        ({"llama.rope.scaling.type": "longrope"}, SHAPES, "unsupported GGUF rope scaling 'longrope'"),
        ({"llama.attention.key_length": 64, "llama.attention.value_length": 32}, SHAPES,
         "value_length 32 differs from the key length 64"),
        ({"llama.attention.temperature_scale": 0.1}, SHAPES, "attention temperature scaling"),
        ({}, {"blk.0.attn_q.weight": (576, 576)}, "no token_embd.weight"),
    ],
)
def test_hf_config_errors(changes, shapes, message):
    meta = {k: v for k, v in {**LLAMA, **changes}.items() if v is not None}
    with pytest.raises(ModelLoadError, match=message):
        hf_config(meta, shapes)


FACTORS = [1.0] * 16 + [2.0] * 16  # one per rotary pair of a 64-wide head


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, FACTORS),
        # llama.cpp applies a linear scale on top of the per-pair factors.
        ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}, [4 * f for f in FACTORS]),
    ],
)
def test_rope_freqs_become_freq_factors(changes, expected):
    config = hf_config({**LLAMA, **changes}, SHAPES, FACTORS)
    assert config["rope_scaling"] == {"rope_type": "freq_factors", "freq_factors": expected}
    assert config["rope_theta"] == 100000.0


@pytest.mark.parametrize(
    ("changes", "factors", "message"),
    [
        ({}, FACTORS[:8], "has 8 values; heads of 64 have 32 rotary pairs"),
        ({}, [0.0] * 32, "not a positive number"),
        ({}, [float("nan")] * 32, "not a positive number"),
        ({"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0}, FACTORS, "and yarn rope scaling"),
    ],
)
def test_rope_freqs_errors(changes, factors, message):
    with pytest.raises(ModelLoadError, match=message):
        hf_config({**LLAMA, **changes}, SHAPES, factors)


def _moe_meta(arch: str, **keys: int) -> dict:
    """LLAMA's hyperparameters under `arch`'s keys with 4 layers and the given <arch>.<key> values."""
    meta = {"general.architecture": arch, **_renamed(arch), f"{arch}.block_count": 4}
    return meta | {f"{arch}.{k}": v for k, v in keys.items()}


ROUTERS = {f"blk.{i}.ffn_gate_inp.weight": (8, 576) for i in range(4)}


@pytest.mark.parametrize(
    ("meta", "shapes", "expected"),
    [
        # llama.cpp writes Mixtral as llama with experts; a llama without expert_count is dense.
        (_moe_meta("llama", expert_count=8, expert_used_count=2), ROUTERS,
         {"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 1536}),
        (_moe_meta("llama", expert_count=0), {}, {"model_type": "llama", "num_local_experts": None}),
        # qwen3moe: llama.cpp's graph always renormalizes the kept weights; every layer with a router routes.
        (_moe_meta("qwen3moe", expert_count=8, expert_used_count=2, expert_feed_forward_length=768), ROUTERS,
         {"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 768,
          "intermediate_size": 1536, "norm_topk_prob": True, "mlp_only_layers": [], "decoder_sparse_step": 1}),
        # A layer without a router holds a dense MLP; without expert_feed_forward_length, llama.cpp's n_ff / k.
        (_moe_meta("qwen3moe", expert_count=8, expert_used_count=2),
         {k: v for k, v in ROUTERS.items() if not k.startswith(("blk.0.", "blk.2."))},
         {"mlp_only_layers": [0, 2], "moe_intermediate_size": 768}),
    ],
)
def test_moe_config(meta, shapes, expected):
    config = hf_config(meta, {**SHAPES, **shapes})
    assert {k: config.get(k) for k in expected} == expected


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        (_moe_meta("qwen3moe", expert_used_count=2), "lacks qwen3moe.expert_count"),
        (_moe_meta("qwen3moe", expert_count=8), "lacks qwen3moe.expert_used_count"),
        (_moe_meta("llama", expert_count=8), "lacks llama.expert_used_count"),
    ],
)
def test_moe_config_errors(meta, message):
    with pytest.raises(ModelLoadError, match=message):
        hf_config(meta, {**SHAPES, **ROUTERS})


GPT_OSS = {
    **_moe_meta("gpt-oss", block_count=5, expert_count=32, expert_used_count=4, expert_feed_forward_length=2880,
                **{"attention.sliding_window": 128, "rope.scaling.original_context_length": 4096}),
    "gpt-oss.rope.scaling.type": "yarn",
    "gpt-oss.rope.scaling.factor": 32.0,
    "gpt-oss.rope.scaling.yarn_beta_fast": 32.0,
    "gpt-oss.rope.scaling.yarn_beta_slow": 1.0,
}


def test_gpt_oss_gets_what_llama_cpp_reads_and_hard_codes():
    config = hf_config(GPT_OSS, {**SHAPES, "blk.0.attn_q.bias": (576,)})
    assert config["model_type"] == "gpt_oss"
    assert (config["num_local_experts"], config["num_experts_per_tok"]) == (32, 4)
    assert config["intermediate_size"] == 2880  # the experts' width, not feed_forward_length
    assert config["sliding_window"] == 128 and config["attention_bias"]
    # llama.cpp's set_swa_pattern(2): even layers slide.
    assert config["layer_types"] == ["sliding_attention", "full_attention"] * 2 + ["sliding_attention"]
    assert (config["swiglu_limit"], config["swiglu_alpha"]) == (7.0, 1.702)
    assert config["rope_scaling"] == {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096,
                                      "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False}


@pytest.mark.parametrize("key", ["expert_count", "expert_used_count", "expert_feed_forward_length",
                                 "attention.sliding_window"])
def test_gpt_oss_needs_the_keys_llama_cpp_requires(key):
    meta = {k: v for k, v in GPT_OSS.items() if k != f"gpt-oss.{key}"}
    with pytest.raises(ModelLoadError, match=f"lacks gpt-oss.{key}"):
        hf_config(meta, SHAPES)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # Another architecture's YaRN keeps transformers' default rounding of the correction range.
        ({"llama.rope.scaling.yarn_beta_fast": 16.0}, {"rope_type": "yarn", "factor": 4.0, "beta_fast": 16.0}),
        # Values that leave llama.cpp's YaRN as transformers' (a negative ext_factor reads as 1).
        ({"llama.rope.scaling.yarn_ext_factor": -1.0, "llama.rope.scaling.yarn_log_multiplier": 0.0},
         {"rope_type": "yarn", "factor": 4.0}),
        ({"llama.rope.scaling.yarn_ext_factor": 1.0}, {"rope_type": "yarn", "factor": 4.0}),
    ],
)
def test_yarn_keys(changes, expected):
    meta = {**LLAMA, "llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0, **changes}
    assert hf_config(meta, SHAPES)["rope_scaling"] == expected


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("yarn_ext_factor", 0.5, "yarn_ext_factor = 0.5 asks for YaRN arithmetic"),
        ("yarn_log_multiplier", 0.1, "yarn_log_multiplier = 0.1 asks for YaRN arithmetic"),
        ("yarn_attn_factor", 1.0, "yarn_attn_factor gives YaRN's attention scale"),
    ],
)
def test_yarn_arithmetic_mlxd_lacks_is_refused(key, value, message):
    meta = {**LLAMA, "llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
            f"llama.rope.scaling.{key}": value}
    with pytest.raises(ModelLoadError, match=message):
        hf_config(meta, SHAPES)


def test_missing_required_key_is_named():
    meta = {k: v for k, v in LLAMA.items() if k != "llama.block_count"}
    with pytest.raises(ModelLoadError, match="lacks llama.block_count"):
        hf_config(meta, SHAPES)


@pytest.mark.parametrize(
    ("gguf_name", "arch", "hf"),
    [
        ("token_embd.weight", "llama", "model.embed_tokens.weight"),
        ("output_norm.weight", "llama", "model.norm.weight"),
        ("output.weight", "llama", "lm_head.weight"),
        ("blk.0.attn_norm.weight", "llama", "model.layers.0.input_layernorm.weight"),
        ("blk.12.attn_q.weight", "llama", "model.layers.12.self_attn.q_proj.weight"),
        ("blk.3.attn_q.bias", "qwen2", "model.layers.3.self_attn.q_proj.bias"),
        ("blk.3.attn_output.weight", "llama", "model.layers.3.self_attn.o_proj.weight"),
        ("blk.1.ffn_norm.weight", "llama", "model.layers.1.post_attention_layernorm.weight"),
        ("blk.1.ffn_down.weight", "llama", "model.layers.1.mlp.down_proj.weight"),
        ("blk.2.attn_k_norm.weight", "qwen3", "model.layers.2.self_attn.k_norm.weight"),
        ("blk.1.ffn_norm.weight", "gemma3", "model.layers.1.pre_feedforward_layernorm.weight"),
        ("blk.1.post_attention_norm.weight", "gemma3", "model.layers.1.post_attention_layernorm.weight"),
        ("blk.1.post_ffw_norm.weight", "gemma3", "model.layers.1.post_feedforward_layernorm.weight"),
    ],
)
def test_hf_name(gguf_name, arch, hf):
    assert names.hf_name(gguf_name, arch) == hf


@pytest.mark.parametrize(
    ("gguf_name", "arch", "model_type", "hf"),
    [
        ("blk.0.ffn_gate_inp.weight", "qwen3moe", "qwen3_moe", "model.layers.0.mlp.gate.weight"),
        ("blk.2.ffn_gate_exps.weight", "qwen3moe", "qwen3_moe", "model.layers.2.mlp.switch_mlp.gate_proj.weight"),
        ("blk.2.ffn_up_exps.bias", "qwen3moe", "qwen3_moe", "model.layers.2.mlp.switch_mlp.up_proj.bias"),
        ("blk.1.ffn_gate.weight", "qwen3moe", "qwen3_moe", "model.layers.1.mlp.gate_proj.weight"),  # a dense layer
        ("blk.0.ffn_gate_inp.weight", "llama", "mixtral", "model.layers.0.block_sparse_moe.gate.weight"),
        ("blk.3.ffn_down_exps.weight", "llama", "mixtral",
         "model.layers.3.block_sparse_moe.switch_mlp.down_proj.weight"),
        ("blk.3.attn_q.weight", "llama", "mixtral", "model.layers.3.self_attn.q_proj.weight"),
    ],
)
def test_hf_name_of_moe_tensors(gguf_name, arch, model_type, hf):
    assert names.hf_name(gguf_name, arch, model_type) == hf


@pytest.mark.parametrize(
    ("gguf_name", "hf"),
    [
        ("blk.0.attn_sinks.weight", "model.layers.0.self_attn.sinks"),  # a parameter: the converter added .weight
        ("blk.1.post_attention_norm.weight", "model.layers.1.post_attention_layernorm.weight"),
        ("blk.2.attn_q.bias", "model.layers.2.self_attn.q_proj.bias"),
        ("blk.2.ffn_gate_inp.weight", "model.layers.2.mlp.router.weight"),
        ("blk.2.ffn_gate_inp.bias", "model.layers.2.mlp.router.bias"),
        ("blk.0.ffn_gate_exps.weight", "model.layers.0.mlp.switch_mlp.gate_proj.weight"),
        ("blk.0.ffn_up_exps.bias", "model.layers.0.mlp.switch_mlp.up_proj.bias"),
        ("blk.0.ffn_down_exps.bias", "model.layers.0.mlp.switch_mlp.down_proj.bias"),
        ("output.weight", "lm_head.weight"),
    ],
)
def test_hf_name_of_gpt_oss_tensors(gguf_name, hf):
    assert names.hf_name(gguf_name, "gpt-oss", "gpt_oss") == hf


def test_every_tensor_of_the_gguf_packages_gpt_oss_table_has_a_name():
    for tensor in MODEL_TENSORS[MODEL_ARCH.GPT_OSS]:
        name = TENSOR_NAMES[tensor].format(bid=3)
        assert names.hf_name(f"{name}.weight", names.GPT_OSS, "gpt_oss").endswith(
            "sinks" if name.endswith("sinks") else ".weight"), name


# llama.cpp's newer converters can fuse gate and up (ffn_gate_up_exps), which the gguf package's table lacks.
@pytest.mark.parametrize("gguf_name",
                         ["blk.0.ffn_norm.weight", "blk.0.attn_sinks.bias", "blk.0.ffn_gate_up_exps.weight"])
def test_gpt_oss_tensor_without_a_counterpart_is_named(gguf_name):
    with pytest.raises(ModelLoadError, match=gguf_name.replace(".", r"\.")):
        names.hf_name(gguf_name, "gpt-oss", "gpt_oss")


@pytest.mark.parametrize(
    ("gguf_name", "model_type"),
    [
        ("rope_freqs.weight", "llama"),
        ("blk.0.ffn_gate_exps.weight", "llama"),  # experts in a dense model
        ("blk.0.ffn_gate_inp.weight", "qwen3"),
        ("blk.0.post_ffw_norm.weight", "llama"),
        ("blk.0.ffn_gate_shexp.weight", "qwen3_moe"),  # Qwen2-MoE's shared expert
    ],
)
def test_unknown_tensor_is_named(gguf_name, model_type):
    with pytest.raises(ModelLoadError, match=gguf_name.replace(".", r"\.")):
        names.hf_name(gguf_name, "llama", model_type)


@pytest.mark.parametrize(("n_heads", "head_dim"), [(1, 2), (4, 8), (9, 64), (3, 64)])
def test_unpermute_inverts_llama_cpp_permute(n_heads, head_dim):
    w = np.arange(n_heads * head_dim * 3).reshape(n_heads * head_dim, 3)
    stored = permute_like_llama_cpp(w, n_heads)
    np.testing.assert_array_equal(stored[names.unpermute_order(len(w), n_heads)], w)


def test_unpermute_rejects_odd_heads():
    with pytest.raises(ModelLoadError, match="do not split"):
        names.unpermute_order(12, 4)


@pytest.mark.parametrize(
    ("hf", "arch", "heads"),
    [
        ("model.layers.0.self_attn.q_proj.weight", "llama", 9),
        ("model.layers.0.self_attn.k_proj.weight", "llama", 3),
        ("model.layers.0.self_attn.v_proj.weight", "llama", None),
        ("model.layers.0.self_attn.q_proj.weight", "qwen2", None),
        ("model.layers.0.self_attn.k_proj.weight", "qwen3", None),
        ("model.layers.0.self_attn.q_proj.weight", "mistral", 9),
        ("model.layers.0.self_attn.k_proj.weight", "mistral3", 3),
        ("model.layers.0.self_attn.q_proj.weight", "gemma3", None),
        ("model.layers.0.self_attn.q_proj.weight", "qwen3moe", None),  # Qwen rotates halves, llama.cpp too
        ("model.layers.0.self_attn.k_proj.bias", "llama", 3),
    ],
)
def test_qk_heads(hf, arch, heads):
    assert names.qk_heads(hf, arch, 9, 3) == heads


def test_value_offset_only_for_gemma_norms():
    assert names.value_offset("model.layers.0.self_attn.q_norm.weight", "gemma3") == -1.0
    assert names.value_offset("model.norm.weight", "gemma3") == -1.0
    assert names.value_offset("model.norm.weight", "llama") == 0.0
    assert names.value_offset("model.layers.0.mlp.up_proj.weight", "gemma3") == 0.0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MLXD_CACHE_DIR": "/c/mlxd", "XDG_CACHE_HOME": "/x"}, Path("/c/mlxd/models")),
        ({"XDG_CACHE_HOME": "/x"}, Path("/x/mlxd/models")),
        ({}, Path.home() / ".cache" / "mlxd" / "models"),
    ],
)
def test_cache_dir(env, expected):
    assert cache_dir(env) == expected
