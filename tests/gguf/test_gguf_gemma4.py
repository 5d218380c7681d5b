"""The Gemma 4 parity fixtures written as llama.cpp writes `gemma4` (gemma4_to_gguf): the file describes the
folder's model (layer kinds, head sizes, kv heads, KV sharing, double-wide MLP, per-layer embeddings, K=V, experts,
the full layers' proportional rope as rope_freqs.weight), F32 gives transformers' logits and greedy ids, Q8_0
computes with the values it stores, in chunks and steps as in one pass."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from gguf import MODEL_ARCH, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES

from mlxd.loading.gguf import load_gguf_model
from mlxd.loading.gguf.names import GEMMA4, hf_name
from mlxd.loading.gguf.reader import read_gguf
from mlxd.loading.loader import load_model
from mlxd.models.gemma4.attention import make_gemma4_rope
from mlxd.models.moe import QuantizedSwitchLinear
from mlxd.models.rope import make_rope
from tests.gguf.gemma4_to_gguf import write_gemma4_gguf
from tests.gguf.hf_to_gguf import PARITY
from tests.helpers.parity_checks import (
    assert_chunks_and_steps_match,
    assert_computes_with_stored_values,
    assert_matches_transformers,
    expected_results,
    files_written_once,
)

FIXTURES = ["gemma4", "gemma4_moe"]
LOGIT_TOL = 2e-4  # as tests/models/test_gemma4.py (HYBRID_NOTES.md §0)
SELF_TOL = 1e-4
# Held quantized, computing in float16: Gemma 4's unscaled attention makes float16 rounding large (the folder's
# model moves by 0.044 from float32 to float16, Gemma 3's by 0.008), and two float16 computations of the same
# values differ by up to 0.1 here; a mistake moves these soft-capped logits by 0.4 or more (HYBRID_NOTES.md §3).
HALF_TOL = 0.2
ARGS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
        "head_dim", "layer_types", "sliding_window", "num_kv_shared_layers", "use_double_wide_mlp",
        "hidden_size_per_layer_input", "attention_k_eq_v", "enable_moe_block",
        "num_experts", "top_k_experts", "moe_intermediate_size", "final_logit_softcapping", "vocab_size")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    return files_written_once(tmp_path_factory, write_gemma4_gguf)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_the_file_describes_the_folders_model(gguf_file, fixture):
    loaded = load_gguf_model(gguf_file(fixture)[0], dtype="float32")
    folder = load_model(PARITY / fixture, dtype="float32").args.text
    args = loaded.args.text
    assert loaded.model_type == "gemma4_text"
    for name in ARGS:
        assert getattr(args, name) == getattr(folder, name), name
    if folder.hidden_size_per_layer_input:
        assert args.vocab_size_per_layer_input == folder.vocab_size_per_layer_input
    n = args.num_hidden_layers
    assert [(args.head_size(i), args.kv_heads(i), args.kv_source(i)) for i in range(n)] == \
        [(folder.head_size(i), folder.kv_heads(i), folder.kv_source(i)) for i in range(n)]
    full = args.rope_parameters["full_attention"]
    assert full["rope_type"] == "freq_factors" and full["rope_theta"] == folder.rope_parameters[
        "full_attention"]["rope_theta"]
    assert args.rope_parameters["sliding_attention"] == folder.rope_parameters["sliding_attention"]


@pytest.mark.parametrize("fixture", FIXTURES)
def test_f32_logits_and_greedy_ids_match_transformers(gguf_file, fixture):
    model = load_gguf_model(gguf_file(fixture)[0], dtype="float32", fuse=True).model
    expected = expected_results(fixture)
    assert_matches_transformers(model, model(expected["input_ids"]), expected, LOGIT_TOL)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_q8_0_file_computes_with_its_stored_values_in_chunks_and_steps(gguf_file, fixture):
    """Matrices and stacked experts in Q8_0 (rows shorter than a 32-value block in F16, as the converter falls
    back), routers and 1-D tensors F32; the reference is the folder's model holding the stored values."""
    path, stored = gguf_file(fixture, "Q8_0")
    model = load_gguf_model(path, dtype="float32", fuse=True).model
    tokens = expected_results(fixture)["input_ids"]
    logits = model(tokens)
    assert_computes_with_stored_values(logits, fixture, stored, tokens, LOGIT_TOL)
    assert_chunks_and_steps_match(model, tokens, logits, expected_results(fixture)["greedy_ids"][:6], 6, SELF_TOL)
    for t in read_gguf(path).tensors:
        if len(t.shape) == 1 or ".ffn_gate_inp." in t.name:
            assert t.type_name == "F32", t.name
        else:
            assert t.type_name == ("Q8_0" if t.shape[-1] % 32 == 0 else "F16"), t.name


def test_kept_quantized_layers_hold_the_files_codes(gguf_file):
    """dtype "keep" (a GPU's choice): matrices stay Q8_0's 8-bit codes, computing in float16 (against the folder's
    model in float16 holding the stored values); the stacked gate/up experts too, as one quantized layer."""
    path, stored = gguf_file("gemma4", "Q8_0")
    loaded = load_gguf_model(path, dtype="keep", fuse=True)
    assert loaded.dtype == "float16" and loaded.model.layers[0].self_attn.qkv_proj.bits == 8
    reference = load_model(PARITY / "gemma4", dtype="float16").model
    values = {k: v.astype(mx.float16) for k, v in stored.items()}
    reference.load_weights(list(reference.sanitize(values).items()), strict=False)
    tokens = expected_results("gemma4")["input_ids"]
    difference = loaded.model(tokens).astype(mx.float32) - reference(tokens).astype(mx.float32)
    assert mx.abs(difference).max().item() < HALF_TOL
    moe = load_gguf_model(gguf_file("gemma4_moe", "Q8_0")[0], dtype="keep").model
    experts = moe.layers[0].moe.switch_mlp.gate_up_proj
    assert isinstance(experts, QuantizedSwitchLinear) and experts.bits == 8


def test_every_gemma4_tensor_of_the_gguf_package_has_a_name():
    """Text tensors of MODEL_TENSORS[GEMMA4], but rope_freqs (read into the config) and output (the head is the
    embeddings); plus the two `.scale` tensors llama.cpp's converter adds."""
    skip = {MODEL_TENSOR.ROPE_FREQS, MODEL_TENSOR.OUTPUT}
    for tensor in MODEL_TENSORS[MODEL_ARCH.GEMMA4]:
        if tensor not in skip:
            assert hf_name(TENSOR_NAMES[tensor].format(bid=3) + ".weight", GEMMA4, "gemma4_text")
    assert hf_name("blk.3.ffn_gate_inp.scale", GEMMA4) == "model.layers.3.router.scale"
    assert hf_name("blk.3.ffn_down_exps.scale", GEMMA4) == "model.layers.3.router.per_expert_scale"


def test_rope_freqs_of_the_full_layers_rotate_as_proportional_rope():
    """1 for the first p * D / 2 pairs, 1e30 for the others (llama.cpp's way to leave them unrotated)."""
    dims, theta = 32, 500_000.0
    factors = [1.0] * 4 + [1e30] * 12
    x = mx.random.normal((1, 2, 5, dims), key=mx.random.key(0))
    proportional = make_gemma4_rope(dims, {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                           "rope_theta": theta})
    by_factors = make_rope(dims, {"rope_type": "freq_factors", "rope_theta": theta, "freq_factors": factors})
    np.testing.assert_allclose(np.array(by_factors(x, offset=3000)), np.array(proportional(x, offset=3000)),
                               atol=1e-4)
