"""Write a Gemma 4 parity fixture as llama.cpp's converter writes `gemma4` (its Gemma4Model over Gemma3Model and
TextModel, from the published config layout, which it reads: `global_head_dim`, `num_global_key_value_heads`).

Keys: the layer kinds as one boolean per layer, key/value lengths of full layers and (`_swa`) sliding ones, MLP
widths per layer when KV-shared layers are double wide, kv heads per layer when the config names global ones,
shared_kv_layers, the per-layer embeddings' width, both rope bases and rotated dims, expert keys. Tensors: the
`gguf` package's GEMMA4 names; norms as stored (Gemma 4 scales by w); the layer scalar and the stacked experts
with ".weight" appended; the router's scale and per-expert scale as `ffn_gate_inp.scale` and `ffn_down_exps.scale`;
the full layers' proportional rope as rope_freqs.weight (1 per rotated pair, 1e30 per other pair).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
from gguf import MODEL_ARCH, GGMLQuantizationType, GGUFWriter, get_tensor_name_map
from gguf.quants import dequantize, quantize

from tests.gguf.hf_to_gguf import PARITY, QTYPES, _tokenizer

ARCH = "gemma4"
_DECODER = "model.language_model."
_SCALES = {"router.scale": "ffn_gate_inp.scale", "router.per_expert_scale": "ffn_down_exps.scale"}


def _hyperparameters(w: GGUFWriter, text: dict) -> None:
    n, shared = text["num_hidden_layers"], text["num_kv_shared_layers"]
    sliding = [t == "sliding_attention" for t in text["layer_types"]]
    rope = text["rope_parameters"]
    head_full, head_sliding = text["global_head_dim"], text["head_dim"]
    w.add_context_length(text["max_position_embeddings"])
    w.add_embedding_length(text["hidden_size"])
    w.add_block_count(n)
    if text["use_double_wide_mlp"]:
        w.add_feed_forward_length([text["intermediate_size"] * (2 if i >= n - shared else 1) for i in range(n)])
    else:
        w.add_feed_forward_length(text["intermediate_size"])
    w.add_head_count(text["num_attention_heads"])
    if text.get("num_global_key_value_heads") is not None:
        w.add_head_count_kv([text["num_key_value_heads"] if s else text["num_global_key_value_heads"]
                             for s in sliding])
    else:
        w.add_head_count_kv(text["num_key_value_heads"])
    w.add_rope_freq_base(rope["full_attention"]["rope_theta"])
    w.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    w.add_layer_norm_rms_eps(text["rms_norm_eps"])
    w.add_final_logit_softcapping(text["final_logit_softcapping"])
    w.add_sliding_window(text["sliding_window"])
    w.add_shared_kv_layers(shared)
    w.add_embedding_length_per_layer_input(text["hidden_size_per_layer_input"])
    w.add_sliding_window_pattern(sliding)
    w.add_key_length(head_full)
    w.add_value_length(head_full)
    w.add_key_length_swa(head_sliding)
    w.add_value_length_swa(head_sliding)
    w.add_rope_dimension_count(head_full)
    w.add_rope_dimension_count_swa(head_sliding)
    if text.get("enable_moe_block"):
        w.add_expert_count(text["num_experts"])
        w.add_expert_used_count(text["top_k_experts"])
        w.add_expert_feed_forward_length(text["moe_intermediate_size"])


def _rope_freqs(text: dict) -> np.ndarray:
    pairs = text["global_head_dim"] // 2
    rotated = int(text["global_head_dim"] * text["rope_parameters"]["full_attention"]["partial_rotary_factor"] / 2)
    return np.array([1.0] * rotated + [1e30] * (pairs - rotated), dtype=np.float32)


def _gguf_name(hf: str, names) -> str:
    name = hf.removeprefix(_DECODER)
    for ours, theirs in _SCALES.items():
        if name.endswith(ours):
            return f"blk.{name.split('.')[1]}.{theirs}"
    if name.endswith(("layer_scalar", "experts.gate_up_proj", "experts.down_proj")):
        name += ".weight"
    found = names.get_name("model." + name, try_suffixes=(".weight",))
    assert found is not None, hf
    return found


def write_gemma4_gguf(fixture: str, path: Path, qtype: str = "F32") -> dict[str, mx.array]:
    """The fixture as a gemma4 GGUF with its matrices (and stacked experts) in `qtype` (hf_to_gguf.QTYPES; routers
    and 1-D tensors stay F32). Returns what its quantized tensors hold, under the checkpoint's names."""
    folder = PARITY / fixture
    text = json.loads((folder / "config_v4.json").read_text(encoding="utf-8"))["text_config"]
    weights = {k: np.array(v) for k, v in mx.load(str(folder / "model.safetensors")).items()}
    names = get_tensor_name_map(MODEL_ARCH.GEMMA4, text["num_hidden_layers"])
    matrix_type, expert_type, file_type = QTYPES[qtype]

    w = GGUFWriter(str(path), ARCH)
    _hyperparameters(w, text)
    w.add_file_type(file_type)
    _tokenizer(w, folder, text["vocab_size"])
    stored: dict[str, mx.array] = {}
    for hf, values in weights.items():
        name = _gguf_name(hf, names)
        kind_name = expert_type if values.ndim == 3 else matrix_type
        if values.ndim >= 2 and kind_name != "F32" and not name.startswith(f"blk.{name.split('.')[1]}.ffn_gate_inp"):
            kind = GGMLQuantizationType[kind_name]
            if values.shape[-1] % 32:  # rows shorter than a block: the converter falls back to F16
                kind = GGMLQuantizationType.F16
            packed = quantize(values, kind)
            stored[hf] = mx.array(dequantize(packed, kind).reshape(values.shape))
            w.add_tensor(name, packed, raw_dtype=kind)
        else:
            w.add_tensor(name, values.astype(np.float32))
    w.add_tensor("rope_freqs.weight", _rope_freqs(text))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored
