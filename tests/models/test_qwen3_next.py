"""Qwen3-Next (Qwen3.5 MoE's compute behind fused per-key-head DeltaNet projections, dense layers beside MoE ones) in
both config layouts: transformers' float32 logits at every position of a 150-token prompt, its greedy ids, chunked
prefill equal to one shot, cached decode equal to the full pass, the recurrent states after the prompt, and the
folders mlx-lm writes (fused names kept, quantized or not). The fixture: tests/fixtures/parity/qwen3_next
(make_fixture.py), and mlx-lm's own 8-bit conversion of it (make_mlx_lm_q8.py)."""

from __future__ import annotations

import json
import logging

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import load_file, save_file

from mlxd.loading.loader import load_model
from mlxd.models.qwen3_next import ModelArgs
from tests.helpers.parity import PARITY, copy_model_folder
from tests.helpers.parity_checks import gated_delta_state_errors, greedy_with_cache, max_decode_error, prefill_in_chunks

ARCH = "qwen3_next"
LAYOUTS = ["v5", "v4"]
LOGIT_TOL = 1e-3  # the bar; measured: 7.4e-6 (float64 against float32 in transformers: 4.3e-6)
SELF_TOL = 1e-4   # chunked and recurrent forms of the same math agree to float32 rounding
STATE_TOL = 1e-4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_forward_matches_transformers(parity_model, layout):
    loaded, expected = parity_model(ARCH, layout)
    logits = loaded.model(expected["input_ids"])
    assert logits.shape == (1, 150, 320)
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL


@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_decode_with_cache_matches_transformers(parity_model, layout):
    loaded, expected = parity_model(ARCH, layout)
    want = expected["greedy_ids"].tolist()
    assert greedy_with_cache(loaded.model, expected["input_ids"], len(want)) == want


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layers_are_built_as_transformers_builds_them(parity_model, layout):
    """L F L F; layer 2 is in mlp_only_layers (a dense MLP), the others MoE with a shared expert."""
    loaded, _ = parity_model(ARCH, layout)
    layers = loaded.model.layers
    assert [layer.is_linear for layer in layers] == [True, False, True, False]
    assert [type(layer.mlp).__name__ for layer in layers] == ["SharedExpertMoe"] * 2 + ["MLP", "SharedExpertMoe"]
    assert loaded.args.rotary_dims == 8 and loaded.args.rope_parameters["rope_theta"] == 100000.0


@pytest.mark.parametrize("chunk", [1, 3, 5, 7, 16, 40, 64, 100])
def test_chunked_prefill_equals_one_shot(parity_model, chunk):
    loaded, expected = parity_model(ARCH, "v5")
    one_shot = loaded.model(expected["input_ids"])
    chunked, cache = prefill_in_chunks(loaded.model, expected["input_ids"], chunk)
    assert all(c.offset == 150 for c in cache)
    assert mx.abs(chunked - one_shot).max().item() < SELF_TOL


def test_decode_logits_equal_full_forward(parity_model):
    loaded, expected = parity_model(ARCH, "v4")
    assert max_decode_error(loaded.model, expected["input_ids"], expected["greedy_ids"]) < SELF_TOL


@pytest.mark.parametrize("chunk", [150, 7])
def test_recurrent_states_after_the_prompt_match_transformers(parity_model, chunk):
    loaded, expected = parity_model(ARCH, "v5")
    want = mx.load(str(PARITY / ARCH / "expected_state.safetensors"))
    recurrent, conv, state = gated_delta_state_errors(loaded.model, expected["input_ids"], chunk, want)
    assert recurrent == [0, 2]
    assert conv < STATE_TOL
    assert state < STATE_TOL


def test_fused_projections_give_the_same_logits(parity_model):
    loaded, expected = parity_model(ARCH, "v4")
    fused = load_model(PARITY / ARCH, dtype="float32", fuse=True).model
    assert any(path.endswith("linear_attn") for path in fused.fused)
    assert "model.layers.2.mlp" in fused.fused  # the dense layer's gate and up projections
    tokens = expected["input_ids"]
    assert mx.abs(fused(tokens) - loaded.model(tokens)).max().item() < SELF_TOL


def test_mtp_head_is_skipped_with_one_log_line(tmp_path, caplog, parity_model):
    """Published Qwen3-Next checkpoints carry a multi-token-prediction head (`mtp.*`), which transformers ignores."""
    folder = copy_model_folder(ARCH, "v4", tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    tensors["mtp.fc.weight"] = tensors["lm_head.weight"][:, :8].copy()
    tensors["mtp.layers.0.input_layernorm.weight"] = tensors["model.norm.weight"].copy()
    save_file(tensors, folder / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="mlxd.models.qwen3_5"):
        model = load_model(folder, dtype="float32").model
    assert len([r for r in caplog.records if "multi-token-prediction" in r.getMessage()]) == 1
    loaded, expected = parity_model(ARCH, "v4")
    assert mx.array_equal(model(expected["input_ids"]), loaded.model(expected["input_ids"]))


def _fuse_per_key_head(parts: list[mx.array], key_heads: int) -> mx.array:
    """mlx-lm's (and the checkpoint's) layout: each part's rows cut per key head, then head 0's pieces of every part,
    head 1's...; the arrays of a quantized layer alike."""
    pieces = [p.reshape(key_heads, -1, *p.shape[1:]) for p in parts]
    joined = mx.concatenate(pieces, axis=1)
    return joined.reshape(-1, *joined.shape[2:])


# mlx-lm's per-layer bits (a mixed or dynamic recipe): layer 0's fused DeltaNet projections at 4 bits.
MIXED = {f"model.layers.0.linear_attn.{name}": {"group_size": 32, "bits": 4} for name in ("in_proj_qkvz", "in_proj_ba")}


# Mean |logit - transformers'| of the quantized model, measured: 0.034 at 8 bits, 0.217 with layer 0's DeltaNet
# input at 4 bits (group 32 over 64 features of random weights: coarse).
@pytest.mark.parametrize("overrides,mean_gap", [({}, 0.05), (MIXED, 0.3)], ids=["8-bit", "mixed"])
def test_mlx_lm_quantized_conversion_loads(tmp_path, parity_model, overrides, mean_gap):
    """A quantized folder as mlx-lm's qwen3_next writes it: the fused in_proj_qkvz / in_proj_ba kept (quantized like
    any linear layer, at their own bits where the config says so), experts stacked as switch_mlp, conv weights
    [C, K, 1] and (1 + w) folded into the norms. It loads kept quantized and dequantized to float32, both computing
    what the quantized model computes."""
    loaded, expected = parity_model(ARCH, "v4")
    model = load_model(PARITY / ARCH, dtype="float32").model

    def bits(path: str, m: nn.Module) -> bool | dict:
        if not hasattr(m, "to_quantized") or m.weight.shape[-1] % 32:
            return False
        return next((v for k, v in MIXED.items() if overrides and path.startswith(k[: -len("qkvz")])), True)

    nn.quantize(model, 32, 8, class_predicate=bits)
    tensors = dict(tree_flatten(model.parameters()))
    hk = loaded.args.linear_num_key_heads
    for i in (0, 2):
        path = f"model.layers.{i}.linear_attn"
        for param in ("weight", "scales", "biases"):
            qkv, z = tensors.pop(f"{path}.in_proj_qkv.{param}"), tensors.pop(f"{path}.in_proj_z.{param}")
            key_width = hk * loaded.args.linear_key_head_dim
            q, k, v = mx.split(qkv, [key_width, 2 * key_width], axis=0)
            tensors[f"{path}.in_proj_qkvz.{param}"] = _fuse_per_key_head([q, k, v, z], hk)
            b, a = tensors.pop(f"{path}.in_proj_b.{param}"), tensors.pop(f"{path}.in_proj_a.{param}")
            tensors[f"{path}.in_proj_ba.{param}"] = _fuse_per_key_head([b, a], hk)
    folder = copy_model_folder(ARCH, "v4", tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    quantization = {"group_size": 32, "bits": 8, **overrides}
    (folder / "config.json").write_text(json.dumps({**config, "quantization": quantization}))
    mx.save_safetensors(str(folder / "model.safetensors"), tensors)
    tokens = expected["input_ids"]
    want = model(tokens)
    assert mx.abs(load_model(folder, dtype="float32").model(tokens) - want).max().item() < SELF_TOL
    kept = load_model(folder, dtype="keep").model
    for name in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"):
        layer = kept.layers[0].linear_attn[name]
        assert isinstance(layer, nn.QuantizedLinear) and layer.bits == (4 if overrides else 8)
    assert mx.abs(kept(tokens) - want).max().item() < SELF_TOL
    # And the quantized model stays near transformers' (the largest gaps follow routing choices that the rounding
    # flips, so the mean is the measure).
    assert mx.abs(want[0] - expected["logits"]).mean().item() < mean_gap


@pytest.mark.parametrize("dtype", ["keep", "float32"])
def test_a_real_mlx_lm_conversion_computes_what_mlx_lm_computes(dtype):
    """mlx_lm_q8/ is this model as mlx-lm 0.32.2's convert wrote it (8 bits, its routers and shared-expert gates at
    8 bits in groups of 64), with mlx-lm's logits for the prompt's last 40 positions (make_mlx_lm_q8.py). Kept
    quantized or dequantized, it gives them (measured: 4.0e-6)."""
    folder = PARITY / ARCH / "mlx_lm_q8"
    want = mx.load(str(folder / "expected_mlx_lm.safetensors"))["logits"]
    loaded = load_model(folder, dtype=dtype)
    assert loaded.quantized == (dtype == "keep")
    tokens = mx.load(str(PARITY / ARCH / "expected.safetensors"))["input_ids"]
    got = loaded.model(tokens)[0, -want.shape[0]:]
    assert mx.abs(got - want).max().item() < SELF_TOL


def test_sanitize_takes_its_own_output(parity_model):
    loaded, _ = parity_model(ARCH, "v5")
    model = loaded.model
    once = model.sanitize(mx.load(str(PARITY / ARCH / "model.safetensors")))
    assert "model.layers.0.linear_attn.in_proj_qkv.weight" in once and not any("in_proj_qkvz" in k for k in once)
    again = model.sanitize(once)
    assert again.keys() == once.keys() and all(mx.array_equal(again[k], v) for k, v in once.items())


def _args(**changes) -> ModelArgs:
    config = json.loads((PARITY / ARCH / "config.json").read_text())
    return ModelArgs.from_dict({**config, **changes})


@pytest.mark.parametrize("changes,sparse", [
    ({}, [True, True, False, True]),
    ({"mlp_only_layers": None}, [True] * 4),
    ({"mlp_only_layers": [], "decoder_sparse_step": 2}, [False, True, False, True]),
    ({"mlp_only_layers": [3], "decoder_sparse_step": 2}, [False, True, False, False]),
    ({"num_experts": 0}, [False] * 4),
])
def test_moe_layers_follow_mlp_only_layers_and_decoder_sparse_step(changes, sparse):
    """transformers: MoE iff the layer is not in mlp_only_layers, num_experts > 0 and (i + 1) % step == 0."""
    assert [_args(**changes).sparse(i) for i in range(4)] == sparse


def test_router_renormalizes_as_norm_topk_prob_says():
    from mlxd.models.qwen3_next import Model

    assert Model(_args()).layers[0].mlp.routing.renormalize
    assert not Model(_args(norm_topk_prob=False)).layers[0].mlp.routing.renormalize


def test_fused_projection_of_the_wrong_width_is_refused(parity_model):
    loaded, _ = parity_model(ARCH, "v5")
    raw = mx.load(str(PARITY / ARCH / "model.safetensors"))
    name = "model.layers.0.linear_attn.in_proj_qkvz.weight"
    with pytest.raises(ValueError, match="rows"):
        loaded.model.sanitize({**raw, name: raw[name][:-1]})
