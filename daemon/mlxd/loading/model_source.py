"""One entry point for every kind of model file: a Hugging Face / MLX folder, or a GGUF file."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from mlxd.errors import ModelLoadError
from mlxd.loading.loader import LoadedModel, load_model
from mlxd.loading.tokenizer import Tokenizer, load_tokenizer
from mlxd.models.protocol import LanguageModel
from mlxd.models.recurrent_cache import RecurrentCache


def load_model_and_tokenizer(path: Path, dtype: str = "auto",
                              group: mx.distributed.Group | None = None) -> tuple[LoadedModel, Tokenizer]:
    """The model ready to serve (its input projections fused where the weights allow, its kernels chosen) and
    its tokenizer; with a `group` of several ranks, this rank's tensor-parallel share (a folder's only)."""
    if _is_gguf(path):
        if group is not None and group.size() > 1:
            raise ModelLoadError("tensor parallelism loads model folders; convert the GGUF file to one")
        from mlxd.loading.gguf import load_gguf_model
        return load_gguf_model(path, dtype=dtype, fuse=True), load_model_tokenizer(path)
    return load_model(_folder(path), dtype=dtype, fuse=True, group=group), load_model_tokenizer(path)


def load_draft_model(path: Path, dtype: str, target: Tokenizer) -> LanguageModel:
    """A draft model for speculative decoding: refused unless its tokenizer has exactly the target's vocabulary
    (a draft token must mean the same text to both models)."""
    loaded, tokenizer = load_model_and_tokenizer(path, dtype)
    theirs, ours = tokenizer.vocabulary(), target.vocabulary()
    if theirs != ours:
        differ = sorted(set(theirs.items()) ^ set(ours.items()), key=lambda item: item[1])[:3]
        raise ModelLoadError(f"the draft model {path} has another vocabulary than the target's ({len(theirs)} "
                             f"tokens against {len(ours)}; e.g. {differ}): its drafts would mean other text")
    if loaded.vision_language is not None or any(isinstance(c, RecurrentCache) for c in loaded.model.make_cache()):
        raise ModelLoadError(f"the draft model {path} cannot draft: it takes images or has recurrent layers")
    return loaded.model


def load_model_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer of a model folder or GGUF file, without reading its weights."""
    if _is_gguf(path):
        from mlxd.loading.gguf import load_gguf_tokenizer
        return load_gguf_tokenizer(path)
    return load_tokenizer(_folder(path))


def _is_gguf(path: Path) -> bool:
    return path.is_file() and path.suffix == ".gguf"


def _folder(path: Path) -> Path:
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not a model folder or a .gguf file")
    return path
