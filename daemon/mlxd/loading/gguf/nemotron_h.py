"""llama.cpp's `nemotron_h` and `nemotron_h_moe` files (its NemotronHModel over GraniteHybridModel and Mamba2Model
in convert_hf_to_gguf.py) to a Hugging Face `nemotron_h` config and names (models/nemotron_h). Pure functions over
the metadata and the tensors' names and shapes.

What the converter writes, and how it is read back:
- The layer kinds are no key of their own (llama.cpp tells them by a zero head_count_kv or feed_forward_length per
  layer, and a MoE file writes its dense MLP layers' width nowhere): read here off each layer's tensors (ssm_in:
  Mamba-2, attn_q: attention, ffn_gate_inp: experts, ffn_up: relu² MLP), widths off their shapes.
- Mamba-2 sizes: ssm.inner_size (heads x head size), ssm.time_step_rank (the heads), ssm.state_size,
  ssm.group_count, ssm.conv_kernel. The step limits and the scan's chunk are not stored: transformers' defaults.
- Tensors: A_log as A = -exp(A_log) [H, 1] (`ssm_a`, no suffix), D as [H, 1] (`ssm_d`), dt_bias as `ssm_dt.bias`,
  the conv weight squeezed to [C, K], the gated norm's weight as [groups, I / groups]; the model's sanitize takes
  these back (A under the name `mixer.A`). The experts are stacked per projection, the routers' correction biases
  are `exp_probs_b.bias`. The attention's q/k rows are permuted per head as for llama's interleaved rope
  (GraniteHybridModel's undo_permute); the model has no rotary embedding, and one permutation of both q's and k's
  rows within each head leaves every score as it is, so they are read as stored.
- Expert keys: count, used count, width, shared width, shared count, weights norm and scale, group count; no
  group-used count (every Nemotron 3 has one group): absent, no group is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf.common import layer_base as _base
from mlxd.loading.gguf.common import token_ids

NEMOTRON_H = MODEL_ARCH_NAMES[MODEL_ARCH.NEMOTRON_H]
NEMOTRON_H_MOE = MODEL_ARCH_NAMES[MODEL_ARCH.NEMOTRON_H_MOE]
ARCHS = (NEMOTRON_H, NEMOTRON_H_MOE)
MODEL_TYPE = "nemotron_h"
LAYERS = "backbone.layers"


# Global tensors under the model's (backbone.*) names.
GLOBAL_NAMES = {"token_embd": "backbone.embeddings", "output_norm": "backbone.norm_f", "output": "lm_head"}
# Layer tensors under models/nemotron_h's names (below LAYERS.{N}).
LAYER_NAMES = {
    _base(MODEL_TENSOR.ATTN_NORM): "norm",
    _base(MODEL_TENSOR.SSM_IN): "mixer.in_proj",
    _base(MODEL_TENSOR.SSM_CONV1D): "mixer.conv1d",
    _base(MODEL_TENSOR.SSM_DT): "mixer.dt_bias",
    _base(MODEL_TENSOR.SSM_A): "mixer.A",
    _base(MODEL_TENSOR.SSM_D): "mixer.D",
    _base(MODEL_TENSOR.SSM_NORM): "mixer.norm",
    _base(MODEL_TENSOR.SSM_OUT): "mixer.out_proj",
    _base(MODEL_TENSOR.ATTN_Q): "mixer.q_proj",
    _base(MODEL_TENSOR.ATTN_K): "mixer.k_proj",
    _base(MODEL_TENSOR.ATTN_V): "mixer.v_proj",
    _base(MODEL_TENSOR.ATTN_OUT): "mixer.o_proj",
    _base(MODEL_TENSOR.FFN_UP): "mixer.up_proj",
    _base(MODEL_TENSOR.FFN_DOWN): "mixer.down_proj",
    _base(MODEL_TENSOR.FFN_GATE_INP): "mixer.gate",
    _base(MODEL_TENSOR.FFN_EXP_PROBS_B): "mixer.gate.e_score_correction_bias",
    _base(MODEL_TENSOR.FFN_UP_EXP): "mixer.switch_mlp.fc1",
    _base(MODEL_TENSOR.FFN_DOWN_EXP): "mixer.switch_mlp.fc2",
    _base(MODEL_TENSOR.FFN_UP_SHEXP): "mixer.shared_experts.up_proj",
    _base(MODEL_TENSOR.FFN_DOWN_SHEXP): "mixer.shared_experts.down_proj",
}
# Bare parameters, with the suffix the converter gave them ("": none).
BARE_PARAMETERS = {_base(MODEL_TENSOR.SSM_A): "", _base(MODEL_TENSOR.SSM_D): "", _base(MODEL_TENSOR.SSM_DT): "bias",
                   _base(MODEL_TENSOR.FFN_EXP_PROBS_B): "bias"}
# What each layer kind's first tensor is, and the kind's character in hybrid_override_pattern.
_KINDS = {"ssm_in": "M", "attn_q": "*", "ffn_gate_inp": "E", "ffn_up": "-"}


def _int(metadata: Mapping[str, Any], arch: str, key: str, default: int | None = None) -> int:
    value = metadata.get(f"{arch}.{key}", default)
    if value is None:
        raise ModelLoadError(f"GGUF file lacks {arch}.{key}")
    if isinstance(value, list):  # per layer: the value of the layers it applies to (the others say 0)
        value = max(value, default=0)
    return int(value)


def _pattern(n_layers: int, tensor_shapes: Mapping[str, tuple[int, ...]]) -> str:
    kinds = []
    for i in range(n_layers):
        found = [kind for base, kind in _KINDS.items() if f"blk.{i}.{base}.weight" in tensor_shapes]
        if len(found) != 1:
            raise ModelLoadError(f"GGUF layer {i} holds {'no' if not found else 'more than one'} Nemotron-H mixer")
        kinds.append(found[0])
    return "".join(kinds)


def _width(tensor_shapes: Mapping[str, tuple[int, ...]], pattern: str, kind: str, base: str) -> int | None:
    """The output width of `base` in the first layer of `kind`, None without such a layer or tensor."""
    shape = tensor_shapes.get(f"blk.{pattern.find(kind)}.{base}.weight")
    return None if kind not in pattern or shape is None else int(shape[0])


def nemotron_config(metadata: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    arch = str(metadata["general.architecture"])
    n_layers = _int(metadata, arch, "block_count")
    pattern = _pattern(n_layers, tensor_shapes)
    heads = _int(metadata, arch, "attention.head_count")
    mamba_heads = _int(metadata, arch, "ssm.time_step_rank")
    config: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "hybrid_override_pattern": pattern,
        "num_hidden_layers": n_layers,
        "hidden_size": _int(metadata, arch, "embedding_length"),
        "vocab_size": int(tensor_shapes["token_embd.weight"][0]),
        "tie_word_embeddings": "output.weight" not in tensor_shapes,
        "layer_norm_epsilon": float(metadata.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "num_attention_heads": heads,
        "num_key_value_heads": _int(metadata, arch, "attention.head_count_kv", heads),
        "head_dim": _int(metadata, arch, "attention.key_length", 0) or None,
        "mamba_num_heads": mamba_heads,
        "mamba_head_dim": _int(metadata, arch, "ssm.inner_size") // mamba_heads,
        "ssm_state_size": _int(metadata, arch, "ssm.state_size"),
        "n_groups": _int(metadata, arch, "ssm.group_count"),
        "conv_kernel": _int(metadata, arch, "ssm.conv_kernel"),
        "use_conv_bias": f"blk.{pattern.find('M')}.ssm_conv1d.bias" in tensor_shapes,
    }
    if f"{arch}.context_length" in metadata:
        config["max_position_embeddings"] = _int(metadata, arch, "context_length")
    if (width := _width(tensor_shapes, pattern, "-", "ffn_up")) is not None:
        config["intermediate_size"] = width
    if "E" in pattern:
        groups = _int(metadata, arch, "expert_group_count", 1)
        experts = f"blk.{pattern.find('E')}.ffn_up_exps.weight"
        shared = _width(tensor_shapes, pattern, "E", "ffn_up_shexp")
        if experts not in tensor_shapes or shared is None:
            raise ModelLoadError("GGUF Nemotron-H MoE layers need routed experts (ffn_up_exps) and shared ones "
                                 "(ffn_up_shexp)")
        config.update(
            n_routed_experts=_int(metadata, arch, "expert_count"),
            num_experts_per_tok=_int(metadata, arch, "expert_used_count"),
            moe_intermediate_size=int(tensor_shapes[experts][1]),  # stacked [E, out, in]
            moe_shared_expert_intermediate_size=shared,
            n_group=groups,
            topk_group=_int(metadata, arch, "expert_group_used_count", groups),
            norm_topk_prob=bool(metadata.get(f"{arch}.expert_weights_norm", False)),
            routed_scaling_factor=float(metadata.get(f"{arch}.expert_weights_scale") or 1.0),
        )
        if f"blk.{pattern.find('E')}.ffn_latent_down.weight" in tensor_shapes:
            raise ModelLoadError("GGUF file has latent MoE projections (ffn_latent_down), which mlxd does not support")
    config.update(token_ids(metadata))
    return config
