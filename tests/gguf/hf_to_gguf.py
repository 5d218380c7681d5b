"""Write a parity fixture (a tiny Hugging Face model folder) as one GGUF file, laid out as llama.cpp's
convert_hf_to_gguf.py lays out that architecture: tensor names from the `gguf` package's own name tables, q/k
rows permuted for its interleaved rotary embedding (llama, Mistral, and Mixtral, which it writes as llama),
Gemma's norms stored plus one, Llama 3.1 rope scaling as a rope_freqs.weight tensor instead of config keys, a
MoE layer's experts stacked into one [E, out, in] tensor per projection with expert_* keys, 1-D tensors, biases and
routers kept F32, gpt-oss's tensors as its GptOssModel writes them (gpt_oss_to_gguf: gate and up split apart, MXFP4
experts copied as they are) with YaRN keys, GLM-4.7-Flash as its deepseek2 (mla_to_gguf: kv_b_proj split per head),
and the byte-level BPE tokenizer as tokenizer.ggml.* metadata. A matrix whose rows are not a whole number of
quantization blocks stays F32 (llama-quantize falls back for such a tensor; only the glm4_moe_lite fixture has
one: its latent is 24 wide)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    RopeScalingType,
    TokenType,
    get_tensor_name_map,
)
from gguf.quants import dequantize, quantize

from tests.gguf.gpt_oss_to_gguf import MXFP4Blocks, gpt_oss_tensors
from tests.gguf.mla_to_gguf import mla_hyperparameters, mla_tensors
from tests.gguf.nemotron_to_gguf import nemotron_config, nemotron_hyperparameters, nemotron_tensors
from tests.gguf.tiny_gguf import permute_like_llama_cpp

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"

GPT_OSS = MODEL_ARCH_NAMES[MODEL_ARCH.GPT_OSS]
DEEPSEEK2 = MODEL_ARCH_NAMES[MODEL_ARCH.DEEPSEEK2]
NEMOTRON_H_MOE = MODEL_ARCH_NAMES[MODEL_ARCH.NEMOTRON_H_MOE]
# GGUF architecture -> the gguf package's tensor table ("mistral", Ollama's name, has no table: llama's names).
TENSOR_TABLES = {
    "llama": MODEL_ARCH.LLAMA,
    "mistral": MODEL_ARCH.LLAMA,
    "mistral3": MODEL_ARCH.MISTRAL3,
    "qwen2": MODEL_ARCH.QWEN2,
    "qwen3": MODEL_ARCH.QWEN3,
    "qwen3moe": MODEL_ARCH.QWEN3MOE,
    "gemma3": MODEL_ARCH.GEMMA3,
    GPT_OSS: MODEL_ARCH.GPT_OSS,
    DEEPSEEK2: MODEL_ARCH.DEEPSEEK2,
    NEMOTRON_H_MOE: MODEL_ARCH.NEMOTRON_H_MOE,
}
# Names an architecture's table lacks: Qwen3-MoE's dense layers (mlp_only_layers). llama.cpp cannot express them
# (its converter stops at "Can not map tensor", its qwen3moe graph wants experts in every layer); they are
# written under the dense names its other MoE architectures use for dense layers, as Qwen3's table gives them.
_FALLBACK_TABLES = {"qwen3moe": MODEL_ARCH.QWEN3}
_PERMUTED = {"llama", "mistral", "mistral3"}
# qtype -> (GGML type of matrices, of stacked experts, general.file_type). MXFP4_MOE is llama-quantize's: experts
# in MXFP4 (ggml type 39), the other matrices Q8_0. *_EXPERTS quantize the experts only, the layout of llama.cpp's
# gpt-oss conversion with --outtype f32 (its MXFP4 experts kept, the rest F32).
QTYPES = {
    "F32": ("F32", "F32", LlamaFileType.ALL_F32),
    "Q8_0": ("Q8_0", "Q8_0", LlamaFileType.MOSTLY_Q8_0),
    "Q4_1": ("Q4_1", "Q4_1", LlamaFileType.MOSTLY_Q4_1),
    "MXFP4_MOE": ("Q8_0", "MXFP4", LlamaFileType.MOSTLY_MXFP4_MOE),
    "Q8_0_EXPERTS": ("F32", "Q8_0", LlamaFileType.ALL_F32),
    "MXFP4_EXPERTS": ("F32", "MXFP4", LlamaFileType.ALL_F32),
}
# A checkpoint's per-expert matrix: layer, MoE module, expert, projection.
_EXPERT = re.compile(r"model\.layers\.(\d+)\.(block_sparse_moe|mlp)\.experts\.(\d+)\.(\w+)\.weight")


def llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> np.ndarray:
    """Per rotary pair, the factor Llama 3.1 scaling stretches its wavelength by: 1 for short wavelengths,
    `factor` for long ones, a blend of the two frequencies in between."""
    inv_freq = rope["rope_theta"] ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelength = 2 * np.pi / inv_freq
    factor, old = rope["factor"], rope["original_max_position_embeddings"]
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    smooth = np.clip((old / wavelength - low) / (high - low), 0.0, 1.0)
    return (1.0 / ((1.0 - smooth) / factor + smooth)).astype(np.float32)


def _hyperparameters(w: GGUFWriter, arch: str, config: dict[str, Any]) -> None:
    rope = config["rope_parameters"]
    full = rope.get("full_attention", rope)  # Gemma 3: per layer type; rope.freq_base is the full layers'
    head_dim = config.get("head_dim")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_rope_freq_base(full["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if head_dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch in _PERMUTED:
        w.add_vocab_size(config["vocab_size"])
        w.add_rope_dimension_count(head_dim or config["hidden_size"] // config["num_attention_heads"])
    if config.get("sliding_window") and arch != "llama":
        w.add_sliding_window(config["sliding_window"])
    # TextModel's expert keys; Qwen2MoeModel (Qwen3-MoE's base) adds the experts' width.
    if experts := config.get("num_local_experts") or config.get("num_experts"):
        w.add_expert_count(experts)
        w.add_expert_used_count(config["num_experts_per_tok"])
    if config.get("moe_intermediate_size"):
        w.add_expert_feed_forward_length(config["moe_intermediate_size"])
    if arch == GPT_OSS:  # GptOssModel: its experts are intermediate_size wide
        w.add_expert_feed_forward_length(config["intermediate_size"])
    if full.get("rope_type") == "yarn":  # TextModel's YaRN keys; `truncate` has none
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(full["factor"])
        w.add_rope_scaling_orig_ctx_len(full["original_max_position_embeddings"])
        if "beta_fast" in full:
            w.add_rope_scaling_yarn_beta_fast(full["beta_fast"])
        if "beta_slow" in full:
            w.add_rope_scaling_yarn_beta_slow(full["beta_slow"])
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if config.get(key) is not None:
            w.add_float32(f"{arch}.{key}", config[key])


def _tokenizer(w: GGUFWriter, folder: Path, vocab_size: int) -> None:
    """tokenizer.json as llama.cpp stores a byte-level BPE: every id up to the model's vocabulary (gaps as
    [PADn]), added tokens as control or user-defined, merges as "a b" strings, the pre-tokenizer by name."""
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tok_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tok["pre_tokenizer"] == {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                    "use_regex": True}, "the fixtures' tokenizer splits as GPT-2 does"
    texts = {i: t for t, i in tok["model"]["vocab"].items()}
    added = {a["id"]: a for a in tok["added_tokens"]}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(TokenType.CONTROL if added[i]["special"] else TokenType.USER_DEFINED)
        elif i in texts:
            tokens.append(texts[i])
            types.append(TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(tokens.index(tok_config["bos_token"]))
    w.add_eos_token_id(tokens.index(tok_config["eos_token"]))
    w.add_pad_token_id(tokens.index(tok_config["pad_token"]))
    w.add_add_bos_token(bool(tok_config.get("add_bos_token")))
    w.add_chat_template(tok_config["chat_template"])


def merge_experts(weights: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, list[str]]]:
    """(name to look up in the tensor table, values, the checkpoint tensors they hold) for each tensor to write:
    each layer's experts of one projection stacked in expert order, [E, out, in], under the merged name
    llama.cpp's converter gives them (LlamaModel for Mixtral's w1/w2/w3, Qwen2MoeModel for Qwen3-MoE's)."""
    out, merged = [], {}
    for hf, values in weights.items():
        m = _EXPERT.fullmatch(hf)
        if m is None:
            out.append((hf, values, [hf]))
            continue
        layer, block, expert, proj = m.groups()
        name = (f"layers.{layer}.feed_forward.experts.{proj}.weight" if block == "block_sparse_moe"
                else f"model.layers.{layer}.mlp.experts.{proj}.weight")
        merged.setdefault(name, {})[int(expert)] = hf
    for name, by_expert in merged.items():
        parts = [by_expert[e] for e in range(len(by_expert))]
        out.append((name, np.stack([weights[p] for p in parts]), parts))
    return out


def write_gguf(fixture: str, arch: str, path: Path, *, qtype: str = "F32", rope_freqs: bool = True
               ) -> dict[str, mx.array]:
    """Write the parity fixture `fixture` as a GGUF of architecture `arch`, its matrices in `qtype` (QTYPES).

    Returns, under their Hugging Face names, the values the quantized tensors hold (what a model loaded from the
    file must compute with); empty for F32. gpt-oss's gate and up experts, which transformers holds as one
    interleaved tensor, come under the split names models/gpt_oss.py's sanitize gives them, and its MXFP4 experts,
    copied whatever `qtype`, under none (they hold the checkpoint's values). `rope_freqs=False` leaves Llama 3.1
    scaling out of the file.
    """
    folder = PARITY / fixture
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if arch == NEMOTRON_H_MOE:
        config = nemotron_config(config)
    weights = {k: np.array(v) for k, v in mx.load(str(folder / "model.safetensors")).items()}
    n_layers = config["num_hidden_layers"]
    names = get_tensor_name_map(TENSOR_TABLES[arch], n_layers)
    fallback = get_tensor_name_map(_FALLBACK_TABLES.get(arch, TENSOR_TABLES[arch]), n_layers)
    n_heads, n_kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    if arch == GPT_OSS:
        entries = gpt_oss_tensors(weights)
    elif arch == NEMOTRON_H_MOE:
        entries = nemotron_tensors(weights, config)
    else:
        entries = merge_experts(weights)
        entries = mla_tensors(entries, config) if arch == DEEPSEEK2 else entries
    matrix_type, expert_type, file_type = QTYPES[qtype]

    w = GGUFWriter(str(path), arch)
    if arch == DEEPSEEK2:
        mla_hyperparameters(w, config)
    elif arch == NEMOTRON_H_MOE:
        nemotron_hyperparameters(w, config)
    else:
        _hyperparameters(w, arch, config)
    w.add_file_type(file_type)
    _tokenizer(w, folder, config["vocab_size"])

    stored: dict[str, mx.array] = {}
    for hf, values, parts in entries:
        suffixes = (".weight", ".bias")
        name = names.get_name(hf, try_suffixes=suffixes) or fallback.get_name(hf, try_suffixes=suffixes)
        assert name is not None, hf
        if isinstance(values, MXFP4Blocks):
            w.add_tensor(name, values.raw, raw_dtype=GGMLQuantizationType.MXFP4)
            continue
        original = values
        if arch == "gemma3" and hf.endswith("norm.weight"):
            values = values + 1.0  # llama.cpp scales by w, Gemma by 1 + w
        if arch in _PERMUTED and (".q_proj." in hf or ".k_proj." in hf):
            values = permute_like_llama_cpp(values, n_heads if ".q_proj." in hf else n_kv_heads)
        type_name = expert_type if values.ndim == 3 else matrix_type
        # Routers, norms (Mamba-2's gated one is 2-D) and biases (gpt-oss's experts' are 2-D) stay F32, as the
        # converter and llama-quantize keep them.
        router = name.endswith(("ffn_gate_inp.weight", "_norm.weight"))
        kind = GGMLQuantizationType[type_name]
        whole_blocks = values.shape[-1] % GGML_QUANT_SIZES[kind][0] == 0
        if values.ndim >= 2 and type_name != "F32" and name.endswith(".weight") and not router and whole_blocks:
            packed = quantize(values, kind)
            # Permuting whole rows commutes with quantizing them, so the HF-layout values are the originals'.
            held = dequantize(quantize(original, kind), kind).reshape(original.shape)
            # Stacked experts are returned per expert where the checkpoint held them so.
            stored.update(zip(parts, map(mx.array, held)) if len(parts) > 1 else {parts[0]: mx.array(held)})
            w.add_tensor(name, packed, raw_dtype=kind)
        else:
            w.add_tensor(name, values.astype(np.float32))
    rope = config.get("rope_parameters", {})  # Nemotron-H has none
    if rope_freqs and rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(rope, config["head_dim"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored
