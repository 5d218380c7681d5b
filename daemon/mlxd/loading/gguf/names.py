"""GGUF tensor names to Hugging Face names, and what llama.cpp's converter did to the values on the way.

Pure functions. llama.cpp's converter (convert_hf_to_gguf.py) renames every tensor, permutes the q/k rows of
`llama` and Mistral models for its interleaved rotary embedding (Qwen and Gemma use the rotate-half one; so
Mixtral, written as `llama`, is permuted and Qwen3-MoE is not), and adds one to Gemma's norm weights (llama.cpp
scales by w, Hugging Face's Gemma by 1 + w); each is undone here. It also stacks a MoE layer's per-expert
matrices into one tensor per projection, [E, out, in] as `SwitchLinear` holds them (models/moe.py), so those
take the stacked layers' names.

gpt-oss's names are spelled by the `gguf` package's own tables (TENSOR_NAMES), the ones its converter writes with;
tests/gguf check that every tensor of MODEL_TENSORS[GPT_OSS] has a name here. Ollama's gpt-oss files ("gptoss")
use names of their own, which no table of the package holds: ollama.py renames them to these before they get here.

Qwen3.5 (qwen35, qwen35moe) has its table and value changes in qwen35.py: A stored as -exp(A_log), the conv
without its middle axis, the folded norms (stored as mlxd holds them), the MTP head appended as extra blocks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import mlx.core as mx
import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf import gemma4, qwen35
from mlxd.loading.gguf.common import layer_base as _base
from mlxd.loading.gguf.deepseek2 import BARE_PARAMETERS as _DEEPSEEK2_PARAMETERS
from mlxd.loading.gguf.deepseek2 import DEEPSEEK2
from mlxd.loading.gguf.deepseek2 import LAYER_NAMES as _DEEPSEEK2_LAYER
from mlxd.loading.gguf.nemotron_h import ARCHS as _NEMOTRON_ARCHS
from mlxd.loading.gguf.nemotron_h import BARE_PARAMETERS as _NEMOTRON_PARAMETERS
from mlxd.loading.gguf.nemotron_h import GLOBAL_NAMES as _NEMOTRON_GLOBAL
from mlxd.loading.gguf.nemotron_h import LAYER_NAMES as _NEMOTRON_LAYER
from mlxd.loading.gguf.nemotron_h import LAYERS as _NEMOTRON_LAYERS

_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    # Gemma 4's per-layer embeddings (PLE).
    "per_layer_token_embd": "model.embed_tokens_per_layer",
    "per_layer_model_proj": "model.per_layer_model_projection",
    "per_layer_proj_norm": "model.per_layer_projection_norm",
}
_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# A MoE layer's router and its experts' stacked projections, under the MoE module of the model type
# (_MOE_MODULE): the names of models/moe.py's SparseMoe, which each model's sanitize leaves as they are.
_EXPERTS = {
    "ffn_gate_inp": "gate",
    "ffn_gate_exps": "switch_mlp.gate_proj",
    "ffn_up_exps": "switch_mlp.up_proj",
    "ffn_down_exps": "switch_mlp.down_proj",
}
_MOE_MODULE = {"qwen3_moe": "mlp", "mixtral": "block_sparse_moe"}
# Per GGUF architecture, changes to _LAYER: Gemma norms before and after both attention and MLP.
_LAYER_OVERRIDES: dict[str, dict[str, str]] = {
    "gemma3": {
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
}

GPT_OSS = MODEL_ARCH_NAMES[MODEL_ARCH.GPT_OSS]  # "gpt-oss", general.architecture of its files


# gpt-oss's layer tensors under models/gpt_oss.py's names: the norm after attention is `post_attention_norm`
# (llama.cpp's ATTN_POST_NORM, which its graph applies before the experts), the router is `router`, and the
# converter splits transformers' interleaved gate_up experts into separate gate and up tensors.
_GPT_OSS_LAYER = {
    _base(MODEL_TENSOR.ATTN_NORM): "input_layernorm",
    _base(MODEL_TENSOR.ATTN_POST_NORM): "post_attention_layernorm",
    _base(MODEL_TENSOR.ATTN_Q): "self_attn.q_proj",
    _base(MODEL_TENSOR.ATTN_K): "self_attn.k_proj",
    _base(MODEL_TENSOR.ATTN_V): "self_attn.v_proj",
    _base(MODEL_TENSOR.ATTN_OUT): "self_attn.o_proj",
    _base(MODEL_TENSOR.ATTN_SINKS): "self_attn.sinks",
    _base(MODEL_TENSOR.FFN_GATE_INP): "mlp.router",
    _base(MODEL_TENSOR.FFN_GATE_EXP): "mlp.switch_mlp.gate_proj",
    _base(MODEL_TENSOR.FFN_UP_EXP): "mlp.switch_mlp.up_proj",
    _base(MODEL_TENSOR.FFN_DOWN_EXP): "mlp.switch_mlp.down_proj",
}
GEMMA4 = gemma4.ARCH
# Gemma 4's layer tensors under the checkpoint's names (models/gemma4's sanitize places them): norms around
# attention, MLP, the experts beside it and the per-layer input branch; the router; the layer's output scale. The
# experts' two stacked tensors (gate and up as one, [E, 2I, H]) take the model's own names, so that a quantized
# file's codes stay quantized.
_GEMMA4_LAYER = {
    _base(MODEL_TENSOR.ATTN_NORM): "input_layernorm",
    _base(MODEL_TENSOR.ATTN_POST_NORM): "post_attention_layernorm",
    **{k: v for k, v in _LAYER.items() if k.startswith(("attn_", "ffn_gate", "ffn_up", "ffn_down"))},
    _base(MODEL_TENSOR.FFN_PRE_NORM): "pre_feedforward_layernorm",
    _base(MODEL_TENSOR.FFN_POST_NORM): "post_feedforward_layernorm",
    _base(MODEL_TENSOR.FFN_PRE_NORM_2): "pre_feedforward_layernorm_2",
    _base(MODEL_TENSOR.FFN_POST_NORM_1): "post_feedforward_layernorm_1",
    _base(MODEL_TENSOR.FFN_POST_NORM_2): "post_feedforward_layernorm_2",
    _base(MODEL_TENSOR.FFN_GATE_INP): "router.proj",
    _base(MODEL_TENSOR.FFN_GATE_UP_EXP): "moe.switch_mlp.gate_up_proj",
    _base(MODEL_TENSOR.FFN_DOWN_EXP): "moe.switch_mlp.down_proj",
    _base(MODEL_TENSOR.LAYER_OUT_SCALE): "layer_scalar",
    _base(MODEL_TENSOR.PER_LAYER_INP_GATE): "per_layer_input_gate",
    _base(MODEL_TENSOR.PER_LAYER_PROJ): "per_layer_projection",
    _base(MODEL_TENSOR.PER_LAYER_POST_NORM): "post_per_layer_input_norm",
}
# Architectures whose layer names are a table of their own rather than changes to _LAYER.
_LAYER_TABLES = {GPT_OSS: _GPT_OSS_LAYER, DEEPSEEK2: _DEEPSEEK2_LAYER, GEMMA4: _GEMMA4_LAYER,
                 **dict.fromkeys(_NEMOTRON_ARCHS, _NEMOTRON_LAYER), **dict.fromkeys(qwen35.ARCHS, qwen35.LAYER_NAMES)}
# Architectures whose model holds its layers and global tensors under other names than model.layers.N / model.*.
_LAYER_PREFIXES = dict.fromkeys(_NEMOTRON_ARCHS, _NEMOTRON_LAYERS)
_GLOBAL_TABLES = dict.fromkeys(_NEMOTRON_ARCHS, _NEMOTRON_GLOBAL)
# Tensors that are a bare parameter, not a layer's weight, per architecture, and the suffix llama.cpp's converter
# appended to the name: ".weight" to gpt-oss's `self_attn.sinks` (one logit per head) and Gemma 4's layer scale,
# ".bias" to deepseek2's correction biases and Qwen3.5's dt_bias; none ("") to Mamba-2's A and D and to Qwen3.5's A
# ("blk.N.ssm_a").
_PARAMETERS: dict[str, dict[str, str]] = {
    GPT_OSS: {_base(MODEL_TENSOR.ATTN_SINKS): "weight"},
    GEMMA4: {_base(MODEL_TENSOR.LAYER_OUT_SCALE): "weight"},
    DEEPSEEK2: dict(_DEEPSEEK2_PARAMETERS),
    **dict.fromkeys(_NEMOTRON_ARCHS, _NEMOTRON_PARAMETERS),
    **dict.fromkeys(qwen35.ARCHS, qwen35.BARE_PARAMETERS),
}
# `blk.N.<base>.scale` tensors: Gemma 4's router's input scale and its per-expert output scale, which llama.cpp's
# converter files under the router and the experts' down projection.
_SCALES = {GEMMA4: {_base(MODEL_TENSOR.FFN_GATE_INP): "router.scale",
                    _base(MODEL_TENSOR.FFN_DOWN_EXP): "router.per_expert_scale"}}

# Architectures whose q/k rows the converters permuted (llama.cpp's LlamaModel and its Mistral subclasses,
# Ollama's mistral converters); the others use neox-style rope.
_PERMUTED_QK = {"llama", "mistral", "mistral3"}
# Architectures whose norm weights were stored plus one.
_NORM_PLUS_ONE = {"gemma3"}

# Not a weight: per-pair rotary factors, read into the config (see config.hf_config).
ROPE_FREQS = "rope_freqs.weight"

_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)(?:\.(weight|bias|scale))?")
_GLOBAL_NAME = re.compile(r"(\w+)\.(weight|bias)")


def hf_name(gguf_name: str, arch: str, model_type: str = "") -> str:
    """The Hugging Face name of a GGUF tensor of architecture `arch`, held by a `model_type` model (expert tensors
    have names only in MoE models); ModelLoadError naming it when it has none."""
    layer = _LAYER_NAME.fullmatch(gguf_name)
    if layer:
        index, base, kind = layer.groups()
        prefix = _LAYER_PREFIXES.get(arch, "model.layers")
        table = dict(_LAYER_TABLES.get(arch) or {**_LAYER, **_LAYER_OVERRIDES.get(arch, {})})
        if model_type in _MOE_MODULE:
            table |= {name: f"{_MOE_MODULE[model_type]}.{ours}" for name, ours in _EXPERTS.items()}
        parameters = _PARAMETERS.get(arch, {})
        if kind == "scale":
            if base in _SCALES.get(arch, {}):
                return f"{prefix}.{index}.{_SCALES[arch][base]}"
        elif base in parameters and base in table:
            if (kind or "") == parameters[base]:
                return f"{prefix}.{index}.{table[base]}"
        elif base in table and kind is not None:
            return f"{prefix}.{index}.{table[base]}.{kind}"
    else:
        glob = _GLOBAL_NAME.fullmatch(gguf_name)
        global_names = _GLOBAL_TABLES.get(arch, _GLOBAL)
        if glob and glob.group(1) in global_names:
            return f"{global_names[glob.group(1)]}.{glob.group(2)}"
    raise ModelLoadError(f"GGUF tensor {gguf_name} has no counterpart in the {arch} model of mlxd")


def unpermute_order(n_rows: int, n_heads: int) -> np.ndarray:
    """Row indices that take llama.cpp's q/k layout back to Hugging Face's.

    Per head llama.cpp stores rows (i, half) where Hugging Face has (half, i): rotate-half pairs rows i and
    i + head_dim/2, the interleaved rope llama.cpp uses pairs rows 2i and 2i+1.
    """
    head_dim = n_rows // n_heads
    if n_heads * head_dim != n_rows or head_dim % 2:
        raise ModelLoadError(f"{n_rows} q/k rows do not split into {n_heads} heads of even size")
    return np.arange(n_rows).reshape(n_heads, head_dim // 2, 2).swapaxes(1, 2).reshape(-1)


def qk_heads(hf: str, arch: str, n_heads: int, n_kv_heads: int) -> int | None:
    """The head count to unpermute the rows of `hf` with, None when its rows are as Hugging Face has them."""
    if arch not in _PERMUTED_QK:
        return None
    if ".self_attn.q_proj." in hf:
        return n_heads
    if ".self_attn.k_proj." in hf:
        return n_kv_heads
    return None


def value_offset(hf: str, arch: str) -> float:
    """What to add to a tensor's values to undo the converter's shift (non-zero only for Gemma's norms)."""
    return -1.0 if arch in _NORM_PLUS_ONE and hf.endswith("norm.weight") else 0.0


def model_layout(hf: str, arch: str, values: mx.array) -> mx.array:
    """A dense tensor in the layout of the model that holds it (Qwen3.5's A, conv and shared-expert gate)."""
    return qwen35.to_model_layout(hf, values) if arch in qwen35.ARCHS else values


def needs_float32(hf: str, arch: str) -> bool:
    """Whether a dense tensor is to be read in float32 before model_layout or the offset change its values."""
    return value_offset(hf, arch) != 0.0 or (arch in qwen35.ARCHS and qwen35.from_float32(hf))


def beyond_the_model(gguf_name: str, arch: str, config: Mapping[str, Any]) -> bool:
    """Whether a tensor is of a block after the model's layers: Qwen3.5's MTP head, which mlxd does not run."""
    return arch in qwen35.ARCHS and qwen35.beyond_the_model(gguf_name, config)
