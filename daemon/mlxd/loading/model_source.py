"""One entry point for every kind of model file: a Hugging Face / MLX folder, or a GGUF file."""

from __future__ import annotations

import logging
from pathlib import Path

from mlxd.errors import ModelLoadError
from mlxd.loading.loader import LoadedModel, load_model
from mlxd.loading.tokenizer import Tokenizer, load_tokenizer
from mlxd.models.base import fuse_projections

log = logging.getLogger(__name__)


def load_model_and_tokenizer(path: Path, dtype: str = "auto") -> tuple[LoadedModel, Tokenizer]:
    """The model ready to serve (its input projections fused where the weights allow) and its tokenizer."""
    if path.is_file() and path.suffix == ".gguf":
        from mlxd.loading.gguf import load_gguf_model, load_gguf_tokenizer
        loaded, tokenizer = load_gguf_model(path, dtype=dtype), load_gguf_tokenizer(path)
    elif path.is_dir():
        loaded, tokenizer = load_model(path, dtype=dtype), load_tokenizer(path)
    else:
        raise ModelLoadError(f"{path}: not a model folder or a .gguf file")
    fused = fuse_projections(loaded.model)
    log.info("fused the input projections of %d attention and MLP modules", fused)
    return loaded, tokenizer
