"""GGUF metadata to a Hugging Face config dict (transformers 4 layout), for `loading.config.normalize_config`.

Pure functions over the metadata dict, the tensors' names and shapes, and the values of `rope_freqs.weight`.
Keys are llama.cpp's (`<arch>.embedding_length`, ...); what llama.cpp hard-codes per architecture instead of
storing is filled in from the same facts here (see `_gemma3`, `_gpt_oss`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf import deepseek2, gemma4, nemotron_h, qwen35
from mlxd.loading.gguf.common import token_ids, vocab_size
from mlxd.loading.gguf.deepseek2 import DEEPSEEK2, mla_config
from mlxd.loading.gguf.names import GPT_OSS

# general.architecture -> Hugging Face model_type (a module of mlxd.models).
# Mistral 7B and Nemo files say "llama"; Mistral Small 3.x text models are "mistral3" (llama.cpp's and Ollama's
# converters) or "mistral" (Ollama's earlier one).
ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "mistral3": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen3moe": "qwen3_moe",
    "gemma3": "gemma3_text",
    GPT_OSS: "gpt_oss",
    DEEPSEEK2: deepseek2.MODEL_TYPE,
    gemma4.ARCH: gemma4.MODEL_TYPE,
    **dict.fromkeys(nemotron_h.ARCHS, nemotron_h.MODEL_TYPE),
    **qwen35.MODEL_TYPES,
}
# Architectures that hold a MoE model when <arch>.expert_count is set: llama.cpp writes Mixtral as "llama" (its
# converter's LlamaModel takes MixtralForCausalLM and its llama graph routes where a layer has ffn_gate_inp).
_WITH_EXPERTS = {"llama": "mixtral"}

# "<arch>.<key>" -> config name: required, then optional.
_REQUIRED = {
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
}
_OPTIONAL = {
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "context_length": "max_position_embeddings",
    "rope.freq_base": "rope_theta",
    "attention.sliding_window": "sliding_window",
    "final_logit_softcapping": "final_logit_softcapping",
    "attn_logit_softcapping": "attn_logit_softcapping",
}
# llama.cpp's rope.scaling.type -> transformers' rope type; "none" (or Ollama's "") means no scaling.
_ROPE_SCALING = {"linear": "linear", "yarn": "yarn"}
_NO_ROPE_SCALING = ("none", "")
# llama.cpp's YaRN keys -> transformers' rope entry names (absent: both default to llama.cpp's 32 and 1).
_YARN_KEYS = {"rope.scaling.yarn_beta_fast": "beta_fast", "rope.scaling.yarn_beta_slow": "beta_slow"}
# YaRN keys whose arithmetic differs from transformers' (a ramp mixed by ext_factor, DeepSeek's log multiplier),
# with the value that leaves llama.cpp's YaRN as transformers' is (a negative ext_factor reads as 1); another value
# is refused, not ignored. yarn_attn_factor is refused whatever its value: llama.cpp's architectures read it as a
# factor on YaRN's attention scale or as that whole scale, and the file does not say which.
_YARN_NEUTRAL = {"rope.scaling.yarn_ext_factor": 1.0, "rope.scaling.yarn_log_multiplier": 0.0}
_YARN_ATTN_FACTOR = "rope.scaling.yarn_attn_factor"
# Keys whose math the model files lack (Llama 4 / Ministral 3 attention temperature): refused, not ignored.
_REFUSED = {
    "attention.temperature_scale": "attention temperature scaling",
    "rope.scaling_beta": "attention temperature scaling",
}
# The rope type (mlxd.models.rope) that takes rope_freqs.weight's per-pair factors.
FREQ_FACTORS_ROPE = "freq_factors"


def architecture(metadata: Mapping[str, Any]) -> str:
    """general.architecture, checked against the architectures mlxd serves."""
    arch = metadata.get("general.architecture")
    if not arch:
        raise ModelLoadError("GGUF file has no general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    return arch


def _scalar(metadata: Mapping[str, Any], key: str) -> Any:
    value = metadata[key]
    if isinstance(value, list):
        # Per-layer values (e.g. a head count per layer) describe models whose layers differ in shape.
        raise ModelLoadError(f"GGUF key {key} holds one value per layer, which mlxd does not support")
    return value


def _rope_scaling(metadata: Mapping[str, Any], arch: str) -> dict[str, Any] | None:
    kind = metadata.get(f"{arch}.rope.scaling.type", "none")
    if kind in _NO_ROPE_SCALING:
        return None
    if kind not in _ROPE_SCALING:
        raise ModelLoadError(f"unsupported GGUF rope scaling {kind!r}")
    factor = float(metadata[f"{arch}.rope.scaling.factor"])
    scaling: dict[str, Any] = {"rope_type": _ROPE_SCALING[kind], "factor": factor}
    original = metadata.get(f"{arch}.rope.scaling.original_context_length")
    if original:
        scaling["original_max_position_embeddings"] = int(original)
    if kind == "yarn":
        _yarn(metadata, arch, scaling)
    return scaling


def _yarn(metadata: Mapping[str, Any], arch: str, scaling: dict[str, Any]) -> None:
    for key, name in _YARN_KEYS.items():
        if f"{arch}.{key}" in metadata:
            scaling[name] = float(_scalar(metadata, f"{arch}.{key}"))
    for key, neutral in _YARN_NEUTRAL.items():
        value = metadata.get(f"{arch}.{key}")
        if value is None or (key.endswith("ext_factor") and value < 0):
            continue
        if float(value) != neutral:
            raise ModelLoadError(f"GGUF key {arch}.{key} = {value} asks for YaRN arithmetic mlxd does not support")
    if f"{arch}.{_YARN_ATTN_FACTOR}" in metadata:
        raise ModelLoadError(f"GGUF key {arch}.{_YARN_ATTN_FACTOR} gives YaRN's attention scale in a form mlxd "
                             "cannot tell apart (a factor or the whole scale)")


def _head_dim(metadata: Mapping[str, Any], arch: str, config: dict[str, Any]) -> int:
    """key_length, else llama.cpp's default (embedding / heads); a zero (Ollama writes one) counts as missing.
    Always set, so that Qwen3's own default (128) never stands in for a missing key."""
    key, value = (int(_scalar(metadata, f"{arch}.attention.{name}")) if f"{arch}.attention.{name}" in metadata else 0
                  for name in ("key_length", "value_length"))
    head_dim = key or config["hidden_size"] // config["num_attention_heads"]
    if value and value != head_dim:
        raise ModelLoadError(f"GGUF {arch}.attention.value_length {value} differs from the key length {head_dim}, "
                             "which mlxd does not support")
    return head_dim


def _freq_factors(config: dict[str, Any], factors: Sequence[float]) -> dict[str, Any]:
    """rope_freqs.weight as a rope entry: one factor per rotary pair, each multiplying the pair's period
    (llama.cpp divides the frequency by it); a linear scaling factor multiplies every period on top."""
    pairs = config["head_dim"] // 2
    if len(factors) != pairs:
        raise ModelLoadError(f"GGUF rope_freqs.weight has {len(factors)} values; heads of {config['head_dim']} "
                             f"have {pairs} rotary pairs")
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise ModelLoadError("GGUF rope_freqs.weight holds a factor that is not a positive number")
    scaling = config.get("rope_scaling")
    if scaling is not None and scaling["rope_type"] != "linear":
        raise ModelLoadError(f"GGUF file has rope_freqs.weight and {scaling['rope_type']} rope scaling together, "
                             "which mlxd does not support")
    linear = scaling["factor"] if scaling else 1.0
    return {"rope_type": FREQ_FACTORS_ROPE, "freq_factors": [float(f) * linear for f in factors]}


def _count(metadata: Mapping[str, Any], key: str) -> int:
    """The integer `key` holds, 0 when the file lacks it."""
    return int(_scalar(metadata, key)) if key in metadata else 0


def _model_type(metadata: Mapping[str, Any], arch: str) -> str:
    if arch in _WITH_EXPERTS and _count(metadata, f"{arch}.expert_count"):
        return _WITH_EXPERTS[arch]
    return ARCHITECTURES[arch]


def _experts(metadata: Mapping[str, Any], arch: str, config: dict[str, Any],
             tensor_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Routed experts as llama.cpp reads them for `llama` and `qwen3moe`: expert_count experts, expert_used_count
    per token, softmax over all experts with the kept weights renormalized (both graphs hard-code it, so Qwen3-MoE's
    norm_topk_prob is true), Mixtral's experts feed_forward_length wide, Qwen3-MoE's expert_feed_forward_length
    (else, as llama.cpp, feed_forward_length / expert_used_count)."""
    count, used = _count(metadata, f"{arch}.expert_count"), _count(metadata, f"{arch}.expert_used_count")
    if not count or not used:
        raise ModelLoadError(f"GGUF file lacks {arch}.{'expert_used_count' if count else 'expert_count'} "
                             f"(a {config['model_type']} model routes to experts)")
    config["num_experts_per_tok"] = used
    if config["model_type"] == "mixtral":
        config["num_local_experts"] = count
        return
    config["num_experts"] = count
    width = _count(metadata, f"{arch}.expert_feed_forward_length")
    config["moe_intermediate_size"] = width or config["intermediate_size"] // used
    config["norm_topk_prob"] = True
    # llama.cpp's qwen3moe wants experts in every layer; a layer without a router here holds a dense MLP
    # (ffn_gate/ffn_up/ffn_down, feed_forward_length wide), as Qwen3-MoE's mlp_only_layers.
    config["decoder_sparse_step"] = 1
    config["mlp_only_layers"] = [i for i in range(config["num_hidden_layers"])
                                 if f"blk.{i}.ffn_gate_inp.weight" not in tensor_shapes]


def _mistral(config: dict[str, Any]) -> None:
    """A window only where the file gives one (transformers' MistralConfig would default to 4096)."""
    config.setdefault("sliding_window", None)


def _gemma3(config: dict[str, Any]) -> None:
    """What llama.cpp hard-codes for gemma3: five sliding layers then one full, local rope base 10000, and
    attention scaled by head_dim, except the 27B (62 layers) which scales by hidden_size / heads."""
    config["sliding_window_pattern"] = 6
    config["rope_local_base_freq"] = 10000.0
    config.setdefault("rope_theta", 1000000.0)
    head_dim = config["head_dim"]
    wide = config["num_hidden_layers"] == 62
    config["query_pre_attn_scalar"] = config["hidden_size"] // config["num_attention_heads"] if wide else head_dim


def _gpt_oss(metadata: Mapping[str, Any], arch: str, config: dict[str, Any]) -> None:
    """What llama.cpp's gpt-oss loader reads (it requires each key) or hard-codes.

    - Experts: expert_count of them, expert_used_count per token, expert_feed_forward_length wide (the converter
      writes intermediate_size there and in feed_forward_length).
    - A window of attention.sliding_window keys on the even layers, full attention on the odd ones: its
      set_swa_pattern(2), which is also GptOssConfig's default.
    - The clamped SwiGLU's limit 7 and alpha 1.702: constants of its swiglu_oai op, transformers' defaults.
    - YaRN's correction range unrounded. The published configs say `truncate: false` (OpenAI's reference never
      rounds), which the converter cannot store; ggml rounds it outwards for every model. mlxd computes the model
      as its reference does, so a GGUF file gives its Hugging Face folder's logits (rounding would move the parity
      fixture's by 1.48: tests/fixtures/parity/MOE_NOTES.md, section 5).
    """
    keys = {"expert_count": "num_local_experts", "expert_used_count": "num_experts_per_tok",
            "expert_feed_forward_length": "intermediate_size", "attention.sliding_window": "sliding_window"}
    for key, name in keys.items():
        if not _count(metadata, f"{arch}.{key}"):
            raise ModelLoadError(f"GGUF file lacks {arch}.{key} (llama.cpp's gpt-oss requires it)")
        config[name] = _count(metadata, f"{arch}.{key}")
    config["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention"
                             for i in range(config["num_hidden_layers"])]
    config["swiglu_limit"], config["swiglu_alpha"] = 7.0, 1.702
    if config.get("rope_scaling", {}).get("rope_type") == "yarn":
        config["rope_scaling"]["truncate"] = False


def hf_config(metadata: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]],
              rope_factors: Sequence[float] | None = None) -> dict[str, Any]:
    """The config.json a Hugging Face checkpoint of this model would carry (as far as inference needs it).

    `rope_factors` are the values of the file's rope_freqs.weight (Llama 3.1+ carry their rope scaling so).
    """
    arch = architecture(metadata)
    if arch == gemma4.ARCH:  # keys per layer and per layer kind, read by its own module
        return gemma4.gemma4_config(metadata, tensor_shapes, rope_factors)
    if arch in nemotron_h.ARCHS:  # layer kinds and widths from the tensors, by its own module
        return nemotron_h.nemotron_config(metadata, tensor_shapes)
    if arch in qwen35.MODEL_TYPES:  # layer kinds and DeltaNet sizes, read by its own module
        return qwen35.qwen35_config(metadata, tensor_shapes)
    for key, what in _REFUSED.items():
        if f"{arch}.{key}" in metadata:
            raise ModelLoadError(f"GGUF key {arch}.{key} asks for {what}, which mlxd does not support")
    model_type = _model_type(metadata, arch)
    config: dict[str, Any] = {"model_type": model_type}
    for key, name in _REQUIRED.items():
        if f"{arch}.{key}" not in metadata:
            raise ModelLoadError(f"GGUF file lacks {arch}.{key}")
        config[name] = int(_scalar(metadata, f"{arch}.{key}"))
    for key, name in _OPTIONAL.items():
        if f"{arch}.{key}" in metadata:
            config[name] = _scalar(metadata, f"{arch}.{key}")
    if arch != DEEPSEEK2:  # its key and value lengths are the latent's (deepseek2.py)
        config["head_dim"] = _head_dim(metadata, arch, config)
    if "rope_theta" in config:
        config["rope_theta"] = float(config["rope_theta"])
    scaling = _rope_scaling(metadata, arch)
    if scaling is not None:
        config["rope_scaling"] = scaling
    if rope_factors is not None:
        config["rope_scaling"] = _freq_factors(config, rope_factors)
    config["vocab_size"] = vocab_size(tensor_shapes)
    config["tie_word_embeddings"] = "output.weight" not in tensor_shapes
    config["attention_bias"] = "blk.0.attn_q.bias" in tensor_shapes
    config.update(token_ids(metadata))
    if model_type == "gemma3_text":
        _gemma3(config)
    if model_type == "mistral":
        _mistral(config)
    if model_type in ("mixtral", "qwen3_moe"):
        _experts(metadata, arch, config, tensor_shapes)
    if model_type == "gpt_oss":
        _gpt_oss(metadata, arch, config)
    if arch == DEEPSEEK2:
        mla_config(metadata, config, tensor_shapes)
    return config
