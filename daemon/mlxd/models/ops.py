"""The kernels model files call, in one place: attention, MLP activations, and prompt scoring.

Interface first (issue 14): today each function still decides per call which implementation runs; the
backends chosen once at load (MLX, MLX with the CUDA masked-decode attention, NumPy for CPU prefill) replace that
behind these same names.
"""

from __future__ import annotations

import mlx.core as mx

from mlxd.generation.sampling import logprobs, top_logprobs
from mlxd.models import base, cpu_kernels

Mask = base.Mask


def attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: Mask,
              softcap: float | None = None) -> mx.array:
    """softmax(scale * q k^T [soft-capped] + mask) v over [B, heads, T, D]; kv heads may be fewer (grouped)."""
    return base.scaled_dot_product_attention(queries, keys, values, scale, mask, softcap)


def gated_activation(gate: mx.array, up: mx.array, kind: str) -> mx.array:
    """activation(gate) * up for a gated MLP; kind is "silu" or "gelu_tanh"."""
    return base.gated_activation(gate, up, kind)


def activation(x: mx.array, kind: str) -> mx.array:
    """"silu", "gelu_tanh" or "gelu" of x."""
    return base.activation(x, kind)


def prompt_scores(logits: mx.array, targets: list[int],
                  top_k: int) -> tuple[list[float], list[list[int]], list[list[float]]]:
    """For logits [T, V]: the log-probability of targets[i] in row i, and when top_k each row's top_k ids and
    log-probabilities, best first. Evaluates (the caller reads the lists)."""
    if cpu_kernels.scores_apply(logits):
        return cpu_kernels.scores(logits, targets, top_k)
    scores = logprobs(logits)
    chosen = mx.take_along_axis(scores, mx.array(targets, dtype=mx.int32)[:, None], axis=-1)[:, 0]
    if not top_k:
        return chosen.tolist(), [[] for _ in targets], [[] for _ in targets]
    ids, values = top_logprobs(scores, top_k)
    return chosen.tolist(), ids.tolist(), values.tolist()
