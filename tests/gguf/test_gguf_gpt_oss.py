"""The gpt_oss parity fixtures as GGUF files the way llama.cpp's converter writes them (hf_to_gguf, gpt_oss_to_gguf):
`gpt_oss` (MXFP4 experts, which the converter copies into the file whatever its outtype) and `gpt_oss_dense` (the
same weights in float32, whose experts follow the outtype). F32 files against transformers' logits and greedy ids;
Q8_0 files against the folder's model holding what Q8_0 stores; decode with cache and chunked prefill against the
full pass; the file's keys giving the folder's ModelArgs; experts split from transformers' interleaved gate_up and
MXFP4 codes arriving as the checkpoint holds them."""

from __future__ import annotations

import mlx.core as mx
import pytest
import tokenizers
from mlx.utils import tree_flatten

from mlxd.loading.gguf import load_gguf_tokenizer
from mlxd.loading.gguf.reader import read_gguf
from mlxd.loading.loader import load_model
from mlxd.loading.tokenizer import load_tokenizer
from mlxd.models.moe import QuantizedSwitchLinear, SwitchLinear
from tests.gguf.hf_to_gguf import GPT_OSS, PARITY
from tests.helpers.parity_checks import greedy_with_cache, max_decode_error, prefill_in_chunks

FIXTURES = ["gpt_oss", "gpt_oss_dense"]
LOGIT_TOL = 1e-3  # as test_gguf_parity.py and tests/models/test_model_parity.py
SELF_TOL = 1e-4  # the same weights, another order of operations
HALF_TOL = 5e-2  # a file quantized throughout, held as stored, computes in float16: test_gguf_moe.py's bound
ARGS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
        "head_dim", "rope_parameters", "vocab_size", "tie_word_embeddings", "sliding_window", "layer_types",
        "num_local_experts", "num_experts_per_tok", "swiglu_limit", "swiglu_alpha", "attention_bias",
        "max_position_embeddings")
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _experts(model, layer: int):
    return model.model.layers[layer].mlp.switch_mlp


@pytest.mark.parametrize("fixture", FIXTURES)
def test_f32_logits_and_greedy_ids_match_transformers(parity_gguf, fixture):
    """Served as loaded (projections fused); the MXFP4 experts dequantized to float32 (the CPU's policy)."""
    _, loaded, _, expected = parity_gguf(fixture, GPT_OSS)
    assert loaded.model_type == "gpt_oss"
    logits = loaded.model(expected["input_ids"])
    assert logits.shape == (1, 40, loaded.vocab_size)
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL
    want = expected["greedy_ids"].tolist()
    assert greedy_with_cache(loaded.model, expected["input_ids"], len(want)) == want


@pytest.mark.parametrize("fixture", FIXTURES)
def test_q8_0_file_computes_with_its_stored_values(parity_gguf, fixture):
    """The reference is the folder's model with each Q8_0 matrix replaced by what the file stores. The converter
    keeps 1-D tensors, biases (the experts' are 2-D) and routers F32, and copies MXFP4 experts as they are."""
    path, loaded, stored, expected = parity_gguf(fixture, GPT_OSS, "Q8_0")
    reference = load_model(PARITY / fixture, dtype="float32").model
    replaced = reference.sanitize(dict(stored))
    assert set(replaced) <= {name for name, _ in tree_flatten(reference.parameters())}  # none silently dropped
    reference.load_weights(list(replaced.items()), strict=False)
    tokens = expected["input_ids"]
    assert mx.abs(loaded.model(tokens) - reference(tokens)).max().item() < LOGIT_TOL
    experts = "MXFP4" if fixture == "gpt_oss" else "Q8_0"
    for t in read_gguf(path).tensors:
        if "_exps.weight" in t.name:
            assert t.type_name == experts, t.name
        else:
            matrix = len(t.shape) > 1 and t.name.endswith(".weight") and ".ffn_gate_inp." not in t.name
            assert t.type_name == ("Q8_0" if matrix else "F32"), t.name
    assert loaded.quantization["file_type"] == 7  # MOSTLY_Q8_0


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_decode_with_cache_and_chunked_prefill_equal_the_full_pass(parity_gguf, fixture, qtype):
    """Chunks of 7 and the decode steps cross the sliding layers' window of 16."""
    _, loaded, _, expected = parity_gguf(fixture, GPT_OSS, qtype)
    tokens = expected["input_ids"]
    assert max_decode_error(loaded.model, tokens, expected["greedy_ids"]) < SELF_TOL
    assert mx.abs(prefill_in_chunks(loaded.model, tokens, 7)[0] - loaded.model(tokens)).max().item() < SELF_TOL


@pytest.mark.parametrize("fixture", FIXTURES)
def test_the_file_describes_the_folders_model(parity_gguf, fixture):
    """Sliding layers as llama.cpp picks them (even ones), YaRN with its beta keys and unrounded range, the experts'
    count, top k and width, the clamped SwiGLU's constants."""
    loaded = parity_gguf(fixture, GPT_OSS).loaded
    folder = load_model(PARITY / fixture, dtype="float32")
    for name in ARGS:
        assert getattr(loaded.args, name) == getattr(folder.args, name), name
    assert loaded.args.rms_norm_eps == pytest.approx(folder.args.rms_norm_eps)  # a float32 in the file
    assert loaded.args.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert loaded.args.rope_parameters["truncate"] is False


def test_dense_experts_are_the_folders_split_gate_and_up(parity_gguf):
    """The converter's gate (rows 0::2) and up (rows 1::2) of transformers' interleaved gate_up, weights and biases,
    are the arrays the folder's sanitize makes; the router, its bias and the sinks arrive as they are."""
    loaded = parity_gguf("gpt_oss_dense", GPT_OSS, fuse=False).loaded.model
    folder = load_model(PARITY / "gpt_oss_dense", dtype="float32").model
    for layer in range(3):
        check_split_experts(loaded, folder, layer)
        for name in ("router.weight", "router.bias"):
            module, param = name.split(".")
            assert mx.array_equal(loaded.model.layers[layer].mlp[module][param],
                                  folder.model.layers[layer].mlp[module][param])
        assert mx.array_equal(loaded.model.layers[layer].self_attn.sinks, folder.model.layers[layer].self_attn.sinks)


def test_mxfp4_experts_keep_the_checkpoints_codes(parity_gguf):
    """Held as stored, the file's MXFP4 experts are mxfp4 QuantizedSwitchLinear layers whose packed codes and
    scales equal those of the folder's MXFP4 blocks, bit for bit: the converter's nibble reordering undone by
    mlxd's repacking. They give transformers' logits through gather_qmm, gate and up fused as served or not."""
    _, loaded, _, expected = parity_gguf("gpt_oss", GPT_OSS, dtype="keep", fuse=False)
    assert loaded.dtype == "float32"
    check_mxfp4_experts(loaded, parity_gguf("gpt_oss", GPT_OSS, dtype="keep").loaded, expected)


def check_split_experts(loaded, folder, layer: int) -> None:
    """The layer's float experts, gate, up and down with their biases, equal the folder's."""
    for name in PROJECTIONS:
        ours, theirs = _experts(loaded, layer)[name], _experts(folder, layer)[name]
        assert isinstance(ours, SwitchLinear)
        assert mx.array_equal(ours.weight, theirs.weight) and mx.array_equal(ours.bias, theirs.bias), name


def check_mxfp4_experts(loaded, served, expected) -> None:
    """`loaded` (unfused) holds the MXFP4 experts as mxfp4 QuantizedSwitchLinear layers with the folder's codes,
    scales and biases bit for bit and gives transformers' logits; `served` (fused) gives the same logits."""
    folder = load_model(PARITY / "gpt_oss", dtype="keep", fuse=False).model
    assert loaded.quantized
    for layer in range(3):
        for name in PROJECTIONS:
            ours, theirs = _experts(loaded.model, layer)[name], _experts(folder, layer)[name]
            assert isinstance(ours, QuantizedSwitchLinear)
            assert (ours.mode, ours.bits, ours.group_size) == ("mxfp4", 4, 32)
            for param in ("weight", "scales", "bias"):
                assert mx.array_equal(ours[param], theirs[param]), (layer, name, param)
    tokens = expected["input_ids"]
    logits = loaded.model(tokens)
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL
    assert isinstance(_experts(served.model, 0).gate_up_proj, QuantizedSwitchLinear)
    assert mx.abs(served.model(tokens) - logits).max().item() < SELF_TOL


def test_q8_0_experts_stay_quantized_with_the_files_codes(parity_gguf):
    """Held as stored, the dense folder's Q8_0 file keeps its experts as 8-bit QuantizedSwitchLinear layers (with
    their float biases) whose codes and scales are the file's, and computes in float16 near the float32 model
    holding the same values. (The MXFP4 folder's Q8_0 file is left out of this bound: its Q8_0 values bring a
    layer-2 router within 0.0013 of a tie on the prompt, which float16 rounding flips; in float32 it is exact.)"""
    _, loaded, stored, expected = parity_gguf("gpt_oss_dense", GPT_OSS, "Q8_0", dtype="keep", fuse=False)
    assert loaded.quantized and loaded.dtype == "float16"
    for layer in range(3):
        for name in PROJECTIONS:
            q = _experts(loaded.model, layer)[name]
            assert isinstance(q, QuantizedSwitchLinear) and (q.mode, q.bits, q.group_size) == ("affine", 8, 32)
            values = mx.dequantize(q.weight, q.scales.astype(mx.float32), q.biases.astype(mx.float32),
                                   group_size=32, bits=8, dtype=mx.float32)
            assert mx.array_equal(values, stored[f"model.layers.{layer}.mlp.switch_mlp.{name}.weight"]), name
    reference = load_model(PARITY / "gpt_oss_dense", dtype="float32").model
    reference.load_weights(list(reference.sanitize(dict(stored)).items()), strict=False)
    tokens = expected["input_ids"]
    assert mx.abs(loaded.model(tokens).astype(mx.float32) - reference(tokens)).max().item() < HALF_TOL


@pytest.mark.parametrize("fixture", FIXTURES)
def test_tokenizer_and_template_match_the_folders(parity_gguf, fixture):
    """The fixture's tokenizer splits as GPT-2 does (tokenizer.ggml.pre "gpt-2"); gpt-oss's own o200k splitting
    ("gpt-4o") is checked against its published regex in test_gguf_pre_tokenizers.py."""
    tokenizer = load_gguf_tokenizer(parity_gguf(fixture, GPT_OSS).path)
    reference = tokenizers.Tokenizer.from_file(str(PARITY / fixture / "tokenizer.json"))
    for text in ["Hello world!", "it's 2024, isn't it?\n\n  spaced   out", "<bos>x<eos> y", "çà 日本"]:
        assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text, add_special_tokens=False).ids
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert tokenizer.apply_chat_template(messages) == load_tokenizer(PARITY / fixture).apply_chat_template(messages)
