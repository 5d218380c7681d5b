"""GLM-4.7-Flash (glm4_moe_lite) as llama.cpp's converter writes it, architecture `deepseek2` (its Glm4MoeLiteModel
is a DeepseekV2Model in convert_hf_to_gguf.py), for hf_to_gguf.write_gguf.

What it does, written here from its behaviour:
- hyperparameters: the latent attention as one MQA "head" (head_count_kv 1, key_length kv_lora_rank + rope dims,
  value_length kv_lora_rank) with the per-head sizes in key_length_mla / value_length_mla, the lora ranks, the
  rope dims, leading_dense_block_count from first_k_dense_replace (the published config's key: here counted off
  mlp_layer_types), the expert keys (count, used, width, shared count, weights scale, weights norm, group count
  and groups used); no expert_gating_func, since GLM's config names no scoring_func;
- kv_b_proj split per head into k_b_proj [heads, latent, nope] (the key rows, transposed) and v_b_proj
  [heads, v, latent] (the value rows) for its absorbed attention;
- the routers' correction biases renamed "...e_score_correction.bias" for the tensor table.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from gguf import GGUFWriter

_KV_B = re.compile(r"(model\.layers\.\d+\.self_attn)\.kv_b_proj\.weight")
_CORRECTION = "e_score_correction_bias"


def mla_hyperparameters(w: GGUFWriter, config: dict[str, Any]) -> None:
    latent, rope = config["kv_lora_rank"], config["qk_rope_head_dim"]
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(1)
    w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_vocab_size(config["vocab_size"])
    w.add_expert_count(config["n_routed_experts"])
    w.add_expert_used_count(config["num_experts_per_tok"])
    w.add_expert_group_count(config["n_group"])
    w.add_expert_group_used_count(config["topk_group"])
    dense = config["mlp_layer_types"]
    w.add_leading_dense_block_count(dense.index("sparse") if "sparse" in dense else len(dense))
    if config.get("q_lora_rank") is not None:
        w.add_q_lora_rank(config["q_lora_rank"])
    w.add_kv_lora_rank(latent)
    w.add_key_length(latent + rope)
    w.add_value_length(latent)
    w.add_key_length_mla(config["qk_nope_head_dim"] + rope)
    w.add_value_length_mla(config["v_head_dim"])
    w.add_expert_feed_forward_length(config["moe_intermediate_size"])
    w.add_expert_shared_count(config["n_shared_experts"])
    w.add_expert_weights_scale(config["routed_scaling_factor"])
    if config["norm_topk_prob"]:
        w.add_expert_weights_norm(True)
    w.add_rope_dimension_count(rope)


def mla_tensors(entries: list[tuple[str, np.ndarray, list[str]]],
                config: dict[str, Any]) -> list[tuple[str, np.ndarray, list[str]]]:
    """hf_to_gguf.merge_experts' entries with each kv_b_proj split and the correction biases renamed; the split
    halves' held values are returned under mlx-lm's names (`embed_q`, `unembed_out`), which the model's sanitize
    joins back into kv_b_proj."""
    heads, nope = config["num_attention_heads"], config["qk_nope_head_dim"]
    out = []
    for name, values, parts in entries:
        kv_b = _KV_B.fullmatch(name)
        if kv_b is None:
            out.append((name.replace(_CORRECTION, "e_score_correction.bias"), values, parts))
            continue
        prefix = kv_b.group(1)
        per_head = values.reshape(heads, -1, values.shape[-1])
        out.append((f"{prefix}.k_b_proj.weight", np.ascontiguousarray(per_head[:, :nope].swapaxes(1, 2)),
                    [f"{prefix}.embed_q.weight"]))
        out.append((f"{prefix}.v_b_proj.weight", np.ascontiguousarray(per_head[:, nope:]),
                    [f"{prefix}.unembed_out.weight"]))
    return out
