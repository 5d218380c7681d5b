"""Qwen3.5 (dense and MoE), Gemma 4 26B-A4B and GLM-4.7-Flash shapes for `random_model`: each one's published
config.json (the layout of its Hugging Face checkpoint, nested `text_config` for the vision-language ones) and its
published tensor names and shapes. `tiny=True` keeps every key and the structure with small numbers (dims multiples
of 64, so a 4-bit conversion quantizes every matrix), for the CPU anchor check and the unit tests.

Numbers: Qwen3.5-35B-A3B's fused experts [256, 1024, 2048] and GLM-4.7-Flash's and Gemma 4 26B-A4B's published
values are quoted in tests/fixtures HYBRID_NOTES (§2.3, §4, §5) and public model cards; Qwen3.5's (both) linear-
attention head counts (16 key / 32 value heads of 128), the 4B's MLP width 9216 and tied head, GLM-4.7-Flash's dense
MLP width 10240, expert width 1536, vocabulary 154,880 and Gemma 4's softcap 30 are the published configs' values
as remembered, not re-read here (the search index holds no config.json for them).
"""

from __future__ import annotations

QWEN_MOE, QWEN_DENSE, GEMMA4, GLM = "qwen3.5-35b-a3b", "qwen3.5-4b", "gemma4-26b-a4b", "glm-4.7-flash"
HYBRID = (QWEN_MOE, QWEN_DENSE, GEMMA4, GLM)


def config(shape: str, tiny: bool = False, layers: int | None = None) -> dict:
    """`layers`: only the first that many layers (each as published, the layer pattern kept), for a model that
    must fit the device's disk or twice on one device (mlxd's copy and the anchor's). Gemma 4 26B-A4B shares no
    KV across layers (`num_kv_shared_layers` 0), so its layers may be cut too."""
    if shape.startswith("qwen3.5"):
        return _qwen(shape == QWEN_MOE, tiny, layers)
    return _gemma4(tiny, layers) if shape == GEMMA4 else _glm(tiny, layers)


def _qwen(moe: bool, tiny: bool, kept_layers: int | None = None) -> dict:
    if tiny:
        hidden, layers, heads, kv, hd, hk, hv, dk, dv, vocab, interval = 64, 4, 4, 2, 32, 2, 4, 16, 32, 320, 2
    else:
        hidden, layers, heads, kv, hd, hk, hv, dk, dv, vocab, interval = \
            (2048, 40, 16, 2, 256, 16, 32, 128, 128, 248320, 4) if moe else \
            (2560, 32, 16, 4, 256, 16, 32, 128, 128, 248320, 4)
    layers = min(layers, kept_layers or layers)
    text = {"model_type": "qwen3_5_moe_text" if moe else "qwen3_5_text", "vocab_size": vocab, "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
            "hidden_act": "silu", "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": not moe, "attention_bias": False, "attn_output_gate": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                                "mrope_section": [2, 1, 1] if tiny else [11, 11, 10], "mrope_interleaved": True},
            "partial_rotary_factor": 0.25, "linear_conv_kernel_dim": 4, "linear_key_head_dim": dk,
            "linear_value_head_dim": dv, "linear_num_key_heads": hk, "linear_num_value_heads": hv,
            "full_attention_interval": interval, "layer_types": [
                "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)],
            "mamba_ssm_dtype": "float32", "mtp_num_hidden_layers": 1, "mtp_use_dedicated_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "dtype": "bfloat16"}
    if moe:
        text.update(num_experts=6 if tiny else 256, num_experts_per_tok=2 if tiny else 8,
                    moe_intermediate_size=64 if tiny else 512, shared_expert_intermediate_size=64 if tiny else 512)
    else:
        text.update(intermediate_size=128 if tiny else 9216, mlp_only_layers=[])
    name = "Qwen3_5MoeForConditionalGeneration" if moe else "Qwen3_5ForConditionalGeneration"
    # The vision tower's tensors are not written (both engines serve the text model and skip `model.visual.*`).
    vision: dict[str, object] = {"model_type": "qwen3_5_moe" if moe else "qwen3_5", "depth": 27, "hidden_size": 1152,
              "intermediate_size": 4304, "num_heads": 16, "in_channels": 3, "patch_size": 16,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": hidden,
              "num_position_embeddings": 2304, "deepstack_visual_indexes": []}
    return {"architectures": [name], "model_type": "qwen3_5_moe" if moe else "qwen3_5", "text_config": text,
            "vision_config": vision, "image_token_id": 248056, "video_token_id": 248057,
            "vision_start_token_id": 248053, "vision_end_token_id": 248054, "tie_word_embeddings": not moe}


def _gemma4(tiny: bool, kept_layers: int | None = None) -> dict:
    if tiny:
        vocab, hidden, inter, layers, heads, kv, hd, ghd, gkv, experts, top_k, moe_inter, window = \
            320, 128, 128, 6, 4, 2, 32, 64, 1, 8, 2, 64, 8
    else:
        vocab, hidden, inter, layers, heads, kv, hd, ghd, gkv, experts, top_k, moe_inter, window = \
            262144, 2816, 2112, 30, 16, 8, 256, 512, 2, 128, 8, 704, 1024
    if kept_layers and kept_layers % 6:  # Gemma 4 makes its last layer a global one: keep whole groups of six
        raise ValueError(f"{GEMMA4}: --layers must be a multiple of 6 (five sliding layers, then a global one)")
    layers = min(layers, kept_layers or layers)
    text = {"model_type": "gemma4_text", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
            "global_head_dim": ghd, "num_global_key_value_heads": gkv, "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
            "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                                   "rope_theta": 1000000.0}},
            "attention_bias": False, "sliding_window": window,
            "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)],
            "final_logit_softcapping": 30.0, "use_bidirectional_attention": "vision",
            "vocab_size_per_layer_input": vocab, "hidden_size_per_layer_input": 0, "attention_k_eq_v": True,
            "num_kv_shared_layers": 0, "enable_moe_block": True, "use_double_wide_mlp": False,
            "num_experts": experts, "top_k_experts": top_k, "moe_intermediate_size": moe_inter,
            "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1, "dtype": "bfloat16"}
    if tiny:
        text.update(bos_token_id=1, eos_token_id=2)  # the 320-token test tokenizer's
    out: dict[str, object] = {
        "architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "text_config": text,
        "vision_config": None, "audio_config": None, "tie_word_embeddings": True, "dtype": "bfloat16"}
    if vocab != 262144:
        # Not in published configs: mlx-lm's gemma4 copies its own top-level vocab_size (default 262,144, the real
        # one) over text_config's, so any other vocabulary needs it here (HYBRID_NOTES §8).
        out["vocab_size"] = vocab
    return out


def _glm(tiny: bool, kept_layers: int | None = None) -> dict:
    if tiny:
        vocab, hidden, inter, moe_inter, layers, heads, q_lora, kv_lora, nope, rope, v, experts, top_k, groups = \
            320, 128, 128, 64, 3, 4, 64, 64, 64, 16, 64, 8, 2, 2
    else:
        vocab, hidden, inter, moe_inter, layers, heads, q_lora, kv_lora, nope, rope, v, experts, top_k, groups = \
            154880, 2048, 10240, 1536, 47, 20, 768, 512, 192, 64, 256, 64, 4, 1
    layers = min(layers, kept_layers or layers)
    return {"architectures": ["Glm4MoeLiteForCausalLM"], "model_type": "glm4_moe_lite", "vocab_size": vocab,
            "hidden_size": hidden, "intermediate_size": inter, "moe_intermediate_size": moe_inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
            "n_shared_experts": 1, "n_routed_experts": experts, "routed_scaling_factor": 2.5 if tiny else 1.8,
            "kv_lora_rank": kv_lora, "q_lora_rank": q_lora, "qk_rope_head_dim": rope, "v_head_dim": v,
            "qk_nope_head_dim": nope, "n_group": groups, "topk_group": 1, "num_experts_per_tok": top_k,
            "norm_topk_prob": True, "hidden_act": "silu", "max_position_embeddings": 202752, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False, "attention_bias": False, "attention_dropout": 0.0,
            "rope_theta": 1000000.0, "rope_scaling": None, "partial_rotary_factor": 1.0,
            "first_k_dense_replace": 1, "topk_method": "noaux_tc", "num_nextn_predict_layers": 1,
            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "dtype": "bfloat16"}


def tensors(shape: str, cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the published checkpoint (text model only: no vision tower, no MTP layer)."""
    if shape.startswith("qwen3.5"):
        return _qwen_tensors(cfg["text_config"])
    return _gemma4_tensors(cfg["text_config"]) if shape == GEMMA4 else _glm_tensors(cfg)


def _swiglu(p: str, inter: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {p + "gate_proj.weight": (inter, hidden), p + "up_proj.weight": (inter, hidden),
            p + "down_proj.weight": (hidden, inter)}


def _qwen_tensors(c: dict) -> dict[str, tuple[int, ...]]:
    h, m = c["hidden_size"], "model.language_model."
    hk, hv, dk, dv = (c[f"linear_{k}"] for k in ("num_key_heads", "num_value_heads", "key_head_dim",
                                                  "value_head_dim"))
    heads, kv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    out: dict[str, tuple[int, ...]] = {m + "embed_tokens.weight": (c["vocab_size"], h), m + "norm.weight": (h,)}
    if not c["tie_word_embeddings"]:
        out["lm_head.weight"] = (c["vocab_size"], h)
    conv = 2 * hk * dk + hv * dv
    for i, kind in enumerate(c["layer_types"]):
        p = f"{m}layers.{i}."
        out.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
        if kind == "linear_attention":
            a = p + "linear_attn."
            out.update({a + "in_proj_qkv.weight": (conv, h), a + "in_proj_z.weight": (hv * dv, h),
                        a + "in_proj_b.weight": (hv, h), a + "in_proj_a.weight": (hv, h),
                        a + "conv1d.weight": (conv, 1, c["linear_conv_kernel_dim"]), a + "A_log": (hv,),
                        a + "dt_bias": (hv,), a + "norm.weight": (dv,), a + "out_proj.weight": (h, hv * dv)})
        else:
            a = p + "self_attn."
            out.update({a + "q_proj.weight": (2 * heads * hd, h), a + "k_proj.weight": (kv * hd, h),
                        a + "v_proj.weight": (kv * hd, h), a + "o_proj.weight": (h, heads * hd),
                        a + "q_norm.weight": (hd,), a + "k_norm.weight": (hd,)})
        if "num_experts" in c:
            e, mi = c["num_experts"], c["moe_intermediate_size"]
            out.update({p + "mlp.gate.weight": (e, h), p + "mlp.experts.gate_up_proj": (e, 2 * mi, h),
                        p + "mlp.experts.down_proj": (e, h, mi), p + "mlp.shared_expert_gate.weight": (1, h)})
            out.update(_swiglu(p + "mlp.shared_expert.", c["shared_expert_intermediate_size"], h))
        else:
            out.update(_swiglu(p + "mlp.", c["intermediate_size"], h))
    return out


def _gemma4_tensors(c: dict) -> dict[str, tuple[int, ...]]:
    h, m, e, mi = c["hidden_size"], "model.language_model.", c["num_experts"], c["moe_intermediate_size"]
    out: dict[str, tuple[int, ...]] = {m + "embed_tokens.weight": (c["vocab_size"], h), m + "norm.weight": (h,)}
    for i, kind in enumerate(c["layer_types"]):
        p, full = f"{m}layers.{i}.", kind == "full_attention"
        hd = c["global_head_dim"] if full else c["head_dim"]
        kv = c["num_global_key_value_heads"] if full else c["num_key_value_heads"]
        a = p + "self_attn."
        out.update({a + "q_proj.weight": (c["num_attention_heads"] * hd, h), a + "k_proj.weight": (kv * hd, h),
                    a + "o_proj.weight": (h, c["num_attention_heads"] * hd), a + "q_norm.weight": (hd,),
                    a + "k_norm.weight": (hd,)})
        if not (full and c["attention_k_eq_v"]):
            out[a + "v_proj.weight"] = (kv * hd, h)
        out.update(_swiglu(p + "mlp.", c["intermediate_size"], h))
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm", "post_feedforward_layernorm_1", "pre_feedforward_layernorm_2",
                     "post_feedforward_layernorm_2"):
            out[f"{p}{norm}.weight"] = (h,)
        out.update({p + "router.proj.weight": (e, h), p + "router.scale": (h,), p + "router.per_expert_scale": (e,),
                    p + "experts.gate_up_proj": (e, 2 * mi, h), p + "experts.down_proj": (e, h, mi),
                    p + "layer_scalar": (1,)})
    return out


def _glm_tensors(c: dict) -> dict[str, tuple[int, ...]]:
    h, heads, v = c["hidden_size"], c["num_attention_heads"], c["v_head_dim"]
    nope, rope, ql, kvl = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["q_lora_rank"], c["kv_lora_rank"]
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c["vocab_size"], h), "model.norm.weight": (h,),
                                       "lm_head.weight": (c["vocab_size"], h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        out.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                    a + "q_a_proj.weight": (ql, h), a + "q_a_layernorm.weight": (ql,),
                    a + "q_b_proj.weight": (heads * (nope + rope), ql),
                    a + "kv_a_proj_with_mqa.weight": (kvl + rope, h),
                    a + "kv_a_layernorm.weight": (kvl,), a + "kv_b_proj.weight": (heads * (nope + v), kvl),
                    a + "o_proj.weight": (h, heads * v)})
        if i < c["first_k_dense_replace"]:
            out.update(_swiglu(p + "mlp.", c["intermediate_size"], h))
            continue
        e, mi = c["n_routed_experts"], c["moe_intermediate_size"]
        out.update({p + "mlp.gate.weight": (e, h), p + "mlp.gate.e_score_correction_bias": (e,)})
        out.update(_swiglu(p + "mlp.shared_experts.", mi * c["n_shared_experts"], h))
        for j in range(e):
            out.update(_swiglu(f"{p}mlp.experts.{j}.", mi, h))
    return out
