"""GGUF metadata of llama.cpp's `gemma4` files to a Hugging Face `gemma4_text` config (models/gemma4).

llama.cpp's converter (its Gemma4Model, over Gemma3Model and TextModel) writes the layer kinds as one boolean per
layer (`attention.sliding_window_pattern`), the full layers' head size as `attention.key_length` and the sliding
layers' as `key_length_swa`, kv heads and MLP widths per layer where they differ (`attention.head_count_kv`, and
`feed_forward_length` doubled on KV-shared layers), `attention.shared_kv_layers`, the per-layer embeddings' width
(`embedding_length_per_layer_input`), both rope bases (`rope.freq_base`, `rope.freq_base_swa`), and the full layers'
proportional rope as per-pair factors in rope_freqs.weight (1 for a rotated pair, 1e30 for one left alone), which
the full layers alone use. K=V full layers are those written without attn_v.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf.common import token_ids, vocab_size

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.GEMMA4]  # "gemma4", general.architecture of its files
MODEL_TYPE = "gemma4_text"
SLIDING, FULL = "sliding_attention", "full_attention"


def _value(metadata: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = metadata.get(f"{ARCH}.{key}", default)
    if value is None:
        raise ModelLoadError(f"GGUF file lacks {ARCH}.{key}")
    return value


def _per_layer(metadata: Mapping[str, Any], key: str, n_layers: int, default: Any = None) -> list[Any]:
    """A key llama.cpp writes once, or once per layer where layers differ, as one value per layer."""
    value = _value(metadata, key, default)
    values = list(value) if isinstance(value, list) else [value] * n_layers
    if len(values) != n_layers:
        raise ModelLoadError(f"GGUF key {ARCH}.{key} has {len(values)} values for {n_layers} layers")
    return values


def _uniform(values: Sequence[Any], what: str) -> Any:
    if len(set(values)) > 1:
        raise ModelLoadError(f"GGUF {ARCH} file gives its {what} different values {sorted(set(values))}")
    return values[0]


def _mlp(widths: list[int], first_shared: int) -> tuple[int, bool]:
    """(intermediate_size, use_double_wide_mlp) from the per-layer MLP widths."""
    width = _uniform(widths[:first_shared] or widths, "unshared layers' feed_forward_length")
    shared = widths[first_shared:]
    if not shared or all(w == width for w in shared):
        return width, False
    if all(w == 2 * width for w in shared):
        return width, True
    raise ModelLoadError(f"GGUF {ARCH} KV-shared layers' feed_forward_length {shared} is neither {width} nor "
                         f"twice it")


def _rope(metadata: Mapping[str, Any], head_full: int, head_sliding: int,
          factors: Sequence[float] | None) -> dict[str, dict[str, Any]]:
    rotated_full = int(_value(metadata, "rope.dimension_count", head_full))
    rotated_sliding = int(_value(metadata, "rope.dimension_count_swa", head_sliding))
    if (rotated_full, rotated_sliding) != (head_full, head_sliding):
        raise ModelLoadError(f"GGUF {ARCH} rope over {rotated_full}/{rotated_sliding} of {head_full}/{head_sliding} "
                             "head dims: mlxd rotates whole heads (the full layers' pairs chosen by rope_freqs)")
    full: dict[str, Any] = {"rope_type": "default", "rope_theta": float(_value(metadata, "rope.freq_base"))}
    if factors is not None:
        if len(factors) != head_full // 2:
            raise ModelLoadError(f"GGUF rope_freqs.weight has {len(factors)} values for heads of {head_full}")
        full = {**full, "rope_type": "freq_factors", "freq_factors": [float(f) for f in factors]}
    sliding = {"rope_type": "default", "rope_theta": float(_value(metadata, "rope.freq_base_swa", 10_000.0))}
    return {SLIDING: sliding, FULL: full}


def _experts(metadata: Mapping[str, Any], config: dict[str, Any]) -> None:
    count = int(metadata.get(f"{ARCH}.expert_count") or 0)
    if not count:
        return
    config.update(enable_moe_block=True, num_experts=count, top_k_experts=int(_value(metadata, "expert_used_count")),
                  moe_intermediate_size=int(_value(metadata, "expert_feed_forward_length")))


def gemma4_config(metadata: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]],
                  rope_factors: Sequence[float] | None) -> dict[str, Any]:
    """The `gemma4_text` config.json of the model a gemma4 GGUF file holds."""
    n = int(_value(metadata, "block_count"))
    layer_types = [SLIDING if s else FULL for s in _per_layer(metadata, "attention.sliding_window_pattern", n)]
    shared = int(metadata.get(f"{ARCH}.attention.shared_kv_layers") or 0)
    head_full = int(_value(metadata, "attention.key_length"))
    head_sliding = int(_value(metadata, "attention.key_length_swa"))
    if (int(_value(metadata, "attention.value_length", head_full)),
            int(_value(metadata, "attention.value_length_swa", head_sliding))) != (head_full, head_sliding):
        raise ModelLoadError(f"GGUF {ARCH} value lengths differ from the key lengths, which mlxd does not support")
    kv_heads = [int(h) for h in _per_layer(metadata, "attention.head_count_kv", n)]
    sliding_layers = [i for i in range(n) if layer_types[i] == SLIDING] or list(range(n))
    widths = [int(w) for w in _per_layer(metadata, "feed_forward_length", n)]
    intermediate, double_wide = _mlp(widths, n - shared)
    unshared_full = [i for i in range(n - shared) if layer_types[i] == FULL]
    without_v = [f"blk.{i}.attn_v.weight" not in tensor_shapes for i in unshared_full]
    vocab = vocab_size(tensor_shapes)
    if "output.weight" in tensor_shapes:
        raise ModelLoadError(f"GGUF {ARCH} file has an output.weight: Gemma 4's head is its embeddings")
    ple = int(metadata.get(f"{ARCH}.embedding_length_per_layer_input") or 0)
    config: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "vocab_size": vocab,
        "hidden_size": int(_value(metadata, "embedding_length")),
        "num_hidden_layers": n,
        "intermediate_size": intermediate,
        "use_double_wide_mlp": double_wide,
        "num_attention_heads": int(_uniform(_per_layer(metadata, "attention.head_count", n), "head_count")),
        "num_key_value_heads": _uniform([kv_heads[i] for i in sliding_layers], "sliding layers' head_count_kv"),
        "head_dim": head_sliding,
        "per_layer_config": {str(i): {"head_dim": head_full, "num_key_value_heads": kv_heads[i]}
                             for i in range(n) if layer_types[i] == FULL},
        "attention_k_eq_v": _uniform(without_v, "full layers' attn_v presence") if without_v else False,
        "layer_types": layer_types,
        "sliding_window": int(_value(metadata, "attention.sliding_window")),
        "num_kv_shared_layers": shared,
        "hidden_size_per_layer_input": ple,
        "rope_parameters": _rope(metadata, head_full, head_sliding, rope_factors),
        "rms_norm_eps": float(_value(metadata, "attention.layer_norm_rms_epsilon", 1e-6)),
        "final_logit_softcapping": metadata.get(f"{ARCH}.final_logit_softcapping"),
        "tie_word_embeddings": True,
    }
    if ple:
        config["vocab_size_per_layer_input"] = int(tensor_shapes["per_layer_token_embd.weight"][0])
    if f"{ARCH}.context_length" in metadata:
        config["max_position_embeddings"] = int(metadata[f"{ARCH}.context_length"])
    _experts(metadata, config)
    config.update(token_ids(metadata))
    return config
