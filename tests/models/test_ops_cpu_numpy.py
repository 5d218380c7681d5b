"""The NumPy backend of CPU prefill (models/ops_cpu_numpy.py) must equal MLX's own ops, be chosen for float32
weights on the CPU only, and within it take its kernels exactly when they apply: a float32 prefill. The parity
tests run whole models through them against transformers."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxd.generation import sampling
from mlxd.models import ops, ops_cpu_numpy
from mlxd.models.ops_cpu_numpy import NumpyBackend


def _qkv(batch, heads, kv_heads, queries, keys, dim, dtype=mx.float32):
    mx.random.seed(1)
    return (mx.random.normal((batch, heads, queries, dim)).astype(dtype),
            mx.random.normal((batch, kv_heads, keys, dim)).astype(dtype),
            mx.random.normal((batch, kv_heads, keys, dim)).astype(dtype))


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("queries,keys", [(5, 5), (300, 300), (130, 500), (2, 700)])
def test_causal_attention_equals_mlx(heads, kv_heads, queries, keys):
    """Causal masks are bottom-right aligned: a chunk of queries after `keys - queries` cached positions; 300 and
    130 queries span several blocks, so blocks that skip later keys are covered."""
    q, k, v = _qkv(2, heads, kv_heads, queries, keys, 16)
    got = ops_cpu_numpy.attention(q, k, v, 0.25, "causal")
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal")
    assert got.shape == want.shape and got.dtype == mx.float32
    assert mx.abs(got - want).max().item() < 1e-5


@pytest.mark.parametrize("mask_shape", [None, (40, 90), (2, 1, 40, 90), (2, 8, 40, 90)])
def test_unmasked_and_boolean_mask_attention_equals_mlx(mask_shape):
    q, k, v = _qkv(2, 8, 2, 40, 90, 8)
    mask = None if mask_shape is None else mx.random.uniform(shape=mask_shape) > 0.3
    if mask is not None:  # every query sees at least one key, as every mask mlxd builds does
        mask = mask | (mx.arange(90) == 0)
    got = ops_cpu_numpy.attention(q, k, v, 0.3, mask)
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
    assert mx.abs(got - want).max().item() < 1e-5


def test_long_contexts_take_smaller_query_blocks(monkeypatch):
    """Blocks shrink so one block's scores stay within SCORES_BYTES; the result is the same."""
    monkeypatch.setattr(ops_cpu_numpy, "SCORES_BYTES", 2 * 4 * 8 * 600 * 20)  # 20 query rows of 600 keys, 8 heads
    q, k, v = _qkv(2, 8, 2, 100, 600, 8)
    got = ops_cpu_numpy.attention(q, k, v, 0.3, "causal")
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask="causal")
    assert mx.abs(got - want).max().item() < 1e-5


def test_attention_reads_strided_cache_views():
    """Keys from a KV cache are a slice of a longer buffer, not contiguous arrays."""
    q, k, v = _qkv(1, 4, 2, 20, 64, 8)
    got = ops_cpu_numpy.attention(q, k[:, :, :30], v[:, :, :30], 0.5, "causal")
    want = mx.fast.scaled_dot_product_attention(q, k[:, :, :30], v[:, :, :30], scale=0.5, mask="causal")
    assert mx.abs(got - want).max().item() < 1e-5


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_activation_matches_float64(activation):
    """Against the formula in float64 (MLX's own float32 gelu_approx is off by 2e-6 near x = -5, where
    1 + tanh(z) cancels), and against MLX's op in float32."""
    mx.random.seed(2)
    fused = mx.random.normal((1, 33, 200)) * 6  # wide enough that exp overflows at the tails
    gate, up = mx.split(fused, 2, axis=-1)  # split views, as a fused gate/up projection gives them
    got = np.array(ops_cpu_numpy.activation(gate, activation, up), dtype=np.float64)
    plain = np.array(ops_cpu_numpy.activation(gate, activation), dtype=np.float64)
    x, u = np.array(gate, dtype=np.float64), np.array(up, dtype=np.float64)
    if activation == "silu":
        want = x / (1 + np.exp(-x)) * u
    else:
        want = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))) * u
    assert np.allclose(got, want, rtol=2e-6, atol=1e-6)
    assert np.allclose(plain * u, want, rtol=2e-6, atol=1e-6)
    mlx_op = nn.silu if activation == "silu" else nn.gelu_approx
    assert np.allclose(got, np.array(mlx_op(gate) * up), rtol=1e-5, atol=5e-6)


def test_kernels_taken_for_a_float32_prefill_only(monkeypatch):
    calls = []
    monkeypatch.setattr(ops_cpu_numpy, "attention", lambda *a: calls.append("attention") or a[0])
    monkeypatch.setattr(ops_cpu_numpy, "activation", lambda *a: calls.append("activation") or a[0])
    prefill, decode = _qkv(1, 4, 2, 8, 8, 8), _qkv(1, 4, 2, 1, 8, 8)
    half = _qkv(1, 4, 2, 8, 8, 8, dtype=mx.bfloat16)
    numpy = NumpyBackend()

    numpy.attention(*prefill, 0.5, "causal")
    numpy.gated_activation(prefill[0][0], prefill[0][0], "silu")
    numpy.activation(prefill[0][0], "gelu_tanh")
    assert calls == ["attention", "activation", "activation"]
    calls.clear()
    numpy.attention(*decode, 0.5, None)
    numpy.gated_activation(decode[0][0], decode[0][0], "silu")
    numpy.attention(*half, 0.5, "causal")
    numpy.gated_activation(half[0][0], half[0][0], "silu")
    numpy.activation(prefill[0][0], "gelu")  # exact GELU needs erf, which NumPy lacks
    numpy.attention(*prefill, 0.5, "causal", softcap=50.0)
    numpy.attention(*prefill, 0.5, mx.zeros((8, 8)))  # additive masks stay in MLX
    assert calls == []


def test_numpy_backend_chosen_for_float32_weights_on_the_cpu_only(monkeypatch):
    calls = []
    monkeypatch.setattr(ops_cpu_numpy, "attention", lambda *a: calls.append("attention") or a[0])
    monkeypatch.setattr(ops_cpu_numpy, "activation", lambda *a: calls.append("activation") or a[0])
    assert ops.choose(mx.Device(mx.cpu), "float32") == "numpy"
    # Off the CPU (the default device a GPU build serves on), and for other dtypes, MLX's own ops.
    assert ops.choose(mx.Device(mx.gpu), "float32") == "mlx"
    assert ops.choose(mx.Device(mx.cpu), "bfloat16") == "mlx"
    prefill = _qkv(1, 4, 2, 8, 8, 8)
    ops.use("numpy")
    ops.attention(*prefill, 0.5, "causal")
    ops.gated_activation(prefill[0][0], prefill[0][0], "silu")
    assert calls == ["attention", "activation"] and ops.backend() == "numpy"
    calls.clear()
    ops.use("mlx")
    ops.attention(*prefill, 0.5, "causal")
    ops.gated_activation(prefill[0][0], prefill[0][0], "silu")
    assert calls == [] and ops.backend() == "mlx"
    with pytest.raises(ValueError, match="'cuda'"):
        ops.use("cuda")


def test_numpy_blas_runs_on_one_thread_beside_mlx():
    """NumPy's bundled OpenBLAS (where the wheel has one) is set to one thread, so its pool does not fight MLX's."""
    getters = ops_cpu_numpy._numpy_openblas_functions("get_num_threads")
    if not getters:
        pytest.skip("this NumPy has no bundled OpenBLAS")
    for setter in ops_cpu_numpy._numpy_openblas_functions("set_num_threads"):
        setter(2)
    ops.use("numpy")  # when the backend is chosen, not when a kernel first runs
    assert all(g() == 1 for g in getters)


@pytest.mark.parametrize("top_k", [0, 1, 5])
def test_prompt_scores_equal_mlx_logprobs(top_k):
    """The NumPy prompt logprobs give what generation.sampling gives: the target's log-softmax value and the
    top_k (ids, values), best first."""
    logits = mx.random.normal((7, 300), key=mx.random.key(3)) * 4
    targets = [0, 299, 17, 5, 5, 120, 64]
    chosen, ids, values = ops_cpu_numpy.scores(logits, targets, top_k)
    want = sampling.logprobs(logits)
    assert np.allclose(chosen, np.array(want)[np.arange(7), targets], atol=2e-5)
    exact = np.array(logits).astype(np.float64)
    exact -= exact.max(-1, keepdims=True)
    exact -= np.log(np.exp(exact).sum(-1, keepdims=True))
    assert np.allclose(chosen, exact[np.arange(7), targets], atol=2e-6)
    if not top_k:
        assert ids == values == [[]] * 7
        return
    want_ids, want_values = sampling.top_logprobs(want, top_k)
    assert ids == want_ids.tolist()
    assert np.allclose(values, np.array(want_values), atol=2e-5)


def test_prompt_scores_taken_for_a_float32_prefill_only(monkeypatch):
    assert ops_cpu_numpy.scores_apply(mx.zeros((4, 10)))
    assert not ops_cpu_numpy.scores_apply(mx.zeros((1, 10)))  # one row: a decode-like step stays lazy in MLX
    assert not ops_cpu_numpy.scores_apply(mx.zeros((4, 10), dtype=mx.bfloat16))
    calls = []
    monkeypatch.setattr(ops_cpu_numpy, "scores", lambda *a: calls.append("scores") or ([], [], []))
    NumpyBackend().prompt_scores(mx.zeros((4, 10)), [0, 1, 2, 3], 0)
    NumpyBackend().prompt_scores(mx.zeros((1, 10)), [0], 0)
    assert calls == ["scores"]
