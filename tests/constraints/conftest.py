"""The fixture tokenizer (320 tokens) behind a padded logits width, and SmolLM2's 49k tokenizer (real_model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxd.constraints import GrammarCompiler

TINY_TOKENIZER = Path(__file__).resolve().parent.parent / "fixtures" / "parity" / "llama" / "tokenizer.json"
TINY_TOKENS = 320
# Wider than the tokenizer and not a multiple of 32, as a padded embedding can be: ids 320..339 are logits the
# tokenizer never produces, and bits 340..351 of the last mask word cover no logit at all.
TINY_WIDTH = 340
TINY_EOS = [2]


@pytest.fixture(scope="session")
def tiny_json() -> str:
    return TINY_TOKENIZER.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tiny(tiny_json: str) -> GrammarCompiler:
    return GrammarCompiler(tiny_json, TINY_WIDTH, TINY_EOS)


@pytest.fixture(scope="session")
def smollm2_compiler() -> GrammarCompiler:
    """SmolLM2-135M's tokenizer as the GGUF loader builds it, with its end-of-generation ids; logits width 49152."""
    from mlxd.demo_models import fetch_model
    from mlxd.loading.gguf.reader import read_gguf
    from mlxd.loading.gguf.tokenizer import BUILDERS, eog_token_ids

    metadata = read_gguf(fetch_model("smollm2")).metadata
    tokenizer, _ = BUILDERS[metadata["tokenizer.ggml.model"]](metadata)
    return GrammarCompiler(tokenizer.to_str(), len(metadata["tokenizer.ggml.tokens"]), eog_token_ids(metadata))
