"""Ollama's own gpt-oss GGUF layout, read as llama.cpp's.

Ollama's converter (convert/convert_gptoss.go, August 2025 to May 2026) wrote gpt-oss as general.architecture
"gptoss" in a layout of its own, which only its own model code (model/models/gptoss) read. `as_llama_cpp` turns
such a file, on reading, into the layout llama.cpp's converter writes ("gpt-oss"), so the rest of the loader knows
one layout; Ollama now does the same for llama-server (llama/compat, handle_gptoss). The `gguf` package, whose
tables name llama.cpp's tensors, has none for Ollama's names, so they are listed here (_RENAMES), apart from the
llama.cpp tables in names.py. What the translation does, as Ollama's converter and model code show:
- keys: "gptoss." becomes "gpt-oss."; the rope scaling type, which the files lack and the model code takes to be
  YaRN (its RoPE always ramps with rope.scaling.factor), is "yarn", with the betas its RoPE passed (_YARN_BETAS,
  its defaults; the files have none); the experts' width, which they lack too, is
  read off the gate experts' rows; tokenizer.ggml.pre, "default" in these files (the converter names only a few
  pre-tokenizers), is "gpt-4o", the o200k split the model code hard-codes;
- names (_RENAMES): the attention output, the sinks (a bare tensor name), the norm before the experts;
- fused tensors, split (_split): `ffn_gate_up_exps` (files before October 2025), whose rows alternate gate, up as
  transformers' gate_up_proj does, into ffn_gate_exps (rows 0::2) and ffn_up_exps (rows 1::2), biases by entries;
  `attn_qkv` (files converted from OpenAI's original checkpoint) into attn_q, attn_k, attn_v, q rows first;
- MXFP4 experts of type 4 (files before 26 August 2025) stay as they are: quants.mxfp4_paired reads them.
A split tensor is a strided view of the file's bytes; tensors.py reads it a block of rows at a time, as any other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from mlxd.loading.gguf.names import GPT_OSS
from mlxd.loading.gguf.reader import GGUFFile, GGUFTensor

OLLAMA_GPT_OSS = "gptoss"  # general.architecture of Ollama's gpt-oss files
_PREFIX, _LLAMA_CPP_PREFIX = f"{OLLAMA_GPT_OSS}.", f"{GPT_OSS}."
# Ollama's names within a block -> llama.cpp's. Ollama's model code also accepted llama.cpp's, so those pass.
_RENAMES = {
    "attn_out.weight": "attn_output.weight",
    "attn_out.bias": "attn_output.bias",
    "attn_sinks": "attn_sinks.weight",
    "ffn_norm.weight": "post_attention_norm.weight",
}
_GATE_UP, _QKV = "ffn_gate_up_exps", "attn_qkv"
_BLOCK_NAME = re.compile(r"(blk\.\d+\.)(.+)")
_FUSED_NAME = re.compile(r"(blk\.\d+\.)(ffn_gate_up_exps|attn_qkv)\.(weight|bias)")
# YaRN's betas as Ollama's RoPE defaulted them (ml/backend/ggml, RoPE), which its gptoss model code never set.
_YARN_BETAS = {"rope.scaling.yarn_beta_fast": 32.0, "rope.scaling.yarn_beta_slow": 1.0}
# The pre-tokenizer of gpt-oss (o200k), which Ollama's gptoss model code uses whatever the file names.
GPT_OSS_PRE_TOKENIZER = "gpt-4o"


def is_ollama_gpt_oss(metadata: Mapping[str, Any]) -> bool:
    return metadata.get("general.architecture") == OLLAMA_GPT_OSS


def _take(t: GGUFTensor, name: str, axis: int, index: slice) -> GGUFTensor:
    """Part of `t` along `axis` of its shape, as a view of its bytes: axis -2 takes whole rows (of any type, ggml
    blocks never crossing a row), axis -1 a float tensor's entries."""
    axis %= len(t.shape)
    runs = t.raw.reshape(*t.shape[: axis + 1], -1)  # one run of bytes per index along `axis`
    part = runs[(slice(None),) * axis + (index,)]
    return GGUFTensor(name, t.type_name, (*t.shape[:axis], part.shape[axis], *t.shape[axis + 1 :]), part)


def _split(t: GGUFTensor, block: str, fused: str, kind: str, metadata: Mapping[str, Any]) -> list[GGUFTensor]:
    """A fused tensor's parts under llama.cpp's names: weights split by rows, biases by entries."""
    axis = -2 if kind == "weight" else -1
    if fused == _GATE_UP:
        return [_take(t, f"{block}ffn_{half}_exps.{kind}", axis, slice(start, None, 2))
                for start, half in ((0, "gate"), (1, "up"))]
    heads, kv_heads = (int(metadata[f"{_PREFIX}attention.{key}"]) for key in ("head_count", "head_count_kv"))
    q_rows, kv_rows = (t.shape[axis] // (heads + 2 * kv_heads) * n for n in (heads, kv_heads))
    bounds = {"q": (0, q_rows), "k": (q_rows, q_rows + kv_rows), "v": (q_rows + kv_rows, q_rows + 2 * kv_rows)}
    return [_take(t, f"{block}attn_{part}.{kind}", axis, slice(*bounds[part])) for part in ("q", "k", "v")]


def _tensors(tensors: list[GGUFTensor], metadata: Mapping[str, Any]) -> list[GGUFTensor]:
    out: list[GGUFTensor] = []
    for t in tensors:
        fused = _FUSED_NAME.fullmatch(t.name)
        if fused:
            block, name, kind = fused.groups()
            out.extend(_split(t, block, name, kind, metadata))
            continue
        block = _BLOCK_NAME.fullmatch(t.name)
        if block and block.group(2) in _RENAMES:
            t = replace(t, name=block.group(1) + _RENAMES[block.group(2)])
        out.append(t)
    return out


def _metadata(metadata: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    out = {(_LLAMA_CPP_PREFIX + k.removeprefix(_PREFIX) if k.startswith(_PREFIX) else k): v
           for k, v in metadata.items()}
    out["general.architecture"] = GPT_OSS
    if f"{_LLAMA_CPP_PREFIX}rope.scaling.factor" in out:
        out.setdefault(f"{_LLAMA_CPP_PREFIX}rope.scaling.type", "yarn")
        for key, beta in _YARN_BETAS.items():
            out.setdefault(_LLAMA_CPP_PREFIX + key, beta)
    gate = shapes.get("blk.0.ffn_gate_exps.weight")
    if gate is not None:  # [E, width, in]
        out.setdefault(f"{_LLAMA_CPP_PREFIX}expert_feed_forward_length", gate[-2])
    out["tokenizer.ggml.pre"] = GPT_OSS_PRE_TOKENIZER
    return out


def as_llama_cpp(gguf: GGUFFile) -> GGUFFile:
    """`gguf` in llama.cpp's layout: Ollama's gpt-oss translated, any other file as it is."""
    if not is_ollama_gpt_oss(gguf.metadata):
        return gguf
    tensors = _tensors(gguf.tensors, gguf.metadata)
    metadata = _metadata(gguf.metadata, {t.name: t.shape for t in tensors})
    return replace(gguf, metadata=metadata, tensors=tensors)
