"""Pure functions over config.json / generation_config.json dicts.

Checkpoints come in two layouts: transformers 5 (`rope_parameters`, `layer_types`, `dtype`) and transformers 4
(`rope_theta`, `rope_scaling`, `rope_local_base_freq`, `sliding_window_pattern`, `torch_dtype`). Models read
only the transformers 5 layout; `normalize_config` turns either into it.
"""

from __future__ import annotations

from typing import Any

from mlxd.errors import ModelLoadError
from mlxd.loading import mxfp4

# model_type -> default rope theta of its sliding layers, for models whose rope differs per layer type.
# In the transformers 4 layout that theta is `rope_local_base_freq`; rope_theta/rope_scaling are the full layers'.
_PER_LAYER_TYPE_ROPE: dict[str, float] = {
    "gemma3_text": 10000.0,
    "gemma4_text": 10000.0,
}

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length", "n_ctx")

DTYPES = ("float32", "float16", "bfloat16")


def _normalize_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """One rope entry with its type spelled `rope_type` (old configs say `type`) and a float theta."""
    entry = dict(entry)
    rope_type = entry.pop("rope_type", None) or entry.pop("type", None) or "default"
    entry.pop("type", None)
    if "rope_theta" in entry:
        entry["rope_theta"] = float(entry["rope_theta"])
    return {"rope_type": rope_type, **entry}


def _rope_entry(theta: float | None, scaling: dict[str, Any] | None) -> dict[str, Any]:
    """One transformers 5 rope entry from a transformers 4 theta and `rope_scaling` block. Without a theta the entry
    has none: the architecture's default applies (gpt-oss's is 150000, make_rope's 10000)."""
    return _normalize_entry({**(scaling or {}), **({} if theta is None else {"rope_theta": theta})})


def _rope_parameters(config: dict[str, Any]) -> dict[str, Any] | None:
    """The transformers 5 `rope_parameters` for `config`, or None to let the model's default stand."""
    per_layer_local = _PER_LAYER_TYPE_ROPE.get(config.get("model_type", ""))
    params = config.get("rope_parameters")
    if params:
        if per_layer_local is not None and "full_attention" not in params:
            # A flat entry on a per-layer-type model describes the full layers (the v4 meaning of rope_theta).
            local = config.get("rope_local_base_freq", per_layer_local)
            return {"sliding_attention": _rope_entry(local, None), "full_attention": _normalize_entry(params)}
        if per_layer_local is not None:
            return {kind: _normalize_entry(entry) for kind, entry in params.items()}
        return _normalize_entry(params)
    theta, scaling = config.get("rope_theta"), config.get("rope_scaling")
    if per_layer_local is not None:
        if theta is None and scaling is None and "rope_local_base_freq" not in config:
            return None
        return {
            "sliding_attention": _rope_entry(config.get("rope_local_base_freq", per_layer_local), None),
            "full_attention": _rope_entry(1000000.0 if theta is None else theta, scaling),
        }
    if theta is None and scaling is None:
        return None
    return _rope_entry(theta, scaling)


def _layer_types(config: dict[str, Any]) -> list[str] | None:
    """`layer_types`, or derived from v4's `sliding_window_pattern` (every pattern-th layer is full)."""
    if config.get("layer_types"):
        return list(config["layer_types"])
    pattern = config.get("sliding_window_pattern")
    n_layers = config.get("num_hidden_layers")
    if not pattern or not n_layers:
        return None
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of `config` in the transformers 5 layout: `rope_parameters`, `layer_types`, `dtype` set when known."""
    out = dict(config)
    for key in ("rope_theta", "rope_scaling", "rope_local_base_freq", "sliding_window_pattern", "torch_dtype"):
        out.pop(key, None)
    rope = _rope_parameters(config)
    if rope is not None:
        out["rope_parameters"] = rope
    else:
        out.pop("rope_parameters", None)
    layer_types = _layer_types(config)
    if layer_types is not None:
        out["layer_types"] = layer_types
    out["dtype"] = config_dtype(config)
    if isinstance(config.get("text_config"), dict):
        # A vision-language model's decoder config comes in either layout too.
        out["text_config"] = normalize_config(config["text_config"])
    return out


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config: `text_config` of a vision-language model, else the config itself."""
    return config.get("text_config") or config


def config_dtype(config: dict[str, Any]) -> str | None:
    """The checkpoint dtype the config declares (`dtype`, or v4's `torch_dtype`), None if it declares none."""
    for cfg in (config, text_config(config)):
        value = cfg.get("dtype") or cfg.get("torch_dtype")
        if value:
            return str(value).removeprefix("torch.")
    return None


def context_length(config: dict[str, Any]) -> int | None:
    """The longest sequence the model was built for, None if the config does not say."""
    for cfg in (config, text_config(config)):
        for key in _CONTEXT_KEYS:
            if cfg.get(key):
                return int(cfg[key])
    return None


def quantization(config: dict[str, Any]) -> dict[str, Any] | None:
    """The MLX quantization block ({"group_size", "bits", optional "mode" and per-layer overrides}), or None.

    A Hugging Face `quant_method` MLX holds natively gives its MLX block, with `quant_method` kept to say where it
    came from: "mxfp4" (gpt-oss) is MLX's mxfp4 mode (loading/mxfp4.py). Other formats (GPTQ, AWQ,
    bitsandbytes, fp8...) are refused by name.
    """
    quant = config.get("quantization") or config.get("quantization_config")
    if not quant:
        return None
    method = quant.get("quant_method")
    if method is not None:
        if method == mxfp4.QUANT_METHOD:
            return {"quant_method": method, **mxfp4.MLX_QUANTIZATION}
        raise ModelLoadError(
            f"unsupported quantization method {method!r} (quantization_config.quant_method); loadable: MLX "
            f"quantization (group_size, bits) and {mxfp4.QUANT_METHOD!r}"
        )
    if "bits" not in quant or "group_size" not in quant:
        raise ModelLoadError(f"unsupported quantization block {sorted(quant)}: MLX's has group_size and bits")
    return dict(quant)


def layer_quantization(quant: dict[str, Any], path: str) -> dict[str, Any] | None:
    """to_quantized() arguments for the module at `path`: a per-layer override, the defaults, or None (kept float)."""
    override = quant.get(path)
    if override is False:
        return None
    source = override if isinstance(override, dict) else quant
    params = {"group_size": source["group_size"], "bits": source["bits"]}
    if "mode" in source:
        params["mode"] = source["mode"]
    return params


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def eos_token_ids(config: dict[str, Any], generation_config: dict[str, Any] | None = None) -> list[int]:
    """Every end-of-sequence id in config.json and generation_config.json, config's first, without repeats."""
    ids: list[int] = []
    for cfg in (config, text_config(config), generation_config or {}):
        for i in _as_ids(cfg.get("eos_token_id")):
            if i not in ids:
                ids.append(i)
    return ids


def bos_token_id(config: dict[str, Any], generation_config: dict[str, Any] | None = None) -> int | None:
    """The beginning-of-sequence id, generation_config.json taking precedence as it does in transformers."""
    for cfg in (generation_config or {}, config, text_config(config)):
        ids = _as_ids(cfg.get("bos_token_id"))
        if ids:
            return ids[0]
    return None
