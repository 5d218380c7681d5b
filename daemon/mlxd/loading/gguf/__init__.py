"""GGUF files (llama.cpp's and Ollama's format): one file holding weights, config and tokenizer."""

from __future__ import annotations

from pathlib import Path

from mlxd.loading.gguf.load import load_gguf_model
from mlxd.loading.gguf.ollama import as_llama_cpp
from mlxd.loading.gguf.reader import read_gguf
from mlxd.loading.gguf.tokenizer import build_tokenizer
from mlxd.loading.tokenizer import Tokenizer


def load_gguf_tokenizer(path: Path) -> Tokenizer:
    """The Tokenizer described by the metadata of the GGUF file `path`."""
    return build_tokenizer(as_llama_cpp(read_gguf(Path(path))).metadata)


__all__ = ["load_gguf_model", "load_gguf_tokenizer"]
