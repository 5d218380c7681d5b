"""Write tiny random-weight GGUF files the way llama.cpp's converter would, for loader tests without downloads."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize
from mlx.utils import tree_flatten

from mlxd.models import llama

CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 96,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": False,
}
# HF leaf name -> (GGUF leaf name, GGML type); one type of each kind the loader handles.
LAYER_TENSORS = {
    "input_layernorm": ("attn_norm", "F32"),
    "self_attn.q_proj": ("attn_q", "Q4_0"),
    "self_attn.k_proj": ("attn_k", "Q4_1"),
    "self_attn.v_proj": ("attn_v", "Q5_0"),
    "self_attn.o_proj": ("attn_output", "Q5_1"),
    "post_attention_layernorm": ("ffn_norm", "F32"),
    "mlp.gate_proj": ("ffn_gate", "Q8_0"),
    "mlp.up_proj": ("ffn_up", "F16"),
    "mlp.down_proj": ("ffn_down", "BF16"),
}
GLOBAL_TENSORS = {
    "model.embed_tokens": ("token_embd", "Q8_0"),
    "model.norm": ("output_norm", "F32"),
    "lm_head": ("output", "Q4_1"),
}


def permute_like_llama_cpp(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter (LlamaModel.permute): rotate-half row pairs become adjacent rows."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_names(types: dict[str, str]) -> dict[str, tuple[str, str]]:
    names = {f"{hf}.weight": (f"{gg}.weight", t) for hf, (gg, t) in GLOBAL_TENSORS.items()}
    for i in range(CONFIG["num_hidden_layers"]):
        for hf, (gg, t) in LAYER_TENSORS.items():
            names[f"model.layers.{i}.{hf}.weight"] = (f"blk.{i}.{gg}.weight", types.get(hf, t))
    return names


def write_tiny_llama(path: Path, *, arch: str = "llama", extra_tensor: str | None = None,
                     drop_tensor: str | None = None, seed: int = 0, types: dict[str, str] | None = None,
                     context_length: int | None = 256) -> llama.Model:
    """Write a GGUF of a random llama and return the reference model holding the GGUF's (quantized) values.
    `types` changes the GGML type of layer tensors (HF leaf name -> type) from LAYER_TENSORS'; `context_length`
    None leaves <arch>.context_length out."""
    rng = np.random.default_rng(seed)
    model = llama.Model(llama.ModelArgs.from_dict(CONFIG))
    writer = GGUFWriter(str(path), arch)
    for key, value in {"embedding_length": 64, "block_count": 2, "feed_forward_length": 128, "attention.head_count": 4,
                       "attention.head_count_kv": 2, "context_length": context_length}.items():
        if value is not None:
            writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
    reference = {}
    shapes = dict(tree_flatten(model.parameters()))
    for hf, (gg, type_name) in _gguf_names(types or {}).items():
        if gg == drop_tensor:
            continue
        values = (rng.standard_normal(shapes[hf].shape) * 0.2).astype(np.float32)
        if hf.endswith("norm.weight"):
            values = 1.0 + values
        qtype = GGMLQuantizationType[type_name]
        stored = quantize(values, qtype)
        reference[hf] = mx.array(dequantize(stored, qtype).astype(np.float32).reshape(values.shape))
        heads = {"attn_q": 4, "attn_k": 2}.get(gg.split(".")[-2])
        if heads:
            # Rows are whole quantization blocks, so permuting the stored rows is permuting the values.
            stored = permute_like_llama_cpp(stored, heads)
        writer.add_tensor(gg, stored, raw_dtype=qtype if type_name not in ("F32", "F16") else None)
    if extra_tensor:
        writer.add_tensor(extra_tensor, np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model.load_weights(list(reference.items()), strict=False)
    mx.eval(model.parameters())
    return model
