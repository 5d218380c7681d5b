"""load_gguf_model end to end on tiny GGUF files written like llama.cpp's converter writes them."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf import load_gguf_model
from mlxd.loading.loader import DEFAULT_CONTEXT_LENGTH
from tests.gguf.tiny_gguf import write_tiny_llama

TOKENS = mx.array([[3, 17, 42, 5, 88, 1, 60, 9]], dtype=mx.int32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_llama(path)


def test_float32_logits_match_the_reference(tiny):
    path, reference = tiny
    loaded = load_gguf_model(path, dtype="float32")
    assert not loaded.quantized
    assert loaded.quantization["tensor_types"]["Q4_0"] == 2
    np.testing.assert_allclose(np.array(loaded.model(TOKENS)), np.array(reference(TOKENS)), atol=1e-4, rtol=1e-4)
    fused = load_gguf_model(path, dtype="float32", fuse=True).model
    assert fused.fused == frozenset(fused.fusable_projections())  # dequantized, every group shares a matmul
    np.testing.assert_allclose(np.array(fused(TOKENS)), np.array(reference(TOKENS)), atol=1e-4, rtol=1e-4)


def test_kept_quantized_layers_hold_the_exact_codes(tiny):
    path, reference = tiny
    loaded = load_gguf_model(path, dtype="keep")
    assert loaded.quantized and loaded.dtype == "float16"
    q_proj = loaded.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, nn.QuantizedLinear) and q_proj.bits == 4
    assert loaded.model.model.layers[0].self_attn.v_proj.bits == 5
    assert isinstance(loaded.model.model.embed_tokens, nn.QuantizedEmbedding)
    assert isinstance(loaded.model.model.layers[0].mlp.up_proj, nn.Linear)  # F16 stays dense
    # Q4_0's float16 scales and biases are exact: widened to float32 they give llama.cpp's values bit for bit.
    scales, biases = q_proj.scales.astype(mx.float32), q_proj.biases.astype(mx.float32)
    got = mx.dequantize(q_proj.weight, scales, biases, group_size=32, bits=4)
    np.testing.assert_array_equal(np.array(got), np.array(reference.model.layers[0].self_attn.q_proj.weight))
    np.testing.assert_allclose(np.array(loaded.model(TOKENS).astype(mx.float32)), np.array(reference(TOKENS)),
                               atol=5e-2, rtol=5e-2)
    # Q4_0 q and Q4_1 k beside a 5-bit v, a Q8_0 gate beside an F16 up: each group stays split when fusing.
    assert not load_gguf_model(path, dtype="keep", fuse=True).model.fused


def test_kept_quantized_projections_of_one_type_share_a_matmul(tmp_path):
    """As Q4_K_M files store most layers: q, k and v of one type (and here gate and up of another)."""
    path = tmp_path / "one-type.gguf"
    write_tiny_llama(path, types={"self_attn.v_proj": "Q4_0", "mlp.up_proj": "Q8_0"})
    split = load_gguf_model(path, dtype="keep").model
    fused = load_gguf_model(path, dtype="keep", fuse=True).model
    qkv, gate_up = fused.layers[1].self_attn.qkv_proj, fused.layers[1].mlp.gate_up_proj
    assert isinstance(qkv, nn.QuantizedLinear) and qkv.bits == 4 and gate_up.bits == 8
    assert mx.array_equal(fused(TOKENS), split(TOKENS))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "mamba"}, "unsupported GGUF architecture 'mamba'"),
        ({"extra_tensor": "rope_freqs.weight"}, "rope_freqs.weight has 4 values; heads of 16 have 8 rotary pairs"),
        ({"extra_tensor": "blk.0.ffn_gate_exps.weight"}, "GGUF tensor blk.0.ffn_gate_exps.weight has no counterpart"),
        ({"drop_tensor": "blk.1.ffn_up.weight"}, "lack model.layers.1.mlp.up_proj.weight"),
    ],
)
def test_load_errors_name_the_cause(tmp_path, kwargs, message):
    path = tmp_path / "bad.gguf"
    write_tiny_llama(path, **kwargs)
    with pytest.raises(ModelLoadError, match=message):
        load_gguf_model(path, dtype="float32")


def test_a_file_without_a_context_length_gets_the_default_one(tiny, tmp_path, caplog):
    """As a folder whose config.json names none (<arch>.context_length is optional): not None, which served nothing."""
    assert load_gguf_model(tiny[0], dtype="float32").context_length == 256
    path = tmp_path / "no-context.gguf"
    write_tiny_llama(path, context_length=None)
    assert load_gguf_model(path, dtype="float32").context_length == DEFAULT_CONTEXT_LENGTH
    assert f"names no context length; assuming {DEFAULT_CONTEXT_LENGTH}" in caplog.text


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_gguf_model(tmp_path / "none.gguf")
    (tmp_path / "x.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_gguf_model(tmp_path / "x.gguf")
