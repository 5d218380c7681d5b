"""Every parity fixture written as a GGUF file the way llama.cpp's converter writes its architecture (hf_to_gguf),
loaded through the normal loader, against transformers' float32 logits at tests/models/test_model_parity.py's
tolerance."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import tokenizers

from mlxd.loading.gguf import load_gguf_tokenizer
from mlxd.loading.gguf.reader import read_gguf
from mlxd.loading.loader import load_model
from mlxd.loading.model_source import load_model_and_tokenizer
from mlxd.loading.tokenizer import load_tokenizer
from mlxd.models.rope import make_rope
from tests.gguf.hf_to_gguf import PARITY, write_gguf
from tests.helpers.parity_checks import greedy_with_cache

# (fixture, GGUF architecture): Mistral both as llama.cpp ("mistral3") and Ollama's earlier converter ("mistral")
# name it; its fixture's sliding window (16) bites on the 40 input tokens. llama.cpp writes Mixtral as "llama"
# (with expert_count). Each fixture folder is named after its model_type.
CASES = [
    ("llama", "llama"),
    ("mistral", "mistral"),
    ("mistral", "mistral3"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("gemma3_text", "gemma3"),
    ("qwen3_moe", "qwen3moe"),
    ("mixtral", "llama"),
]
LOGIT_TOL = 1e-3  # as tests/models/test_model_parity.py


@pytest.mark.parametrize("fixture,arch", CASES)
def test_f32_logits_match_transformers(parity_gguf, fixture, arch):
    _, loaded, _, expected = parity_gguf(fixture, arch)
    assert loaded.model_type == fixture
    logits = loaded.model(expected["input_ids"])
    assert logits.shape == (1, 40, loaded.vocab_size)
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL


@pytest.mark.parametrize("fixture,arch", CASES)
def test_greedy_decode_with_cache_matches_transformers(parity_gguf, fixture, arch):
    _, loaded, _, expected = parity_gguf(fixture, arch)
    want = expected["greedy_ids"].tolist()
    assert greedy_with_cache(loaded.model, expected["input_ids"], len(want)) == want


@pytest.mark.parametrize("fixture,arch", CASES)
def test_q8_0_file_computes_with_its_stored_values(parity_gguf, fixture, arch):
    """The reference is the Hugging Face folder's model with each quantized weight replaced by what Q8_0 stores;
    the file holds every matrix (stacked experts too) in Q8_0 but the routers, which llama.cpp keeps F32."""
    path, loaded, stored, expected = parity_gguf(fixture, arch, "Q8_0")
    reference = load_model(PARITY / fixture, dtype="float32")
    reference.model.load_weights(list(reference.model.sanitize(dict(stored)).items()), strict=False)
    tokens = expected["input_ids"]
    assert mx.abs(loaded.model(tokens) - reference.model(tokens)).max().item() < LOGIT_TOL
    for t in read_gguf(path).tensors:
        assert t.type_name == ("Q8_0" if len(t.shape) > 1 and ".ffn_gate_inp." not in t.name else "F32"), t.name
    assert loaded.quantization["file_type"] == 7  # MOSTLY_Q8_0


@pytest.mark.parametrize("fixture,arch", CASES)
def test_tokenizer_and_template_match_the_folders(parity_gguf, fixture, arch):
    tokenizer = load_gguf_tokenizer(parity_gguf(fixture, arch).path)
    reference = tokenizers.Tokenizer.from_file(str(PARITY / fixture / "tokenizer.json"))
    for text in ["Hello world!", "it's 2024, isn't it?\n\n  spaced   out", "<bos>x<eos> y", "çà 日本"]:
        want = reference.encode(text, add_special_tokens=False).ids
        assert tokenizer.encode(text, add_special_tokens=False) == want, text
    assert tokenizer.encode("Hi") == reference.encode("Hi").ids  # BOS added as tokenizer_config.json asks
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert tokenizer.apply_chat_template(messages) == load_tokenizer(PARITY / fixture).apply_chat_template(messages)


def test_llama3_rope_scaling_comes_from_rope_freqs(parity_gguf, tmp_path):
    _, loaded, _, expected = parity_gguf("llama", "llama")
    assert loaded.args.rope_parameters["rope_type"] == "freq_factors"
    # The same file without the tensor rotates with unscaled frequencies: far from transformers' logits.
    write_gguf("llama", "llama", tmp_path / "plain.gguf", rope_freqs=False)
    plain, _ = load_model_and_tokenizer(tmp_path / "plain.gguf", dtype="float32")
    assert plain.args.rope_parameters["rope_type"] == "default"
    assert mx.abs(plain.model(expected["input_ids"])[0] - expected["logits"]).max().item() > 100 * LOGIT_TOL


def test_freq_factors_rope_equals_llama3_rope():
    """rope_freqs.weight's factors rotate as transformers' llama3 scaling does, at positions past the original
    context too."""
    from hf_to_gguf import llama3_rope_factors

    params = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    factors = llama3_rope_factors(params, 64).tolist()
    assert factors[0] == 1.0 and factors[-1] == 8.0 and any(1.0 < f < 8.0 for f in factors)
    x = mx.random.normal((1, 2, 5, 64), key=mx.random.key(0))
    by_factors = make_rope(64, {"rope_type": "freq_factors", "rope_theta": 500000.0, "freq_factors": factors})
    np.testing.assert_allclose(np.array(by_factors(x, offset=3000)), np.array(make_rope(64, params)(x, offset=3000)),
                               atol=2e-4)
