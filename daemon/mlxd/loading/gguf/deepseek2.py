"""llama.cpp's `deepseek2` architecture, as its converter writes GLM-4.7-Flash (its Glm4MoeLiteModel is a
DeepseekV2Model): multi-head latent attention and sigmoid-routed experts with shared ones, served by mlxd's
glm4_moe_lite. Pure functions over the metadata and the tensors' names and shapes.

What the converter does to the checkpoint, undone here or in the model's sanitize:
- kv_b_proj is split per head into attn_k_b [heads, latent, nope] (each head's key rows, transposed) and attn_v_b
  [heads, v, latent] (its value rows) for llama.cpp's absorbed attention; they take the names of mlx-lm's
  conversions (`embed_q`, `unembed_out`), which models/glm4_moe_lite/latent_weights.py joins back. Older files
  keep attn_kv_b whole.
- attention.key_length / value_length describe llama.cpp's single latent "head" (kv_lora_rank + rope dims,
  kv_lora_rank); the per-head sizes are key_length_mla / value_length_mla (older files: key_length, value_length).
- head_count_kv is 1 (the latent), not the checkpoint's.
- q and k rows are not permuted: llama.cpp's deepseek2 rotates adjacent pairs, as the checkpoint's
  rope_interleave does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, ExpertGatingFuncType

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf.common import layer_base as _base

DEEPSEEK2 = MODEL_ARCH_NAMES[MODEL_ARCH.DEEPSEEK2]  # general.architecture of its files
MODEL_TYPE = "glm4_moe_lite"


# Layer tensors under models/glm4_moe_lite's names.
LAYER_NAMES = {
    _base(MODEL_TENSOR.ATTN_NORM): "input_layernorm",
    _base(MODEL_TENSOR.ATTN_Q): "self_attn.q_proj",
    _base(MODEL_TENSOR.ATTN_Q_A): "self_attn.q_a_proj",
    _base(MODEL_TENSOR.ATTN_Q_A_NORM): "self_attn.q_a_layernorm",
    _base(MODEL_TENSOR.ATTN_Q_B): "self_attn.q_b_proj",
    _base(MODEL_TENSOR.ATTN_KV_A_MQA): "self_attn.kv_a_proj_with_mqa",
    _base(MODEL_TENSOR.ATTN_KV_A_NORM): "self_attn.kv_a_layernorm",
    _base(MODEL_TENSOR.ATTN_KV_B): "self_attn.kv_b_proj",
    _base(MODEL_TENSOR.ATTN_K_B): "self_attn.embed_q",
    _base(MODEL_TENSOR.ATTN_V_B): "self_attn.unembed_out",
    _base(MODEL_TENSOR.ATTN_OUT): "self_attn.o_proj",
    _base(MODEL_TENSOR.FFN_NORM): "post_attention_layernorm",
    _base(MODEL_TENSOR.FFN_GATE): "mlp.gate_proj",
    _base(MODEL_TENSOR.FFN_UP): "mlp.up_proj",
    _base(MODEL_TENSOR.FFN_DOWN): "mlp.down_proj",
    _base(MODEL_TENSOR.FFN_GATE_INP): "mlp.gate",
    _base(MODEL_TENSOR.FFN_EXP_PROBS_B): "mlp.gate.e_score_correction_bias",
    _base(MODEL_TENSOR.FFN_GATE_EXP): "mlp.switch_mlp.gate_proj",
    _base(MODEL_TENSOR.FFN_UP_EXP): "mlp.switch_mlp.up_proj",
    _base(MODEL_TENSOR.FFN_DOWN_EXP): "mlp.switch_mlp.down_proj",
    _base(MODEL_TENSOR.FFN_GATE_SHEXP): "mlp.shared_experts.gate_proj",
    _base(MODEL_TENSOR.FFN_UP_SHEXP): "mlp.shared_experts.up_proj",
    _base(MODEL_TENSOR.FFN_DOWN_SHEXP): "mlp.shared_experts.down_proj",
}
# Bare parameters the converter wrote with a suffix: the correction bias ("...e_score_correction_bias" became
# "blk.N.exp_probs_b.bias").
BARE_PARAMETERS = {_base(MODEL_TENSOR.FFN_EXP_PROBS_B): "bias"}


def _int(metadata: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = metadata.get(f"{DEEPSEEK2}.{key}")
    if value is None:
        if default is None:
            raise ModelLoadError(f"GGUF file lacks {DEEPSEEK2}.{key}")
        return default
    return int(value)


def _router(metadata: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse what glm4_moe_lite's router cannot compute: only sigmoid scoring with a correction bias (DeepSeek-V3's
    and GLM's noaux_tc). A file without expert_gating_func is taken as sigmoid only when it carries the correction
    biases, which only that scoring has (llama.cpp would run such a file with a softmax: DeepSeek-V2's default)."""
    gating = metadata.get(f"{DEEPSEEK2}.expert_gating_func")
    biased = any(name.endswith(".exp_probs_b.bias") for name in tensor_shapes)
    if gating is None and biased:
        return
    if gating is None or int(gating) != ExpertGatingFuncType.SIGMOID:
        raise ModelLoadError(f"GGUF {DEEPSEEK2} file routes its experts with a softmax (expert_gating_func "
                             f"{gating}); mlxd serves this architecture's sigmoid routing only")
    if not biased:
        raise ModelLoadError(f"GGUF {DEEPSEEK2} file has sigmoid routing without exp_probs_b (correction biases)")


def mla_config(metadata: Mapping[str, Any], config: dict[str, Any],
               tensor_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Fill `config` (the generic keys read already) with glm4_moe_lite's: latent attention sizes, dense
    layers, experts and routing."""
    rope_dims = _int(metadata, "rope.dimension_count")
    q_lora = _int(metadata, "attention.q_lora_rank", 0)
    if bool(q_lora) != ("blk.0.attn_q_a.weight" in tensor_shapes):
        raise ModelLoadError(f"GGUF {DEEPSEEK2} file's attention.q_lora_rank ({q_lora}) and its query tensors "
                             "disagree")
    mla = f"{DEEPSEEK2}.attention.key_length_mla" in metadata
    key = _int(metadata, "attention.key_length_mla" if mla else "attention.key_length")
    value = _int(metadata, "attention.value_length_mla" if mla else "attention.value_length")
    shared = _int(metadata, "expert_shared_count", 0)
    if not shared:
        raise ModelLoadError(f"GGUF {DEEPSEEK2} file has no shared experts, which glm4_moe_lite always has")
    _router(metadata, tensor_shapes)
    config.update(
        q_lora_rank=q_lora or None,
        kv_lora_rank=_int(metadata, "attention.kv_lora_rank"),
        qk_rope_head_dim=rope_dims,
        qk_nope_head_dim=key - rope_dims,
        v_head_dim=value,
        rope_interleave=True,
        attention_bias="blk.0.attn_kv_a_mqa.bias" in tensor_shapes,
        first_k_dense_replace=_int(metadata, "leading_dense_block_count", 0),
        n_routed_experts=_int(metadata, "expert_count"),
        num_experts_per_tok=_int(metadata, "expert_used_count"),
        moe_intermediate_size=_int(metadata, "expert_feed_forward_length"),
        n_shared_experts=shared,
        n_group=_int(metadata, "expert_group_count", 1),
        topk_group=_int(metadata, "expert_group_used_count", 1),
        norm_topk_prob=bool(metadata.get(f"{DEEPSEEK2}.expert_weights_norm", False)),
        routed_scaling_factor=float(metadata.get(f"{DEEPSEEK2}.expert_weights_scale") or 1.0),
        topk_method="noaux_tc",
    )
    config.pop("num_key_value_heads", None)  # llama.cpp's 1: the latent "head"
