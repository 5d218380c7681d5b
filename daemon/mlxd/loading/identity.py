"""Model identity: a content digest over the model's files, so a client can tell exactly what it talks to."""

from __future__ import annotations

import hashlib
from pathlib import Path

_MODEL_FILE_SUFFIXES = {".json", ".safetensors", ".jinja", ".model", ".gguf", ".txt"}


def model_files(path: Path) -> list[Path]:
    """The files that define a model: the file itself, or a folder's config, weight and tokenizer files."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _MODEL_FILE_SUFFIXES)


def content_digest(path: Path, block: int = 8 << 20) -> str:
    """sha256 over (name, size, bytes) of every model file, in name order: "sha256:<hex>"."""
    digest = hashlib.sha256()
    for file in model_files(path):
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            while chunk := f.read(block):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()
