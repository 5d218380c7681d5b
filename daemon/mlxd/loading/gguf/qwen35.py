"""llama.cpp's `qwen35` and `qwen35moe` files (Qwen3.5 dense and MoE) as mlxd's qwen3_5_text / qwen3_5_moe_text,
and its `qwen3next` files (Qwen3-Next) as qwen3_next.

What llama.cpp's converter (Qwen3_5TextModel / Qwen3_5MoeTextModel over Qwen3NextModel) does to the checkpoint,
and how it comes back here:
- The layer kinds are not stored: full_attention_interval is (llama.cpp's default 4), every interval-th layer full.
- The DeltaNet sizes are ssm.* keys: state_size is the key head size, group_count the key heads, time_step_rank
  the value heads, inner_size value heads x value head size (llama.cpp itself sizes value heads by state_size, so
  it loads only models whose key and value heads are the same size; the file still says both).
- The partial rotary embedding is rope.dimension_count of head_dim; the M-RoPE sections do not matter for text
  (every axis has the same position), as in models/qwen3_5.py.
- The norms mlxd folds (1 + w) are stored folded, the DeltaNet's gated norm as it is, as mlxd holds them.
- A_log is stored as A = -exp(A_log) (`ssm_a`, no suffix): taken back as log(-A) in float64, which the model's
  -exp gives back to within one float32 rounding. dt_bias is `ssm_dt.bias`, the conv [C, K] without its middle axis.
- With more value heads than key heads the value heads are stored tiled (value head j reads key head j mod Hk,
  for ggml's broadcasting repeat) instead of grouped by key head: in_proj_qkv's and the conv's value rows,
  in_proj_z/a/b rows, A and dt_bias, out_proj columns. The model is told so (`linear_value_head_order`) rather
  than the tensors moved back: out_proj's columns move by value head, which cuts quantization blocks unless the
  head size is a multiple of 32, and the tiled order is the same function, the file's codes kept as they are.
- MoE: routed experts softmax-scored with the kept weights renormalized (llama.cpp's qwen35moe), a shared expert
  gated per token by ffn_gate_inp_shexp.
- qwen3next (Qwen3NextModel, the base of the Qwen3.5 converters) differs: the value heads stay grouped by key head
  (no tiling), in_proj_qkvz is stored as attn_qkv ([q | k | v] over all heads) and attn_gate (z), in_proj_ba stays
  fused (ssm_ba, which models/qwen3_next.py splits), no M-RoPE sections, no MTP head, and every layer is MoE (the
  arch's tensor table has no dense MLP); the kept weights are renormalized, as every published Qwen3-Next config
  says (norm_topk_prob; the file does not store it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlx.core as mx
import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, ExpertGatingFuncType

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf.common import layer_base as _base
from mlxd.loading.gguf.common import token_ids, vocab_size

QWEN35 = MODEL_ARCH_NAMES[MODEL_ARCH.QWEN35]
QWEN35MOE = MODEL_ARCH_NAMES[MODEL_ARCH.QWEN35MOE]
QWEN3NEXT = MODEL_ARCH_NAMES[MODEL_ARCH.QWEN3NEXT]
ARCHS = (QWEN35, QWEN35MOE, QWEN3NEXT)
MODEL_TYPES = {QWEN35: "qwen3_5_text", QWEN35MOE: "qwen3_5_moe_text", QWEN3NEXT: "qwen3_next"}
TILED, GROUPED = "tiled", "grouped"


# Layer tensors under models/qwen3_5's names (MoE ones under models/qwen3_5_moe's SharedExpertMoe).
LAYER_NAMES = {
    _base(MODEL_TENSOR.ATTN_NORM): "input_layernorm",
    _base(MODEL_TENSOR.ATTN_POST_NORM): "post_attention_layernorm",
    _base(MODEL_TENSOR.ATTN_Q): "self_attn.q_proj",
    _base(MODEL_TENSOR.ATTN_K): "self_attn.k_proj",
    _base(MODEL_TENSOR.ATTN_V): "self_attn.v_proj",
    _base(MODEL_TENSOR.ATTN_OUT): "self_attn.o_proj",
    _base(MODEL_TENSOR.ATTN_Q_NORM): "self_attn.q_norm",
    _base(MODEL_TENSOR.ATTN_K_NORM): "self_attn.k_norm",
    _base(MODEL_TENSOR.ATTN_QKV): "linear_attn.in_proj_qkv",
    _base(MODEL_TENSOR.ATTN_GATE): "linear_attn.in_proj_z",
    _base(MODEL_TENSOR.SSM_ALPHA): "linear_attn.in_proj_a",
    _base(MODEL_TENSOR.SSM_BETA): "linear_attn.in_proj_b",
    _base(MODEL_TENSOR.SSM_BETA_ALPHA): "linear_attn.in_proj_ba",
    _base(MODEL_TENSOR.SSM_A): "linear_attn.A_log",
    _base(MODEL_TENSOR.SSM_DT): "linear_attn.dt_bias",
    _base(MODEL_TENSOR.SSM_CONV1D): "linear_attn.conv1d",
    _base(MODEL_TENSOR.SSM_NORM): "linear_attn.norm",
    _base(MODEL_TENSOR.SSM_OUT): "linear_attn.out_proj",
    _base(MODEL_TENSOR.FFN_GATE): "mlp.gate_proj",
    _base(MODEL_TENSOR.FFN_UP): "mlp.up_proj",
    _base(MODEL_TENSOR.FFN_DOWN): "mlp.down_proj",
    _base(MODEL_TENSOR.FFN_GATE_INP): "mlp.gate",
    _base(MODEL_TENSOR.FFN_GATE_EXP): "mlp.switch_mlp.gate_proj",
    _base(MODEL_TENSOR.FFN_UP_EXP): "mlp.switch_mlp.up_proj",
    _base(MODEL_TENSOR.FFN_DOWN_EXP): "mlp.switch_mlp.down_proj",
    _base(MODEL_TENSOR.FFN_GATE_SHEXP): "mlp.shared_expert.gate_proj",
    _base(MODEL_TENSOR.FFN_UP_SHEXP): "mlp.shared_expert.up_proj",
    _base(MODEL_TENSOR.FFN_DOWN_SHEXP): "mlp.shared_expert.down_proj",
    _base(MODEL_TENSOR.FFN_GATE_INP_SHEXP): "mlp.shared_expert_gate",
}
# Bare parameters and the suffix the converter wrote them with: none for A ("blk.N.ssm_a"), ".bias" for dt_bias.
BARE_PARAMETERS = {_base(MODEL_TENSOR.SSM_A): "", _base(MODEL_TENSOR.SSM_DT): "bias"}


def _value(metadata: Mapping[str, Any], arch: str, key: str, default: Any = None) -> Any:
    value = metadata.get(f"{arch}.{key}", default)
    if value is None:
        raise ModelLoadError(f"GGUF file lacks {arch}.{key}")
    if isinstance(value, list):
        raise ModelLoadError(f"GGUF key {arch}.{key} holds one value per layer, which mlxd does not support")
    return value


def _layer_types(metadata: Mapping[str, Any], arch: str, n_layers: int) -> list[str]:
    interval = int(_value(metadata, arch, "full_attention_interval", 4))
    return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n_layers)]


def _experts(metadata: Mapping[str, Any], arch: str, config: dict[str, Any]) -> None:
    gating = metadata.get(f"{arch}.expert_gating_func")
    if gating is not None and int(gating) != ExpertGatingFuncType.SOFTMAX:
        raise ModelLoadError(f"GGUF {arch} file routes its experts with gating function {gating}; Qwen3.5 MoE "
                             "scores them with a softmax")
    used = int(_value(metadata, arch, "expert_used_count"))
    width = config.get("intermediate_size")
    config.update(
        num_experts=int(_value(metadata, arch, "expert_count")),
        num_experts_per_tok=used,
        # llama.cpp's fallbacks when the widths are absent: feed_forward_length / used, feed_forward_length.
        moe_intermediate_size=int(_value(metadata, arch, "expert_feed_forward_length",
                                         width // used if width else None)),
        shared_expert_intermediate_size=int(_value(metadata, arch, "expert_shared_feed_forward_length", width)),
    )


def qwen35_config(metadata: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The flat qwen3_5_text / qwen3_5_moe_text config.json of the model a qwen35/qwen35moe GGUF file holds."""
    arch = str(metadata["general.architecture"])
    # The converter appends the MTP head as extra blocks (nextn_predict_layers of them): not layers of the model.
    n_layers = int(_value(metadata, arch, "block_count")) - int(metadata.get(f"{arch}.nextn_predict_layers") or 0)
    head_dim = int(_value(metadata, arch, "attention.key_length"))
    if int(_value(metadata, arch, "attention.value_length", head_dim)) != head_dim:
        raise ModelLoadError(f"GGUF {arch} value length differs from the key length, which Qwen3.5 never has")
    value_heads = int(_value(metadata, arch, "ssm.time_step_rank"))
    key_heads = int(_value(metadata, arch, "ssm.group_count"))
    inner = int(_value(metadata, arch, "ssm.inner_size"))
    if inner % value_heads or value_heads % key_heads:
        raise ModelLoadError(f"GGUF {arch} ssm sizes do not divide: inner_size {inner}, {value_heads} value heads, "
                             f"{key_heads} key heads")
    rotated = int(_value(metadata, arch, "rope.dimension_count", head_dim))
    config: dict[str, Any] = {
        "model_type": MODEL_TYPES[arch],
        "vocab_size": vocab_size(tensor_shapes),
        "hidden_size": int(_value(metadata, arch, "embedding_length")),
        "num_hidden_layers": n_layers,
        "num_attention_heads": int(_value(metadata, arch, "attention.head_count")),
        "num_key_value_heads": int(_value(metadata, arch, "attention.head_count_kv")),
        "head_dim": head_dim,
        "rms_norm_eps": float(_value(metadata, arch, "attention.layer_norm_rms_epsilon")),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(_value(metadata, arch, "rope.freq_base")),
                            "partial_rotary_factor": rotated / head_dim},
        "layer_types": _layer_types(metadata, arch, n_layers),
        "linear_conv_kernel_dim": int(_value(metadata, arch, "ssm.conv_kernel")),
        "linear_key_head_dim": int(_value(metadata, arch, "ssm.state_size")),
        "linear_value_head_dim": inner // value_heads,
        "linear_num_key_heads": key_heads,
        "linear_num_value_heads": value_heads,
        "linear_value_head_order": GROUPED if arch == QWEN3NEXT else TILED,
        "attention_bias": False,
        "tie_word_embeddings": "output.weight" not in tensor_shapes,
    }
    if f"{arch}.feed_forward_length" in metadata:
        config["intermediate_size"] = int(_value(metadata, arch, "feed_forward_length"))
    if f"{arch}.context_length" in metadata:
        config["max_position_embeddings"] = int(metadata[f"{arch}.context_length"])
    if arch in (QWEN35MOE, QWEN3NEXT):
        _experts(metadata, arch, config)
    if arch == QWEN3NEXT:
        dense = [i for i in range(n_layers) if f"blk.{i}.ffn_gate_inp.weight" not in tensor_shapes]
        if dense:
            raise ModelLoadError(f"GGUF qwen3next blocks {dense} have no experts; llama.cpp's qwen3next has no "
                                 "dense layers")
        config.update(norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])
    config.update(token_ids(metadata))
    return config


def beyond_the_model(gguf_name: str, config: Mapping[str, Any]) -> bool:
    """Whether a tensor belongs to a block after the model's layers (the MTP head the converter appends)."""
    parts = gguf_name.split(".")
    return parts[0] == "blk" and int(parts[1]) >= config["num_hidden_layers"]


def from_float32(hf: str) -> bool:
    """Whether to_model_layout computes with the tensor's values (A), which it wants in float32."""
    return hf.endswith(".A_log")


def to_model_layout(hf: str, values: mx.array) -> mx.array:
    """A dense tensor of the file as models/qwen3_5 holds it: A back to A_log, the conv [C, K, 1], the shared
    expert's gate [1, H] (llama.cpp reads it as a vector)."""
    if hf.endswith(".A_log"):
        a = np.array(values, dtype=np.float64)
        if not (a < 0).all():
            raise ModelLoadError(f"GGUF {hf.rsplit('.', 2)[0]} ssm_a holds a value that is not negative "
                                 "(-exp(A_log) always is)")
        return mx.array(np.log(-a).astype(np.float32))
    if hf.endswith(".conv1d.weight") and values.ndim == 2:
        return values[:, :, None]
    if hf.endswith(".shared_expert_gate.weight") and values.ndim == 1:
        return values[None, :]
    return values
