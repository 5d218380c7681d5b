"""Nemotron-H's parity fixture as llama.cpp writes it (architecture nemotron_h_moe, nemotron_to_gguf), loaded through
the normal GGUF loader: the folder's model, transformers' logits within the issue's 1e-3, greedy ids, cached decode,
chunked prefill and the Mamba-2 states; Q8_0 computing with its stored values; and what the keys may say."""

from __future__ import annotations

import mlx.core as mx
import pytest
from gguf import MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES

from mlxd.errors import ModelLoadError
from mlxd.loading.gguf.config import hf_config
from mlxd.loading.gguf.names import hf_name
from mlxd.loading.gguf.reader import read_gguf
from mlxd.loading.loader import load_model
from tests.gguf.hf_to_gguf import PARITY
from tests.helpers.parity_checks import (
    assert_file_parity,
    assert_same_args,
    prefill_in_chunks,
)

FIXTURE, ARCH = "nemotron_h", "nemotron_h_moe"
LOGIT_TOL = 1e-3  # the bar, as tests/models/test_nemotron_h_parity.py
SELF_TOL = 1e-4
ARGS = ("hidden_size", "num_hidden_layers", "hybrid_override_pattern", "vocab_size", "num_attention_heads",
        "num_key_value_heads", "head_dim", "intermediate_size", "mamba_num_heads", "mamba_head_dim", "ssm_state_size",
        "n_groups", "conv_kernel", "use_conv_bias", "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
        "moe_shared_expert_intermediate_size", "n_group", "topk_group", "norm_topk_prob", "routed_scaling_factor",
        "tie_word_embeddings")


def test_the_file_describes_the_folders_model(parity_gguf):
    path, loaded, _, _ = parity_gguf(FIXTURE, ARCH)
    folder = load_model(PARITY / FIXTURE, dtype="float32")
    assert loaded.model_type == FIXTURE
    assert_same_args(loaded.args, folder.args, ARGS, "layer_norm_epsilon")
    names = {t.name for t in read_gguf(path).tensors}
    assert {"blk.0.ssm_a", "blk.0.ssm_d", "blk.0.ssm_dt.bias", "blk.1.ffn_up_exps.weight", "blk.1.exp_probs_b.bias",
            "blk.4.ffn_up.weight"} <= names


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_logits_greedy_cache_chunks_and_states(parity_gguf, qtype):
    """F32 against transformers; Q8_0 against the folder's model holding the values the file stores."""
    _, loaded, stored, expected = parity_gguf(FIXTURE, ARCH, qtype)
    assert_file_parity(loaded.model, FIXTURE, qtype, stored, expected, LOGIT_TOL, SELF_TOL)
    if qtype == "F32":  # the Mamba-2 states after the prompt, as transformers left them
        want = mx.load(str(PARITY / FIXTURE / "expected_state.safetensors"))
        _, cache = prefill_in_chunks(loaded.model, expected["input_ids"], 45)
        for layer, c in zip((0, 3), (cache[0], cache[2])):
            assert mx.abs(c.conv_state[0] - want[f"layers.{layer}.conv_state"]).max().item() < SELF_TOL
            assert mx.abs(c.recurrent_state[0] - want[f"layers.{layer}.ssm_state"]).max().item() < SELF_TOL


def test_q8_0_file_quantizes_every_matrix_its_rows_allow(parity_gguf):
    path = parity_gguf(FIXTURE, ARCH, "Q8_0").path
    for t in read_gguf(path).tensors:
        quantizable = (len(t.shape) > 1 and t.name.endswith(".weight") and t.shape[-1] % 32 == 0
                       and not t.name.endswith(("ffn_gate_inp.weight", "_norm.weight")))
        assert t.type_name == ("Q8_0" if quantizable else "F32"), t.name


def _metadata(**changes) -> tuple[dict, dict]:
    meta = {
        "general.architecture": ARCH, f"{ARCH}.embedding_length": 64, f"{ARCH}.block_count": 3,
        f"{ARCH}.attention.head_count": 4, f"{ARCH}.attention.head_count_kv": [0, 2, 0],
        f"{ARCH}.attention.key_length": 16, f"{ARCH}.feed_forward_length": [0, 0, 32],
        f"{ARCH}.ssm.inner_size": 64, f"{ARCH}.ssm.time_step_rank": 8, f"{ARCH}.ssm.state_size": 16,
        f"{ARCH}.ssm.group_count": 2, f"{ARCH}.ssm.conv_kernel": 4, f"{ARCH}.expert_count": 6,
        f"{ARCH}.expert_used_count": 2, f"{ARCH}.expert_weights_norm": True, f"{ARCH}.expert_weights_scale": 2.5,
    }
    shapes = {"token_embd.weight": (320, 64), "output.weight": (320, 64), "blk.0.ssm_in.weight": (200, 64),
              "blk.0.ssm_conv1d.bias": (128,), "blk.1.attn_q.weight": (64, 64),
              "blk.2.ffn_gate_inp.weight": (6, 64), "blk.2.ffn_up_exps.weight": (6, 32, 64),
              "blk.2.ffn_up_shexp.weight": (48, 64)}
    meta |= changes
    return {k: v for k, v in meta.items() if v is not None}, shapes


def test_layer_kinds_and_widths_come_from_the_tensors():
    config = hf_config(*_metadata())
    assert config["hybrid_override_pattern"] == "M*E"
    assert (config["num_key_value_heads"], config["mamba_head_dim"], config["moe_intermediate_size"]) == (2, 8, 32)
    assert (config["moe_shared_expert_intermediate_size"], config["n_group"], config["topk_group"]) == (48, 1, 1)
    assert config["norm_topk_prob"] and config["routed_scaling_factor"] == 2.5
    assert hf_name("blk.0.ssm_a", ARCH, FIXTURE) == "backbone.layers.0.mixer.A"
    assert hf_name("blk.0.ssm_dt.bias", ARCH, FIXTURE) == "backbone.layers.0.mixer.dt_bias"
    assert hf_name("token_embd.weight", ARCH, FIXTURE) == "backbone.embeddings.weight"
    assert hf_name("output_norm.weight", ARCH, FIXTURE) == "backbone.norm_f.weight"


@pytest.mark.parametrize("shapes,match", [
    ({"blk.1.attn_q.weight": None}, "no Nemotron-H mixer"),
    ({"blk.1.ffn_up.weight": (128, 64)}, "more than one"),
    ({"blk.2.ffn_latent_down.weight": (16, 64)}, "latent"),
    ({"blk.2.ffn_up_shexp.weight": None}, "shared"),
])
def test_what_nemotron_h_cannot_compute_is_refused(shapes, match):
    meta, base = _metadata()
    changed = {k: v for k, v in {**base, **shapes}.items() if v is not None}
    with pytest.raises(ModelLoadError, match=match):
        hf_config(meta, changed)


def test_every_tensor_of_the_gguf_packages_nemotron_h_tables_has_a_name():
    """All but the latent MoE projections, which the model refuses."""
    bare = {"ssm_a": "", "ssm_d": "", "ssm_dt": ".bias", "exp_probs_b": ".bias"}
    for arch in (MODEL_ARCH.NEMOTRON_H, MODEL_ARCH.NEMOTRON_H_MOE):
        for tensor in MODEL_TENSORS[arch]:
            name = TENSOR_NAMES[tensor].format(bid=3)
            if "latent" in name:
                continue
            suffix = bare.get(name.removeprefix("blk.3."), ".weight")
            assert hf_name(f"{name}{suffix}", ARCH, FIXTURE).startswith(("backbone.", "lm_head")), name
