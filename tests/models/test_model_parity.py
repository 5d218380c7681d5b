"""Every architecture, in both config layouts, reproduces transformers' float32 logits and greedy ids."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from mlxd.loading.loader import load_model
from tests.helpers.parity_checks import greedy_with_cache, max_decode_error, prefill_in_chunks

# gpt_oss: MXFP4 experts (dequantized to float32 on load); gpt_oss_dense: the same model with float32 experts.
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "qwen3_moe", "mixtral", "gpt_oss", "gpt_oss_dense",
         "glm4_moe_lite"]
CASES = [(arch, layout) for arch in ARCHS for layout in ("v5", "v4")]
LOGIT_TOL = 1e-3
# Same weights, same math, only the order of floating-point operations differs.
SELF_TOL = 1e-4


@pytest.mark.parametrize("arch,layout", CASES)
def test_full_forward_matches_transformers(parity_model, arch, layout):
    loaded, expected = parity_model(arch, layout)
    logits = loaded.model(expected["input_ids"])
    assert logits.shape == (1, 40, loaded.vocab_size)
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL


@pytest.mark.parametrize("arch,layout", CASES)
def test_greedy_decode_with_cache_matches_transformers(parity_model, arch, layout):
    loaded, expected = parity_model(arch, layout)
    want = expected["greedy_ids"].tolist()
    assert greedy_with_cache(loaded.model, expected["input_ids"], len(want)) == want


@pytest.mark.parametrize("chunk", [1, 5, 7, 12, 16, 40])  # 7 and 12 cross the 16-key windows
@pytest.mark.parametrize("arch,layout", CASES)
def test_chunked_prefill_equals_one_shot(parity_model, arch, layout, chunk):
    loaded, expected = parity_model(arch, layout)
    one_shot = loaded.model(expected["input_ids"])
    chunked, cache = prefill_in_chunks(loaded.model, expected["input_ids"], chunk)
    assert all(c.offset == 40 for c in cache)
    assert mx.abs(chunked - one_shot).max().item() < SELF_TOL


@pytest.mark.parametrize("arch,layout", CASES)
def test_decode_logits_equal_full_forward(parity_model, arch, layout):
    loaded, expected = parity_model(arch, layout)
    assert max_decode_error(loaded.model, expected["input_ids"], expected["greedy_ids"]) < SELF_TOL


def test_mixtral_attends_within_a_sliding_window_when_its_config_sets_one(model_folder, parity_model):
    """The fixture has no window (as published Mixtral configs); set to 16, positions before 16 keep every
    logit, later ones change, and chunked prefill still equals one shot."""
    folder = model_folder("mixtral")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sliding_window": 16}))
    model = load_model(folder, dtype="float32").model
    plain, expected = parity_model("mixtral", "v5")
    tokens = expected["input_ids"]
    assert [c.window for c in model.make_cache()] == [16, 16, 16]
    windowed, full = model(tokens), plain.model(tokens)
    assert mx.abs(windowed[:, :16] - full[:, :16]).max().item() < SELF_TOL
    assert mx.abs(windowed[:, 16:] - full[:, 16:]).max().item() > 1e-2
    assert mx.abs(prefill_in_chunks(model, tokens, 7)[0] - windowed).max().item() < SELF_TOL
