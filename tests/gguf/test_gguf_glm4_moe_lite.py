"""GLM-4.7-Flash's parity fixture as llama.cpp writes it (architecture deepseek2, mla_to_gguf), loaded through the
normal GGUF loader: the folder's model, transformers' logits within the issue's 2e-4, greedy ids, cached decode
and chunked prefill; Q8_0 computing with its stored values; and what the deepseek2 keys may and may not say."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from gguf import MODEL_ARCH, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES
from mlx.utils import tree_flatten

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf.config import hf_config
from mlxd.loading.gguf.names import hf_name
from mlxd.loading.gguf.reader import read_gguf
from mlxd.loading.loader import load_model
from tests.gguf.hf_to_gguf import PARITY
from tests.helpers.parity_checks import (
    assert_file_parity,
    assert_same_args,
)

FIXTURE, ARCH = "glm4_moe_lite", "deepseek2"
LOGIT_TOL = 2e-4  # the bar for this family, as tests/models/test_glm4_moe_lite.py
SELF_TOL = 1e-5
ARGS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size", "q_lora_rank",
        "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rope_parameters", "rope_interleave",
        "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size", "n_group",
        "topk_group", "norm_topk_prob", "routed_scaling_factor", "mlp_layer_types", "tie_word_embeddings")


def test_the_file_describes_the_folders_model(parity_gguf):
    path, loaded, _, _ = parity_gguf(FIXTURE, ARCH)
    folder = load_model(PARITY / FIXTURE, dtype="float32")
    assert loaded.model_type == FIXTURE
    assert_same_args(loaded.args, folder.args, ARGS, "rms_norm_eps")
    names = {t.name for t in read_gguf(path).tensors}
    assert {"blk.1.attn_k_b.weight", "blk.1.attn_v_b.weight", "blk.1.exp_probs_b.bias"} <= names
    assert "blk.1.attn_kv_b.weight" not in names


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_logits_greedy_cache_and_chunks(parity_gguf, qtype):
    """F32 against transformers; Q8_0 against the folder's model holding the values the file stores."""
    _, loaded, stored, expected = parity_gguf(FIXTURE, ARCH, qtype)
    assert_file_parity(loaded.model, FIXTURE, qtype, stored, expected, LOGIT_TOL, SELF_TOL)


def test_q8_0_file_quantizes_every_matrix_its_rows_allow(parity_gguf):
    path = parity_gguf(FIXTURE, ARCH, "Q8_0").path
    for t in read_gguf(path).tensors:
        quantizable = len(t.shape) > 1 and ".ffn_gate_inp." not in t.name and t.shape[-1] % 32 == 0
        assert t.type_name == ("Q8_0" if quantizable else "F32"), t.name


def test_routing_biases_stay_float32_in_bfloat16(parity_gguf):
    """Loaded in bfloat16 (the Q8_0 file, whose experts stay quantized as a CPU needs), the correction biases are
    the file's float32 values (loading/weights.py, float32_parameters), the routers' weights are widened to
    float32; every other float is bfloat16."""
    path, loaded, _, _ = parity_gguf(FIXTURE, ARCH, "Q8_0", dtype="bfloat16")
    assert loaded.dtype == "bfloat16" and loaded.quantized
    params = dict(tree_flatten(loaded.model.parameters()))
    for t in read_gguf(path).tensors:
        if t.name.endswith("exp_probs_b.bias"):
            bias = params[hf_name(t.name, ARCH, FIXTURE)]
            assert t.type_name == "F32" and bias.dtype == mx.float32
            np.testing.assert_array_equal(np.array(bias), t.raw.view(np.float32))
    routers = [v for k, v in params.items() if k.endswith(".gate.weight")]
    assert routers and all(v.dtype == mx.float32 for v in routers)
    floats = {v.dtype for k, v in params.items() if not k.endswith("e_score_correction_bias")
              and not k.endswith(".gate.weight") and mx.issubdtype(v.dtype, mx.floating)}
    assert floats == {mx.bfloat16}


def _metadata(**changes) -> tuple[dict, dict]:
    meta = {
        "general.architecture": ARCH, "deepseek2.embedding_length": 64, "deepseek2.block_count": 2,
        "deepseek2.feed_forward_length": 96, "deepseek2.attention.head_count": 4,
        "deepseek2.attention.head_count_kv": 1, "deepseek2.rope.freq_base": 250000.0,
        "deepseek2.rope.dimension_count": 8, "deepseek2.attention.q_lora_rank": 32,
        "deepseek2.attention.kv_lora_rank": 24, "deepseek2.attention.key_length": 32,
        "deepseek2.attention.value_length": 24, "deepseek2.attention.key_length_mla": 24,
        "deepseek2.attention.value_length_mla": 12, "deepseek2.expert_count": 8, "deepseek2.expert_used_count": 2,
        "deepseek2.expert_feed_forward_length": 24, "deepseek2.expert_shared_count": 1,
        "deepseek2.leading_dense_block_count": 1,
    }
    shapes = {"token_embd.weight": (320, 64), "output.weight": (320, 64), "blk.0.attn_q_a.weight": (32, 64),
              "blk.1.exp_probs_b.bias": (8,)}
    meta |= changes
    return {k: v for k, v in meta.items() if v is not None}, shapes


def test_keys_give_the_latent_sizes_and_the_routing_defaults():
    config = hf_config(*_metadata())
    assert (config["qk_nope_head_dim"], config["v_head_dim"], config["q_lora_rank"]) == (16, 12, 32)
    assert (config["n_group"], config["topk_group"], config["routed_scaling_factor"]) == (1, 1, 1.0)
    assert not config["norm_topk_prob"] and config["first_k_dense_replace"] == 1
    # Files from before the _mla keys describe the heads in key_length / value_length.
    older = hf_config(*_metadata(**{"deepseek2.attention.key_length_mla": None,
                                    "deepseek2.attention.value_length_mla": None,
                                    "deepseek2.attention.key_length": 24, "deepseek2.attention.value_length": 12}))
    assert (older["qk_nope_head_dim"], older["v_head_dim"]) == (16, 12)
    assert hf_name("blk.0.attn_kv_b.weight", ARCH, FIXTURE) == "model.layers.0.self_attn.kv_b_proj.weight"
    assert hf_name("blk.3.exp_probs_b.bias", ARCH, FIXTURE) == "model.layers.3.mlp.gate.e_score_correction_bias"


@pytest.mark.parametrize("change,match", [
    ({"deepseek2.expert_gating_func": 1}, "softmax"),
    ({"deepseek2.attention.q_lora_rank": 0}, "q_lora_rank"),
    ({"deepseek2.expert_shared_count": 0}, "shared experts"),
    ({"deepseek2.rope.scaling.type": "yarn", "deepseek2.rope.scaling.factor": 4.0,
      "deepseek2.rope.scaling.yarn_log_multiplier": 0.1}, "yarn_log_multiplier"),
])
def test_what_glm4_moe_lite_cannot_compute_is_refused(change, match):
    with pytest.raises(ModelLoadError, match=match):
        hf_config(*_metadata(**change))


def test_sigmoid_routing_needs_its_correction_biases():
    meta, shapes = _metadata(**{"deepseek2.expert_gating_func": 2})
    assert hf_config(meta, shapes)["topk_method"] == "noaux_tc"
    del shapes["blk.1.exp_probs_b.bias"]
    with pytest.raises(ModelLoadError, match="exp_probs_b"):
        hf_config(meta, shapes)
    with pytest.raises(ModelLoadError, match="softmax"):  # no gating key and no biases: DeepSeek-V2's softmax
        hf_config(_metadata()[0], shapes)


def test_every_layer_tensor_of_the_gguf_packages_deepseek2_table_has_a_name():
    """All but attn_k / attn_v (DeepSeek-OCR's plain attention) and attn_rot_embd (never written)."""
    unused = {MODEL_TENSOR.ATTN_K, MODEL_TENSOR.ATTN_V, MODEL_TENSOR.ATTN_ROT_EMBD, MODEL_TENSOR.ROPE_FREQS}
    for tensor in set(MODEL_TENSORS[MODEL_ARCH.DEEPSEEK2]) - unused:
        name = TENSOR_NAMES[tensor].format(bid=3)
        suffix = "bias" if tensor == MODEL_TENSOR.FFN_EXP_PROBS_B else "weight"
        assert hf_name(f"{name}.{suffix}", ARCH, FIXTURE).startswith(("model.", "lm_head")), name
