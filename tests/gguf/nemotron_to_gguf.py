"""Nemotron-H as llama.cpp's converter writes it (its NemotronHModel over GraniteHybridModel and Mamba2Model in
convert_hf_to_gguf.py), for hf_to_gguf.write_gguf: architecture `nemotron_h_moe` when the config routes to experts.

What it does, written here from its behaviour:
- hyperparameters: head_count_kv and feed_forward_length one value per layer (the kv heads on attention layers,
  the MLP width, or the experts' in a MoE file, on MLP / MoE layers; 0 elsewhere), key/value length the attention
  head size, the ssm.* sizes (inner size, heads as time_step_rank, state size, groups, conv kernel), the expert
  keys (count, used, width, shared width, shared count, weights norm and scale, group count), context length 2^20
  (no rotary embedding);
- tensors: A_log as -exp(A_log) [H, 1], D as [H, 1], dt_bias as ssm_dt.bias, conv weights squeezed to [C, K], the
  gated norm's weight as [groups, I / groups], each layer's experts stacked per projection, the routers' correction
  biases renamed "...e_score_correction.bias" for the tensor table, q/k rows permuted per head as for llama's rope.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from gguf import GGUFWriter

from tests.gguf.tiny_gguf import permute_like_llama_cpp

_KINDS = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*", "mlp": "-", "moe": "E"}
_EXPERT = re.compile(r"backbone\.layers\.(\d+)\.mixer\.experts\.(\d+)\.(\w+)\.weight")


def nemotron_config(config: dict[str, Any]) -> dict[str, Any]:
    """The transformers 5 config with the layer pattern and count the writer needs."""
    pattern = config.get("hybrid_override_pattern") or "".join(_KINDS[k] for k in config["layers_block_type"])
    return {**config, "hybrid_override_pattern": pattern, "num_hidden_layers": len(pattern)}


def nemotron_hyperparameters(w: GGUFWriter, config: dict[str, Any]) -> None:
    pattern = config["hybrid_override_pattern"]
    moe = "E" in pattern
    heads, mamba_heads = config["num_attention_heads"], config["mamba_num_heads"]
    w.add_context_length(2**20)
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(len(pattern))
    w.add_head_count(heads)
    w.add_head_count_kv([config["num_key_value_heads"] if k == "*" else 0 for k in pattern])
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_layer_norm_rms_eps(config["layer_norm_epsilon"])
    width, kind = (config["moe_intermediate_size"], "E") if moe else (config["intermediate_size"], "-")
    w.add_feed_forward_length([width if k == kind else 0 for k in pattern])
    w.add_ssm_conv_kernel(config["conv_kernel"])
    w.add_ssm_state_size(config["ssm_state_size"])
    w.add_ssm_group_count(config["n_groups"])
    w.add_ssm_inner_size(mamba_heads * config["mamba_head_dim"])
    w.add_ssm_time_step_rank(mamba_heads)
    if moe:
        w.add_expert_used_count(config["num_experts_per_tok"])
        w.add_expert_feed_forward_length(config["moe_intermediate_size"])
        w.add_expert_shared_feed_forward_length(config["moe_shared_expert_intermediate_size"])
        w.add_expert_count(config["n_routed_experts"])
        w.add_expert_shared_count(config["n_shared_experts"])
        w.add_expert_weights_norm(config["norm_topk_prob"])
        w.add_expert_weights_scale(config["routed_scaling_factor"])
        w.add_expert_group_count(config["n_group"])


def nemotron_tensors(weights: dict[str, np.ndarray],
                     config: dict[str, Any]) -> list[tuple[str, np.ndarray, list[str]]]:
    """(name to look up in the tensor table, values, the checkpoint tensors they hold) for each tensor to write.
    The Mamba-2 tensors' values are the converter's; the checkpoint's own values are what a model holding them
    computes with (the loader takes them back), so each names its checkpoint tensor."""
    groups = config["n_groups"]
    out, experts = [], {}
    for hf, values in weights.items():
        m = _EXPERT.fullmatch(hf)
        if m:
            layer, expert, proj = m.groups()
            experts.setdefault(f"model.layers.{layer}.mlp.experts.{proj}.weight", {})[int(expert)] = hf
            continue
        name = hf
        if hf.endswith(".A_log"):
            values = -np.exp(values).reshape(-1, 1)
        elif hf.endswith(".D"):
            values = values.reshape(-1, 1)
        elif hf.endswith(".dt_bias"):
            name = hf.replace("dt_bias", "dt.bias")
        elif hf.endswith("conv1d.weight"):
            values = values.squeeze(1)
        elif hf.endswith("mixer.norm.weight"):
            values = values.reshape(groups, -1)
        elif hf.endswith("e_score_correction_bias"):
            name = hf.replace("e_score_correction_bias", "e_score_correction.bias")
        elif hf.endswith(("q_proj.weight", "k_proj.weight")):
            n = config["num_attention_heads"] if ".q_proj." in hf else config["num_key_value_heads"]
            values = permute_like_llama_cpp(values, n)
        out.append((name, values, [hf]))
    for name, by_expert in experts.items():
        parts = [by_expert[e] for e in range(len(by_expert))]
        out.append((name, np.stack([weights[p] for p in parts]), parts))
    return out
