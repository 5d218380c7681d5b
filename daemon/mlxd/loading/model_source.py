"""One entry point for every kind of model file: a Hugging Face / MLX folder, or a GGUF file."""

from __future__ import annotations

from pathlib import Path

from mlxd.errors import ModelLoadError
from mlxd.loading.loader import LoadedModel, load_model
from mlxd.loading.tokenizer import Tokenizer, load_tokenizer


def load_model_and_tokenizer(path: Path, dtype: str = "auto") -> tuple[LoadedModel, Tokenizer]:
    """The model ready to serve (its input projections fused where the weights allow, its kernels chosen) and
    its tokenizer."""
    if path.is_file() and path.suffix == ".gguf":
        from mlxd.loading.gguf import load_gguf_model, load_gguf_tokenizer
        return load_gguf_model(path, dtype=dtype, fuse=True), load_gguf_tokenizer(path)
    if path.is_dir():
        return load_model(path, dtype=dtype, fuse=True), load_tokenizer(path)
    raise ModelLoadError(f"{path}: not a model folder or a .gguf file")
