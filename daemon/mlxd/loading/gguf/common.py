"""What names.py, config.py and the architecture modules (deepseek2, gemma4, nemotron_h, qwen35) read alike: a
layer tensor's name within its block, the token ids and the vocabulary size of any GGUF file. A module of its own
because names.py and config.py import the architecture modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gguf import MODEL_TENSOR, TENSOR_NAMES

from mlxd.errors import ModelLoadError


def layer_base(tensor: MODEL_TENSOR) -> str:
    """A layer tensor's name within its block as llama.cpp writes it ("attn_q" of "blk.{bid}.attn_q")."""
    return TENSOR_NAMES[tensor].removeprefix("blk.{bid}.")


def token_ids(metadata: Mapping[str, Any]) -> dict[str, int]:
    """bos_token_id and eos_token_id, each where the file gives it."""
    ids = {name: metadata.get(f"tokenizer.ggml.{name}_token_id") for name in ("bos", "eos")}
    return {f"{name}_token_id": int(token_id) for name, token_id in ids.items() if token_id is not None}


def vocab_size(tensor_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The embedding's rows: the vocabulary the model scores (metadata vocab_size is often missing)."""
    if "token_embd.weight" not in tensor_shapes:
        raise ModelLoadError("GGUF file has no token_embd.weight")
    return int(tensor_shapes["token_embd.weight"][0])
