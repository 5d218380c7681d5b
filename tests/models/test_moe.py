"""The shared MoE layer (models/moe.py) on fixed and random arrays: the router's choices and weights, the experts'
gathered matmuls against a loop over experts (sorted by expert or not, fused or not, with biases, quantized), the
activation's tokens for the CPU kernels, and stacking a checkpoint's per-expert tensors."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_map

from mlxd.errors import ModelLoadError
from mlxd.loading.weights import parameter_arrays, quantize_model
from mlxd.models import moe, ops_cpu_numpy
from mlxd.models.ops_cpu_numpy import NumpyBackend

LOGITS = [[2.0, 1.0, 0.5, -1.0],
          [0.0, 3.0, 3.5, 1.0],
          [-2.0, -1.0, -3.0, 0.25]]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _by_expert(indices: mx.array, weights: mx.array) -> list[dict[int, float]]:
    """Each token's {expert: weight}, whatever order route gives them in."""
    return [dict(zip(i, w)) for i, w in zip(np.array(indices).tolist(), np.array(weights).tolist())]


@pytest.mark.parametrize("renormalize", [True, False])
def test_router_keeps_the_top_k_of_a_softmax_over_all_experts(renormalize):
    indices, weights = moe.route(mx.array(LOGITS), moe.Routing(2, renormalize=renormalize))
    probs = _softmax(np.array(LOGITS, dtype=np.float64))
    for row, (chosen, want) in enumerate(zip(_by_expert(indices, weights), ([0, 1], [2, 1], [3, 1]))):
        assert sorted(chosen) == sorted(want)
        kept = probs[row, want]
        expected = kept / kept.sum() if renormalize else kept
        assert np.allclose([chosen[e] for e in want], expected, atol=1e-7)
    assert np.allclose(np.array(weights).sum(-1), 1.0, atol=1e-7) == renormalize


def test_softmax_over_the_kept_logits_equals_renormalizing():
    """gpt-oss's rule (top-k on the logits, softmax over those k) gives Mixtral's renormalized weights."""
    renormalized = moe.route(mx.array(LOGITS), moe.Routing(3))
    for row, chosen in enumerate(_by_expert(*renormalized)):
        kept = sorted(chosen)
        over_kept = _softmax(np.array(LOGITS, dtype=np.float64)[row, kept])
        assert all(abs(chosen[e] - w) < 1e-7 for e, w in zip(kept, over_kept))


def test_router_weights_take_the_logits_dtype_and_every_expert_may_be_kept():
    logits = mx.array(LOGITS, dtype=mx.bfloat16)
    indices, weights = moe.route(logits, moe.Routing(4))
    assert weights.dtype == mx.bfloat16 and indices.shape == (3, 4)
    assert [sorted(r) for r in np.array(indices).tolist()] == [[0, 1, 2, 3]] * 3


def _randomized(module: nn.Module, scale: float, seed: int = 0) -> nn.Module:
    mx.random.seed(seed)
    module.update(tree_map(lambda v: mx.random.normal(v.shape) * scale, module.parameters()))
    return module


def _experts(bias: bool = False, activation: moe.GatedActivation = moe.swiglu) -> moe.SwitchGLU:
    return _randomized(moe.SwitchGLU(16, 8, 6, bias=bias, activation=activation), 0.5)


def _loop_over_experts(layer: moe.SwitchGLU, x: mx.array, indices: mx.array) -> np.ndarray:
    """What transformers computes, one token and one expert at a time, in float64."""
    p = {name: {k: np.array(v, dtype=np.float64) for k, v in proj.items()} for name, proj in layer.parameters().items()}

    def linear(name: str, e: int, v: np.ndarray) -> np.ndarray:
        return p[name]["weight"][e] @ v + (p[name]["bias"][e] if "bias" in p[name] else 0)

    xs, idx = np.array(x, dtype=np.float64), np.array(indices)
    out = np.zeros(idx.shape + (xs.shape[-1],))
    for pos in np.ndindex(idx.shape):
        v, e = xs[pos[:-1]], idx[pos]
        gate = linear("gate_proj", e, v)
        out[pos] = linear("down_proj", e, gate / (1 + np.exp(-gate)) * linear("up_proj", e, v))
    return out


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(2, 40), (3, 1), (1, 5)])  # 240 pairs sorted by expert; 9 and 15 not
def test_experts_equal_a_loop_over_experts(shape, bias):
    layer = _experts(bias=bias)
    x = mx.random.normal((*shape, 16))
    indices = mx.random.randint(0, 6, (*shape, 3))
    got = layer(x, indices, tokens=shape[1])
    assert got.shape == (*shape, 3, 16)
    assert np.allclose(np.array(got), _loop_over_experts(layer, x, indices), atol=2e-5)


# Two ways of computing the same float32 products: on the CPU they sum in the same order (< 1e-6); on a GPU the
# sorted, fused and plain gathered matmuls are different kernels that sum in other orders (4.8e-6 seen on an H200).
SAME_SUMS = 1e-6 if mx.default_device() == mx.cpu else 2e-5


def test_sorting_by_expert_changes_nothing(monkeypatch):
    layer = _experts(bias=True)
    x, indices = mx.random.normal((1, 50, 16)), mx.random.randint(0, 6, (1, 50, 3))
    by_expert = layer(x, indices, tokens=50)
    monkeypatch.setattr(moe.ops, "sorts_experts", lambda pairs, weights: False)
    assert mx.abs(by_expert - layer(x, indices, tokens=50)).max().item() < SAME_SUMS


def test_fused_gate_up_equals_the_two_projections():
    split = _experts(bias=True)
    fused = moe.SwitchGLU(16, 8, 6, bias=True, fused=True)
    fused.gate_up_proj.update({k: mx.concatenate([split.gate_proj[k], split.up_proj[k]], axis=1)
                               for k in ("weight", "bias")})
    fused.down_proj.update(split.down_proj.parameters())
    x, indices = mx.random.normal((2, 9, 16)), mx.random.randint(0, 6, (2, 9, 2))
    assert mx.abs(fused(x, indices, 9) - split(x, indices, 9)).max().item() < SAME_SUMS


def test_the_activation_is_pluggable_and_told_the_tokens_per_sequence():
    """A prefill of 50 tokens sorted by expert ([pairs, 1, features]; unsorted where CUDA kernels take them) and a
    decode step of 4 rows ([4, 1, k, 1, features]) both say how many tokens each sequence has in the pass, not how
    many rows."""
    seen = []

    def relu_gate(gate: mx.array, up: mx.array, tokens: int) -> mx.array:
        seen.append((gate.shape, tokens))
        return nn.relu(gate) * up

    layer = _experts(activation=relu_gate)
    layer(mx.random.normal((1, 50, 16)), mx.random.randint(0, 6, (1, 50, 3)), tokens=50)
    layer(mx.random.normal((4, 1, 16)), mx.random.randint(0, 6, (4, 1, 3)), tokens=1)
    prefill = (150, 1, 8) if moe.ops.sorts_experts(150, layer.quantizations) else (1, 50, 3, 1, 8)  # CUDA: unsorted
    assert seen == [(prefill, 50), ((4, 1, 3, 1, 8), 1)]


def test_cpu_kernels_decide_by_tokens_per_sequence(monkeypatch):
    """NumPy's activation for an experts' prefill though each row holds one token; MLX's (lazy, pipelined) for a
    decode step though the batch has several rows and experts."""
    calls = []
    monkeypatch.setattr(ops_cpu_numpy, "activation", lambda *a: calls.append(a[0].shape) or a[0])
    numpy = NumpyBackend()
    prefill, decode = mx.ones((150, 1, 8)), mx.ones((4, 1, 3, 1, 8))
    numpy.gated_activation(prefill, prefill, "silu", 50)
    numpy.gated_activation(decode, decode, "silu", 1)
    numpy.gated_activation(mx.ones((4, 3, 8)), mx.ones((4, 3, 8)), "silu", 1)  # rows > 1 in the last-but-one axis
    numpy.activation(prefill, "silu", 50)
    assert calls == [(150, 1, 8), (150, 1, 8)]


def _sparse_moe(bias: bool) -> moe.SparseMoe:
    return _randomized(moe.SparseMoe(64, 32, 6, moe.Routing(2), router_bias=bias, expert_bias=bias), 0.3, seed=3)


def test_sparse_moe_sums_the_chosen_experts_by_their_weights():
    layer = _sparse_moe(bias=True)
    x = mx.random.normal((2, 11, 64))
    indices, weights = moe.route(layer.gate(x), layer.routing)
    per_expert = _loop_over_experts(layer.switch_mlp, x, indices)
    want = (per_expert * np.array(weights)[..., None]).sum(axis=-2)
    assert np.allclose(np.array(layer(x)), want, atol=2e-5)
    assert "bias" in layer.gate and "bias" in layer.switch_mlp.down_proj


@pytest.mark.parametrize("bits,group_size,mode", [(4, 32, "affine"), (8, 32, "affine"), (4, 32, "mxfp4")])
def test_quantized_experts_load_as_a_checkpoints_quantized_layers(bits, group_size, mode):
    """nn.quantize turns the stacked experts into QuantizedSwitchLinear (mx.gather_qmm), and loading/weights.py's
    quantize_model rebuilds that layout for a quantized checkpoint's arrays (keyed by `.scales`)."""
    reference = _sparse_moe(bias=True)
    x = mx.random.normal((2, 40, 64))
    float_out = reference(x)
    nn.quantize(reference, group_size, bits, mode=mode, class_predicate=lambda _, m: isinstance(m, moe.SwitchLinear))
    assert isinstance(reference.switch_mlp.gate_proj, moe.QuantizedSwitchLinear)
    checkpoint = dict(parameter_arrays(reference))
    loaded = moe.SparseMoe(64, 32, 6, moe.Routing(2), router_bias=True, expert_bias=True)
    quantize_model(loaded, checkpoint, {"group_size": group_size, "bits": bits, "mode": mode})
    loaded.load_weights(list(checkpoint.items()), strict=True)
    out = loaded(x)
    assert isinstance(loaded.switch_mlp.down_proj, moe.QuantizedSwitchLinear) and isinstance(loaded.gate, nn.Linear)
    assert mx.array_equal(out, reference(x))
    # The same experts as float matrices (the quantized values, dequantized) give the same output.
    dequantized = _sparse_moe(bias=True)
    for name in ("gate_proj", "up_proj", "down_proj"):
        q = loaded.switch_mlp[name]
        dequantized.switch_mlp[name].weight = mx.dequantize(q.weight, q.scales, q.get("biases"), group_size, bits,
                                                            mode=mode)
    assert mx.abs(out - dequantized(x)).max().item() < 1e-4
    assert mx.abs(out - float_out).max().item() > 1e-3  # quantized, so not the float experts' output


def test_stack_experts_stacks_in_expert_order_and_names_a_missing_one():
    weights = {f"m.experts.{e}.w1.weight": mx.full((2, 3), e) for e in range(4)}
    weights["m.gate.weight"] = mx.zeros((4, 3))
    stacked = moe.stack_experts(weights, "m", 4, {"w1": "gate_proj"})
    assert set(stacked) == {"m.gate.weight", "m.switch_mlp.gate_proj.weight"}
    assert stacked["m.switch_mlp.gate_proj.weight"][:, 0, 0].tolist() == [0, 1, 2, 3]
    assert moe.stack_experts(stacked, "m", 4, {"w1": "gate_proj"}).keys() == stacked.keys()
    del weights["m.experts.2.w1.weight"]
    with pytest.raises(ModelLoadError, match=r"m\.experts\.2\.w1\.weight"):
        moe.stack_experts(weights, "m", 4, {"w1": "gate_proj"})
