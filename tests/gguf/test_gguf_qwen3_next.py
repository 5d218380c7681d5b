"""A Qwen3-Next parity fixture written as llama.cpp writes `qwen3next` (qwen3next_to_gguf): the file describes the
folder's model (value heads grouped by key head, every layer MoE), F32 gives transformers' logits and greedy ids,
Q8_0 computes with the values it stores, in chunks and steps as in one pass.

The fixture is qwen3_next_all_moe (tests/fixtures/parity/qwen3_next/make_fixture.py all_moe: the qwen3_next fixture
with every layer MoE, computed by transformers), since llama.cpp's qwen3next tensor table has no dense MLP for the
qwen3_next fixture's layer 2."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf import load_gguf_model
from mlxd.loading.gguf.names import hf_name
from mlxd.loading.gguf.qwen35 import qwen35_config
from mlxd.loading.gguf.reader import read_gguf
from mlxd.loading.loader import load_model
from tests.gguf.hf_to_gguf import PARITY
from tests.gguf.qwen3next_to_gguf import _split_qkvz, write_qwen3next_gguf
from tests.helpers.parity_checks import (
    assert_chunks_and_steps_match,
    assert_computes_with_stored_values,
    assert_matches_transformers,
    expected_results,
    files_written_once,
)

FIXTURE = "qwen3_next_all_moe"
LOGIT_TOL = 1e-3  # the bar, as tests/models/test_qwen3_next.py
SELF_TOL = 1e-4
ARGS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "rotary_dims", "layer_types", "linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim",
        "linear_num_key_heads", "linear_num_value_heads", "vocab_size", "tie_word_embeddings",
        "max_position_embeddings", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
        "shared_expert_intermediate_size", "norm_topk_prob", "mlp_only_layers", "decoder_sparse_step",
        "linear_value_head_order")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    return files_written_once(tmp_path_factory, write_qwen3next_gguf)


def test_the_folder_matches_transformers():
    """The fixture itself, as the safetensors folder: the qwen3_next model within the bar."""
    expected = expected_results(FIXTURE)
    model = load_model(PARITY / FIXTURE, dtype="float32").model
    assert_matches_transformers(model, model(expected["input_ids"]), expected, LOGIT_TOL)


def test_the_file_describes_the_folders_model(gguf_file):
    loaded = load_gguf_model(gguf_file(FIXTURE)[0], dtype="float32")
    folder = load_model(PARITY / FIXTURE, dtype="float32").args
    assert loaded.model_type == "qwen3_next"
    for name in ARGS:
        assert getattr(loaded.args, name) == getattr(folder, name), name
    assert loaded.args.linear_value_head_order == "grouped"
    assert loaded.args.rope_parameters["rope_theta"] == folder.rope_parameters["rope_theta"]


@pytest.mark.parametrize("fuse", [True, False])
def test_f32_logits_and_greedy_ids_match_transformers(gguf_file, fuse):
    model = load_gguf_model(gguf_file(FIXTURE)[0], dtype="float32", fuse=fuse).model
    expected = expected_results(FIXTURE)
    assert_matches_transformers(model, model(expected["input_ids"]), expected, LOGIT_TOL)


def test_q8_0_file_computes_with_its_stored_values_in_chunks_and_steps(gguf_file):
    """Matrices and stacked experts in Q8_0 (the shared experts' down projections, 40 wide, in F16 as the converter
    falls back), the rest F32; the reference is the folder's model holding the stored values."""
    path, stored = gguf_file(FIXTURE, "Q8_0")
    model = load_gguf_model(path, dtype="float32", fuse=True).model
    expected = expected_results(FIXTURE)
    tokens = expected["input_ids"]
    logits = model(tokens)
    assert_computes_with_stored_values(logits, FIXTURE, stored, tokens, LOGIT_TOL)
    assert_chunks_and_steps_match(model, tokens, logits, expected["greedy_ids"][:6], 7, SELF_TOL)
    kinds = {t.name: t.type_name for t in read_gguf(path).tensors}
    assert kinds["blk.0.attn_qkv.weight"] == kinds["blk.0.ssm_ba.weight"] == kinds["blk.1.ffn_gate_exps.weight"] \
        == "Q8_0"
    assert kinds["blk.0.ffn_down_shexp.weight"] == "F16" and kinds["blk.0.ssm_conv1d.weight"] == "F32"


def test_every_tensor_of_the_gguf_package_has_a_name():
    """MODEL_TENSORS of qwen3next, but the fused gate_up experts (off by default in the converter) and ssm_in (the
    converter writes in_proj_qkvz as attn_qkv and attn_gate)."""
    arch = MODEL_ARCH_NAMES[MODEL_ARCH.QWEN3NEXT]
    for tensor in MODEL_TENSORS[MODEL_ARCH.QWEN3NEXT]:
        if tensor in (MODEL_TENSOR.FFN_GATE_UP_EXP, MODEL_TENSOR.SSM_IN):
            continue
        suffix = {MODEL_TENSOR.SSM_A: "", MODEL_TENSOR.SSM_DT: ".bias"}.get(tensor, ".weight")
        assert hf_name(TENSOR_NAMES[tensor].format(bid=3) + suffix, arch, "qwen3_next")
    assert hf_name("blk.3.ssm_ba.weight", arch, "qwen3_next") == "model.layers.3.linear_attn.in_proj_ba.weight"


def test_the_writers_qkvz_split_takes_each_key_heads_rows():
    """in_proj_qkvz's rows [q0 k0 v0 z0 | q1 k1 v1 z1] become [q0 q1 k0 k1 v0 v1] and [z0 z1]."""
    hp = {"linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 1,
          "linear_value_head_dim": 1}
    rows = np.array([[r] for r in ("q0", "k0", "v0a", "v0b", "z0a", "z0b", "q1", "k1", "v1a", "v1b", "z1a", "z1b")])
    qkv, z = _split_qkvz(rows, hp)
    assert qkv[:, 0].tolist() == ["q0", "q1", "k0", "k1", "v0a", "v0b", "v1a", "v1b"]
    assert z[:, 0].tolist() == ["z0a", "z0b", "z1a", "z1b"]


def test_a_qwen3next_file_with_a_dense_block_is_refused_by_name(gguf_file):
    """llama.cpp's qwen3next has no dense MLP: a file whose block lacks the router is not one it writes."""
    gguf = read_gguf(gguf_file(FIXTURE)[0])
    shapes = {t.name: tuple(t.shape) for t in gguf.tensors if t.name != "blk.2.ffn_gate_inp.weight"}
    with pytest.raises(ModelLoadError, match=r"blocks \[2\] have no experts"):
        qwen35_config(gguf.metadata, shapes)
