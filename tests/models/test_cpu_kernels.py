"""The NumPy kernels of CPU prefill (models/cpu_kernels.py) must equal MLX's own ops, and be taken exactly when
they apply: a float32 prefill on the CPU. The parity tests run whole models through them against transformers."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxd.generation import sampling
from mlxd.models import base, cpu_kernels


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
    got = cpu_kernels.attention(q, k, v, 0.25, "causal")
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal")
    assert got.shape == want.shape and got.dtype == mx.float32
    assert mx.abs(got - want).max().item() < 1e-5


@pytest.mark.parametrize("mask_shape", [None, (40, 90), (2, 1, 40, 90), (2, 8, 40, 90)])
def test_unmasked_and_boolean_mask_attention_equals_mlx(mask_shape):
    q, k, v = _qkv(2, 8, 2, 40, 90, 8)
    mask = None if mask_shape is None else mx.random.uniform(shape=mask_shape) > 0.3
    if mask is not None:  # every query sees at least one key, as every mask mlxd builds does
        mask = mask | (mx.arange(90) == 0)
    got = cpu_kernels.attention(q, k, v, 0.3, mask)
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
    assert mx.abs(got - want).max().item() < 1e-5


def test_long_contexts_take_smaller_query_blocks(monkeypatch):
    """Blocks shrink so one block's scores stay within SCORES_BYTES; the result is the same."""
    monkeypatch.setattr(cpu_kernels, "SCORES_BYTES", 2 * 4 * 8 * 600 * 20)  # 20 query rows of 600 keys, 8 heads
    q, k, v = _qkv(2, 8, 2, 100, 600, 8)
    got = cpu_kernels.attention(q, k, v, 0.3, "causal")
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask="causal")
    assert mx.abs(got - want).max().item() < 1e-5


def test_attention_reads_strided_cache_views():
    """Keys from a KV cache are a slice of a longer buffer, not contiguous arrays."""
    q, k, v = _qkv(1, 4, 2, 20, 64, 8)
    got = cpu_kernels.attention(q, k[:, :, :30], v[:, :, :30], 0.5, "causal")
    want = mx.fast.scaled_dot_product_attention(q, k[:, :, :30], v[:, :, :30], scale=0.5, mask="causal")
    assert mx.abs(got - want).max().item() < 1e-5


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_activation_matches_float64(activation):
    """Against the formula in float64 (MLX's own float32 gelu_approx is off by 2e-6 near x = -5, where
    1 + tanh(z) cancels), and against MLX's op in float32."""
    mx.random.seed(2)
    fused = mx.random.normal((1, 33, 200)) * 6  # wide enough that exp overflows at the tails
    gate, up = mx.split(fused, 2, axis=-1)  # split views, as a fused gate/up projection gives them
    got = np.array(cpu_kernels.activation(gate, activation, up), dtype=np.float64)
    plain = np.array(cpu_kernels.activation(gate, activation), dtype=np.float64)
    x, u = np.array(gate, dtype=np.float64), np.array(up, dtype=np.float64)
    if activation == "silu":
        want = x / (1 + np.exp(-x)) * u
    else:
        want = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))) * u
    assert np.allclose(got, want, rtol=2e-6, atol=1e-6)
    assert np.allclose(plain * u, want, rtol=2e-6, atol=1e-6)
    mlx_op = nn.silu if activation == "silu" else nn.gelu_approx
    assert np.allclose(got, np.array(mlx_op(gate) * up), rtol=1e-5, atol=5e-6)


def test_kernels_taken_for_a_float32_prefill_on_the_cpu_only(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_kernels, "attention", lambda *a: calls.append("attention") or a[0])
    monkeypatch.setattr(cpu_kernels, "activation", lambda *a: calls.append("activation") or a[0])
    prefill, decode = _qkv(1, 4, 2, 8, 8, 8), _qkv(1, 4, 2, 1, 8, 8)
    half = _qkv(1, 4, 2, 8, 8, 8, dtype=mx.bfloat16)

    base.scaled_dot_product_attention(*prefill, 0.5, "causal")
    base.gated_activation(prefill[0][0], prefill[0][0], "silu")
    base.activation(prefill[0][0], "gelu_tanh")
    assert calls == ["attention", "activation", "activation"]
    calls.clear()
    base.scaled_dot_product_attention(*decode, 0.5, None)
    base.gated_activation(decode[0][0], decode[0][0], "silu")
    base.scaled_dot_product_attention(*half, 0.5, "causal")
    base.gated_activation(half[0][0], half[0][0], "silu")
    base.activation(prefill[0][0], "gelu")  # exact GELU needs erf, which NumPy lacks
    base.scaled_dot_product_attention(*prefill, 0.5, "causal", softcap=50.0)
    base.scaled_dot_product_attention(*prefill, 0.5, mx.zeros((8, 8)))  # additive masks stay in MLX
    assert calls == []
    # Off the CPU (the default device a GPU build serves on), MLX's own ops.
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))
    base.scaled_dot_product_attention(*prefill, 0.5, "causal")
    base.gated_activation(prefill[0][0], prefill[0][0], "silu")
    monkeypatch.undo()
    assert calls == []


def test_numpy_blas_runs_on_one_thread_beside_mlx():
    """NumPy's bundled OpenBLAS (where the wheel has one) is set to one thread, so its pool does not fight MLX's."""
    getters = cpu_kernels._numpy_openblas_functions("get_num_threads")
    if not getters:
        pytest.skip("this NumPy has no bundled OpenBLAS")
    cpu_kernels.attention(*_qkv(1, 2, 2, 4, 4, 8), 0.5, "causal")
    assert all(g() == 1 for g in getters)


@pytest.mark.parametrize("top_k", [0, 1, 5])
def test_prompt_scores_equal_mlx_logprobs(top_k):
    """The NumPy prompt logprobs give what generation.sampling gives: the target's log-softmax value and the
    top_k (ids, values), best first."""
    logits = mx.random.normal((7, 300), key=mx.random.key(3)) * 4
    targets = [0, 299, 17, 5, 5, 120, 64]
    chosen, ids, values = cpu_kernels.scores(logits, targets, top_k)
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


def test_prompt_scores_taken_for_a_float32_cpu_prefill_only():
    assert cpu_kernels.scores_apply(mx.zeros((4, 10)))
    assert not cpu_kernels.scores_apply(mx.zeros((1, 10)))  # one row: a decode-like step stays lazy in MLX
    assert not cpu_kernels.scores_apply(mx.zeros((4, 10), dtype=mx.bfloat16))
