"""The MoE parity fixtures (qwen3_moe, mixtral) as GGUF files, beyond test_gguf_parity.py's rows (F32 against
transformers, Q8_0 against its stored values, tokenizer): the model llama.cpp's keys describe, decode with cache
against the full pass, and experts kept quantized, as stacked quantized experts (QuantizedSwitchLinear, gathered
quantized matmuls) holding the file's codes."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxd.errors import ModelLoadError
from mlxd.loading.loader import load_model
from mlxd.models.moe import QuantizedSwitchLinear, SparseMoe
from tests.gguf.hf_to_gguf import PARITY
from tests.helpers.parity_checks import greedy_with_cache, max_decode_error, prefill_in_chunks

MOE = [("qwen3_moe", "qwen3moe"), ("mixtral", "llama")]
LOGIT_TOL = 1e-3  # as test_gguf_parity.py and tests/models/test_model_parity.py
SELF_TOL = 1e-4  # as tests/models/test_model_parity.py: the same weights, another order of operations
# A file quantized throughout, held as stored, computes in float16 (loaded.dtype): against the float32 reference
# holding the same values, the bound of test_gguf_load.py's kept-quantized layers.
HALF_TOL = 5e-2
# qtype (hf_to_gguf.QTYPES) -> how its experts are held: (bits, mode), group size 32.
KEPT = {"Q8_0": (8, "affine"), "Q4_1": (4, "affine"), "MXFP4_MOE": (4, "mxfp4")}
# How its matrices other than experts and routers are held.
MATRIX_BITS = {"Q8_0": 8, "Q4_1": 4, "MXFP4_MOE": 8}
ARGS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
        "head_dim", "rope_parameters", "vocab_size", "tie_word_embeddings", "sliding_window", "layer_types",
        "num_experts_per_tok")
MOE_ARGS = {"qwen3_moe": ("num_experts", "moe_intermediate_size", "norm_topk_prob", "mlp_only_layers",
                          "decoder_sparse_step"),
            "mixtral": ("num_local_experts",)}


def _moe_layers(model: nn.Module) -> dict[int, SparseMoe]:
    return {i: block.get("block_sparse_moe", block.get("mlp")) for i, block in enumerate(model.model.layers)
            if isinstance(block.get("block_sparse_moe", block.get("mlp")), SparseMoe)}


@pytest.fixture(scope="module")
def reference():
    """Factory (fixture, stored) -> the Hugging Face folder's model in float32 with each quantized weight replaced
    by the value the GGUF file stores (hf_to_gguf.write_gguf's result)."""

    def get(fixture: str, stored: dict[str, mx.array]):
        loaded = load_model(PARITY / fixture, dtype="float32")
        loaded.model.load_weights(list(loaded.model.sanitize(dict(stored)).items()), strict=False)
        return loaded.model

    return get


@pytest.mark.parametrize("fixture,arch", MOE)
def test_the_file_describes_the_folders_model(parity_gguf, fixture, arch):
    """expert_count, expert_used_count, expert_feed_forward_length and the routers present give the folder's
    ModelArgs: Qwen3-MoE renormalizing its top k (norm_topk_prob) and its layer 1 dense (mlp_only_layers)."""
    loaded = parity_gguf(fixture, arch).loaded
    folder = load_model(PARITY / fixture, dtype="float32")
    for name in ARGS + MOE_ARGS[fixture]:
        assert getattr(loaded.args, name) == getattr(folder.args, name), name
    assert loaded.args.rms_norm_eps == pytest.approx(folder.args.rms_norm_eps)  # a float32 in the file
    assert sorted(_moe_layers(loaded.model)) == sorted(_moe_layers(folder.model))


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("fixture,arch", MOE)
def test_decode_with_cache_equals_the_full_pass(parity_gguf, fixture, arch, qtype):
    _, loaded, _, expected = parity_gguf(fixture, arch, qtype)
    tokens = expected["input_ids"]
    assert max_decode_error(loaded.model, tokens, expected["greedy_ids"]) < SELF_TOL
    assert mx.abs(prefill_in_chunks(loaded.model, tokens, 7)[0] - loaded.model(tokens)).max().item() < SELF_TOL


@pytest.mark.parametrize("qtype", sorted(KEPT))
@pytest.mark.parametrize("fixture,arch", MOE)
def test_quantized_experts_stay_quantized_with_the_files_codes(parity_gguf, reference, fixture, arch, qtype):
    """Held as stored (dtype "keep": on the GPU, or where a float32 copy would not fit), each projection's experts
    are one quantized [E, out, in] layer whose codes and scales are the file's, bit for bit; the routers stay
    float (llama.cpp keeps them F32)."""
    _, loaded, stored, expected = parity_gguf(fixture, arch, qtype, dtype="keep", fuse=False)
    want = reference(fixture, stored)
    bits, mode = KEPT[qtype]
    assert loaded.quantized and loaded.dtype == "float16"
    for layer, moe in _moe_layers(loaded.model).items():
        assert type(moe.gate) is nn.Linear
        for name in ("gate_proj", "up_proj", "down_proj"):
            q = moe.switch_mlp[name]
            assert isinstance(q, QuantizedSwitchLinear) and (q.bits, q.mode, q.group_size) == (bits, mode, 32)
            # float16 scales hold Q8_0's and Q4_1's float16 block scales exactly; mxfp4's are E8M0 bytes.
            scales, biases = q.scales, q.get("biases")
            if mode == "affine":
                scales, biases = scales.astype(mx.float32), biases.astype(mx.float32)
            values = mx.dequantize(q.weight, scales, biases, group_size=32, bits=bits, mode=mode, dtype=mx.float32)
            assert mx.array_equal(values, _moe_layers(want)[layer].switch_mlp[name].weight), (layer, name)
    if fixture == "qwen3_moe":  # the dense layer's MLP, a matrix of the file's type
        assert loaded.model.model.layers[1].mlp.gate_proj.bits == MATRIX_BITS[qtype]
    tokens = expected["input_ids"]
    logits = loaded.model(tokens)
    assert mx.abs(logits.astype(mx.float32) - want(tokens)).max().item() < HALF_TOL
    served = parity_gguf(fixture, arch, qtype, dtype="keep").loaded.model  # gate and up experts share one matmul
    assert all(isinstance(moe.switch_mlp.gate_up_proj, QuantizedSwitchLinear)
               for moe in _moe_layers(served).values())
    assert mx.array_equal(served(tokens), logits)


@pytest.mark.parametrize("qtype", ["Q8_0_EXPERTS", "MXFP4_EXPERTS"])
@pytest.mark.parametrize("fixture,arch", MOE)
def test_quantized_experts_beside_f32_weights_compute_in_float32(parity_gguf, reference, fixture, arch, qtype):
    """A file whose experts alone are quantized (llama.cpp's gpt-oss conversion with --outtype f32 keeps its MXFP4
    experts so) held as stored is float32 with quantized experts: the gathered quantized matmuls give the logits
    of the float32 model holding the same values, at the float32 bar."""
    _, loaded, stored, expected = parity_gguf(fixture, arch, qtype, dtype="keep")
    want = reference(fixture, stored)
    assert loaded.quantized and loaded.dtype == "float32"
    for moe in _moe_layers(loaded.model).values():
        assert isinstance(moe.switch_mlp.gate_up_proj, QuantizedSwitchLinear)
        assert isinstance(moe.switch_mlp.down_proj, QuantizedSwitchLinear)
    tokens = expected["input_ids"]
    assert mx.abs(loaded.model(tokens) - want(tokens)).max().item() < LOGIT_TOL
    assert greedy_with_cache(loaded.model, tokens, 16) == greedy_with_cache(want, tokens, 16)
    assert max_decode_error(loaded.model, tokens, expected["greedy_ids"]) < SELF_TOL


@pytest.mark.skipif(mx.default_device() != mx.cpu, reason="the CPU's rule")
def test_float_experts_in_bfloat16_on_the_cpu_are_refused_and_quantized_ones_kept(parity_gguf):
    # MLX's CPU gather_mm multiplies float32 only (loading/loader.py plan_dtype); gather_qmm takes bfloat16.
    with pytest.raises(ModelLoadError, match="float experts in float32 only"):
        parity_gguf("qwen3_moe", "qwen3moe", "F32", dtype="bfloat16")
    loaded = parity_gguf("qwen3_moe", "qwen3moe", "Q8_0", dtype="bfloat16").loaded
    assert any(isinstance(m, QuantizedSwitchLinear) for _, m in loaded.model.named_modules())
    logits = loaded.model(mx.array([[1, 5, 9]]), cache=loaded.model.make_cache())
    assert logits.dtype == mx.bfloat16 and bool(mx.isfinite(logits).all())
