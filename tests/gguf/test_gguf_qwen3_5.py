"""The Qwen3.5 parity fixtures written as llama.cpp writes `qwen35` and `qwen35moe` (qwen35_to_gguf): the file
describes the folder's model (layer kinds from full_attention_interval, DeltaNet sizes from ssm.*, partial rope,
experts and shared expert), F32 gives transformers' logits and greedy ids, Q8_0 computes with the values it stores,
in chunks and steps as in one pass, its matrices held as the file's 8-bit codes."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from gguf import MODEL_ARCH_NAMES, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES

from mlxd.loading.gguf import load_gguf_model
from mlxd.loading.gguf.names import hf_name
from mlxd.loading.gguf.reader import read_gguf
from mlxd.loading.loader import load_model
from mlxd.models.moe import QuantizedSwitchLinear
from tests.gguf.hf_to_gguf import PARITY
from tests.gguf.qwen35_to_gguf import ARCHS, reorder_value_heads, write_qwen35_gguf
from tests.helpers.parity_checks import (
    assert_chunks_and_steps_match,
    assert_computes_with_stored_values,
    assert_matches_transformers,
    expected_results,
    files_written_once,
)

FIXTURES = ["qwen3_5", "qwen3_5_moe"]
LOGIT_TOL = 1e-3  # the bar, as tests/models/test_qwen3_5_parity.py
SELF_TOL = 1e-4
# Held quantized, computing in float16, against the folder's model in float32 holding the same values: measured
# 0.093. Q8_0 held as MLX affine codes offset by 128 (d * q - 128 d) rounds in float16 where ggml's d * (q -
# 128) does not; each kept group of layers alone moves the logits by 0.03-0.05, the folder's model moves by 0.024
# from float32 to float16, and a mistake (value heads read in the checkpoint's grouped order) by 3.96.
HALF_TOL = 0.15
ARGS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "rotary_dims", "layer_types", "linear_conv_kernel_dim", "linear_key_head_dim",
        "linear_value_head_dim", "linear_num_key_heads", "linear_num_value_heads", "vocab_size",
        "tie_word_embeddings", "max_position_embeddings")
MOE_ARGS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    return files_written_once(tmp_path_factory, write_qwen35_gguf)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_the_file_describes_the_folders_model(gguf_file, fixture):
    loaded = load_gguf_model(gguf_file(fixture)[0], dtype="float32")
    folder = load_model(PARITY / fixture, dtype="float32").args
    args = loaded.args
    assert loaded.model_type == f"{fixture}_text"
    for name in ARGS + (MOE_ARGS if fixture.endswith("moe") else ("intermediate_size",)):
        assert getattr(args, name) == getattr(folder, name), name
    assert args.rope_parameters["rope_theta"] == folder.rope_parameters["rope_theta"]
    assert np.float32(args.rms_norm_eps) == np.float32(folder.rms_norm_eps)  # GGUF keeps a float32
    # The file's value heads are tiled (llama.cpp's order), the folder's grouped by key head.
    assert (args.linear_value_head_order, folder.linear_value_head_order) == ("tiled", "grouped")


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_f32_logits_and_greedy_ids_match_transformers(gguf_file, fixture, fuse):
    model = load_gguf_model(gguf_file(fixture)[0], dtype="float32", fuse=fuse).model
    expected = expected_results(fixture)
    assert_matches_transformers(model, model(expected["input_ids"]), expected, LOGIT_TOL)


def _kept_f32(name: str, shape: tuple[int, ...]) -> bool:
    """What the converter keeps F32 whatever the output type: vectors, norms, routers, the conv, bare parameters."""
    return (len(shape) == 1 or name.endswith(("_norm.weight", ".ffn_gate_inp.weight", ".ffn_gate_inp_shexp.weight",
                                              ".ssm_conv1d.weight")) or not name.endswith(".weight"))


@pytest.mark.parametrize("fixture", FIXTURES)
def test_q8_0_file_computes_with_its_stored_values_in_chunks_and_steps(gguf_file, fixture):
    """Matrices and stacked experts in Q8_0 (the shared expert's down projection, 40 wide, in F16 as the converter
    falls back), the rest F32; the reference is the folder's model holding the stored values."""
    path, stored = gguf_file(fixture, "Q8_0")
    model = load_gguf_model(path, dtype="float32", fuse=True).model
    expected = expected_results(fixture)
    tokens = expected["input_ids"]
    logits = model(tokens)
    assert_computes_with_stored_values(logits, fixture, stored, tokens, LOGIT_TOL)
    assert_chunks_and_steps_match(model, tokens, logits, expected["greedy_ids"][:6], 7, SELF_TOL)
    for t in read_gguf(path).tensors:
        if _kept_f32(t.name, t.shape):
            assert t.type_name == "F32", t.name
        else:
            assert t.type_name == ("Q8_0" if t.shape[-1] % 32 == 0 else "F16"), t.name


def test_kept_quantized_layers_hold_the_files_codes(gguf_file):
    """dtype "keep" (a GPU's choice): every Q8_0 matrix stays 8-bit codes (the DeltaNet's fused input projection
    and out_proj, attention, MLP, embeddings and head), computing in float16 close to the folder's model holding
    the stored values."""
    path, stored = gguf_file("qwen3_5", "Q8_0")
    loaded = load_gguf_model(path, dtype="keep", fuse=True)
    assert loaded.dtype == "float16"
    model = loaded.model
    layers = model.layers
    for layer in (layers[0].linear_attn.in_proj, layers[0].linear_attn.out_proj, layers[1].self_attn.qkv_proj,
                  layers[1].self_attn.o_proj, layers[1].mlp.gate_up_proj, model.lm_head, model.model.embed_tokens):
        assert getattr(layer, "bits", None) == 8, layer
    reference = load_model(PARITY / "qwen3_5", dtype="float32").model
    reference.load_weights(list(reference.sanitize(dict(stored)).items()), strict=False)
    tokens = expected_results("qwen3_5")["input_ids"]
    difference = model(tokens).astype(mx.float32) - reference(tokens)
    assert mx.abs(difference).max().item() < HALF_TOL


def _dequantized(layer) -> mx.array:
    """A kept layer's values, dequantized in float32 (exact for Q8_0's float16 scale d and bias -128 d)."""
    return mx.dequantize(layer.weight, layer.scales.astype(mx.float32), layer.biases.astype(mx.float32),
                         group_size=layer.group_size, bits=layer.bits)


def test_kept_experts_hold_the_files_codes(gguf_file):
    """The MoE file held as stored: routed experts as 8-bit QuantizedSwitchLinear layers and the shared expert's
    Q8_0 projections quantized, each holding exactly the stored values (its F16 down projection dense). Not
    compared by logits: in float16 a few tokens' router logits tie differently (other experts at 2-6 of 150
    positions per layer, measured), which the recurrent state then carries on."""
    path, stored = gguf_file("qwen3_5_moe", "Q8_0")
    model = load_gguf_model(path, dtype="keep").model
    for i, layer in enumerate(model.layers):
        mlp, prefix = layer.mlp, f"model.language_model.layers.{i}.mlp"
        gate, up = mx.split(stored[f"{prefix}.experts.gate_up_proj"], 2, axis=1)
        for held, values in ((mlp.switch_mlp.gate_proj, gate), (mlp.switch_mlp.up_proj, up),
                             (mlp.switch_mlp.down_proj, stored[f"{prefix}.experts.down_proj"]),
                             (mlp.shared_expert.gate_proj, stored[f"{prefix}.shared_expert.gate_proj.weight"])):
            assert getattr(held, "bits", None) == 8
            assert mx.array_equal(_dequantized(held), values)
        assert isinstance(mlp.switch_mlp.down_proj, QuantizedSwitchLinear)
        down = stored[f"{prefix}.shared_expert.down_proj.weight"]
        assert mx.array_equal(mlp.shared_expert.down_proj.weight, down.astype(mx.float16))


@pytest.mark.parametrize("fixture", FIXTURES)
def test_every_tensor_of_the_gguf_package_has_a_name(fixture):
    """MODEL_TENSORS of qwen35/qwen35moe, but the fused gate_up experts (the converter's --fuse-gate-up-exps, off
    by default), which mlxd refuses by name."""
    arch = MODEL_ARCH_NAMES[ARCHS[fixture]]
    model_type = f"{fixture}_text"
    for tensor in MODEL_TENSORS[ARCHS[fixture]]:
        name = TENSOR_NAMES[tensor].format(bid=3)
        if tensor == MODEL_TENSOR.FFN_GATE_UP_EXP:
            continue
        suffix = {MODEL_TENSOR.SSM_A: "", MODEL_TENSOR.SSM_DT: ".bias"}.get(tensor, ".weight")
        assert hf_name(name + suffix, arch, model_type)
    assert hf_name("blk.3.ssm_a", arch, model_type) == "model.layers.3.linear_attn.A_log"
    assert hf_name("blk.3.ssm_dt.bias", arch, model_type) == "model.layers.3.linear_attn.dt_bias"


def test_value_heads_go_back_and_forth():
    """The writer's reorder is a permutation of whole heads that its inverse undoes (what the stored values of the
    Q8_0 test rely on), and it moves the value part only."""
    hp = {"linear_num_key_heads": 2, "linear_num_value_heads": 6, "linear_key_head_dim": 3, "linear_value_head_dim": 2}
    qkv = np.arange((12 + 12) * 5, dtype=np.float32).reshape(24, 5)
    tiled = reorder_value_heads("model.layers.0.linear_attn.in_proj_qkv.weight", qkv, hp)
    np.testing.assert_array_equal(tiled[:12], qkv[:12])
    # Grouped heads (k0: v0 v1 v2, k1: v3 v4 v5) tiled: v0 v3 v1 v4 v2 v5.
    heads = tiled[12:].reshape(6, 2, 5)[:, 0, 0]
    np.testing.assert_array_equal(heads, qkv[12:].reshape(6, 2, 5)[[0, 3, 1, 4, 2, 5], 0, 0])
    back = reorder_value_heads("model.layers.0.linear_attn.in_proj_qkv.weight", tiled, hp, back=True)
    np.testing.assert_array_equal(back, qkv)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_the_mtp_head_the_converter_appends_is_skipped(tmp_path, fixture):
    """A file with the MTP head (block_count one more than the model's layers, nextn_predict_layers 1, the head's
    layer and nextn.* tensors as block 4) loads the model's 4 layers and computes as the file without it."""
    path = tmp_path / f"{fixture}-mtp.gguf"
    write_qwen35_gguf(fixture, path, with_mtp=True)
    assert any(t.name == "blk.4.nextn.eh_proj.weight" for t in read_gguf(path).tensors)
    loaded = load_gguf_model(path, dtype="float32")
    assert loaded.args.num_hidden_layers == 4 and len(loaded.model.layers) == 4
    expected = expected_results(fixture)
    assert mx.abs(loaded.model(expected["input_ids"])[0] - expected["logits"]).max().item() < LOGIT_TOL
