"""The NumPy backend of models/ops.py, chosen for float32 weights on the CPU, where MLX's CPU backend is slowest.

MLX's CPU backend computes transcendental functions one element at a time: `exp` takes 23 ns per element on
our 2-core Xeon, 20x NumPy's vectorized exp. At 512 tokens of a Llama-shaped 0.37B model that made attention's
softmax and the MLP's SiLU together about half of prefill (bench/cpu_prefill_kernels.py). So for a prefill
(more than one token) of float32 arrays:
- attention: the two matmuls go to BLAS through NumPy, the softmax is NumPy's, and query blocks of a causal
  prefill skip the keys they cannot see (about half the work of a fresh prompt);
- MLP activations (SiLU, tanh-GELU, times the up projection in a gated MLP) are NumPy's;
- prompt logprobs (log-softmax over the vocabulary for every prompt token, and the top k) are NumPy's: 1.4x to
  1.9x faster for a 512-token SmolLM2 prompt, and closer to float64 (3e-6 against MLX's 8e-5);
- a constrained step's token masks become an additive bias (0 or -inf) in NumPy, one table lookup per mask byte,
  and one MLX add: 16 rows of SmolLM2's 49,152 tokens took 9.4 ms with MLX's unpacking and select on the CPU,
  1.8 ms this way (argmax included in both).
Each kernel evaluates its MLX inputs (a sync point per layer, which a prefill can afford) and returns a new MLX
array (the prompt logprobs: Python lists, what the caller reads them into). Decode steps stay in MLX, and so do
arrays of another dtype (another model loaded into the same process).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import math
import os

import mlx.core as mx
import numpy as np

from mlxd.models.base import Mask
from mlxd.models.mask_buffers import MaskBuffers, rows_of
from mlxd.models.ops_mlx import DeviceMasks, MLXBackend

# Queries per block: small enough that skipping keys past the block's last position saves most of the masked
# half, large enough that each block's two matmuls keep BLAS efficient. Fewer (down to MIN_BLOCK) when one
# block's scores would pass SCORES_BYTES: long contexts with many heads.
BLOCK = 128
MIN_BLOCK = 16
SCORES_BYTES = 64 << 20
# Rows (tokens x experts per token) from which gpt-oss's clamped SwiGLU runs in NumPy: a prefill of 32 tokens at
# top-4. Smaller decode steps stay in MLX, lazy; larger ones gain more from NumPy's exp than the sync costs them.
SWIGLU_ROWS = 128


class NumpyBackend(MLXBackend):
    """NumPy where its kernels apply (the rules below), MLX's ops everywhere else."""

    name = "numpy"

    def attention(self, queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: Mask,
                  softcap: float | None = None, sinks: mx.array | None = None) -> mx.array:
        if attention_applies(queries, mask, softcap):
            return attention(queries, keys, values, scale, mask, sinks)
        return super().attention(queries, keys, values, scale, mask, softcap, sinks)

    def clamped_swiglu(self, gate: mx.array, up: mx.array, limit: float, alpha: float) -> mx.array:
        if swiglu_applies(gate):
            return clamped_swiglu(gate, up, limit, alpha)
        return super().clamped_swiglu(gate, up, limit, alpha)

    def gated_activation(self, gate: mx.array, up: mx.array, kind: str, tokens: int | None = None) -> mx.array:
        if activation_applies(gate, kind, tokens):
            return activation(gate, kind, up)
        return super().gated_activation(gate, up, kind, tokens)

    def activation(self, x: mx.array, kind: str, tokens: int | None = None) -> mx.array:
        if activation_applies(x, kind, tokens):
            return activation(x, kind)
        return super().activation(x, kind, tokens)

    def prompt_scores(self, logits: mx.array, targets: list[int],
                      top_k: int) -> tuple[list[float], list[list[int]], list[list[float]]]:
        if scores_apply(logits):
            return scores(logits, targets, top_k)
        return super().prompt_scores(logits, targets, top_k)

    def upload_masks(self, bitmasks: np.ndarray, rows: list[int] | None, shape: tuple[int, ...],
                     buffers: MaskBuffers | None = None) -> DeviceMasks:
        bias = mask_bias(bitmasks, shape, rows)
        written = buffers.write(bias) if buffers is not None else None
        return DeviceMasks(mx.array(bias) if written is None else written, None, shape)

    def apply_masks(self, logits: mx.array, masks: DeviceMasks) -> mx.array:
        bias = rows_of(masks.array, logits.shape[0])  # a MaskBuffers array may have room for more rows
        return logits + (bias if bias.dtype == logits.dtype else bias.astype(logits.dtype))


def prefill(x: mx.array, tokens: int) -> bool:
    """True when `x` (float32) belongs to a forward pass of more than one token."""
    return tokens > 1 and x.dtype == mx.float32


def attention_applies(queries: mx.array, mask: Mask, softcap: float | None) -> bool:
    """Attention over [B, heads, T, D] queries without soft-capping and with no mask, a causal or a boolean one."""
    return (softcap is None and prefill(queries, queries.shape[2])
            and (mask is None or isinstance(mask, str) or mask.dtype == mx.bool_))


def attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: Mask,
              sinks: mx.array | None = None) -> mx.array:
    """softmax(scale * q k^T + mask) v over [B, heads, T, D]; kv heads may be fewer than query heads.

    A "causal" mask is bottom-right aligned (the queries are the last T positions of the keys); a boolean
    array mask broadcasts against [B, heads, T, keys] and is True where a key is visible. `sinks` [heads]: a
    logit per head that joins each row's softmax as a key without a value (ops.attention).
    """
    causal = isinstance(mask, str)
    arrays = [queries, keys, values] + ([mask] if isinstance(mask, mx.array) else [])
    mx.eval(arrays + ([] if sinks is None else [sinks]))
    q, k, v = (np.asarray(a) for a in arrays[:3])
    visible = _grouped_mask(np.asarray(mask), q.shape[1] // k.shape[1]) if isinstance(mask, mx.array) else None
    B, n_heads, n_q, D = q.shape
    n_kv, n_k = k.shape[1], k.shape[2]
    rep = n_heads // n_kv
    sink = None if sinks is None else np.asarray(sinks.astype(mx.float32)).reshape(n_kv, rep, 1, 1)
    q = q.reshape(B, n_kv, rep, n_q, D)  # the query heads that share a kv head, side by side
    out = np.empty((B, n_kv, rep, n_q, v.shape[-1]), dtype=np.float32)
    rows = max(MIN_BLOCK, min(BLOCK, SCORES_BYTES // (4 * B * n_heads * n_k)))
    for start in range(0, n_q, rows):
        stop = min(n_q, start + rows)
        # With a causal mask the block's last query sees keys up to its own position and none after.
        end = n_k - n_q + stop if causal else n_k
        block = q[:, :, :, start:stop] * np.float32(scale)
        scores = block.reshape(B, n_kv, rep * (stop - start), D) @ k[:, :, :end].swapaxes(-1, -2)
        scores = scores.reshape(B, n_kv, rep, stop - start, end)
        if causal:
            _hide_future(scores[..., end - (stop - start):])
        elif visible is not None:
            np.copyto(scores, -np.inf, where=~visible[..., start:stop, :])
        top = _exp_normalized(scores, sink)
        totals = scores.sum(axis=-1, keepdims=True)
        if sink is not None:
            totals += np.exp(sink - top)
        mixed = scores.reshape(B, n_kv, rep * (stop - start), end) @ v[:, :, :end]
        out[:, :, :, start:stop] = mixed.reshape(B, n_kv, rep, stop - start, -1) / totals
    return mx.array(out.reshape(B, n_heads, n_q, -1))


def numpy_blas_on_one_thread() -> None:
    """NumPy's wheels bundle their own OpenBLAS, whose thread pool sits beside that of the OpenBLAS MLX uses.
    Threads of one pool spin for a while after their work, so the two fight over the cores: on 2 cores with both
    at 2 threads, prefill ran at half the speed of NumPy's at 1 (bench/cpu_prefill_kernels.py --threads 2:
    195 against 404 tok/s at 512 tokens). So NumPy's matmuls run on one thread; MLX's keep every core. Called
    when this backend is chosen (ops.use)."""
    for setter in _numpy_openblas_functions("set_num_threads"):
        setter(1)


def _numpy_openblas_functions(name: str) -> list:
    """`name` (openblas_<name>) of the OpenBLAS bundled in NumPy's wheel: scipy_openblas64_ since NumPy 2,
    openblas64_ before; none where NumPy uses the system's BLAS or Accelerate."""
    found = []
    for path in glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "lib*openblas*.so*")):
        lib = ctypes.CDLL(path)
        for symbol in (f"scipy_openblas_{name}64_", f"openblas_{name}64_", f"openblas_{name}"):
            try:
                found.append(lib[symbol])
                break
            except AttributeError:  # not the name this build exports
                continue
    return found


def _grouped_mask(mask: np.ndarray, rep: int) -> np.ndarray:
    """A mask broadcastable to [B, heads, T, keys] reshaped to broadcast against [B, kv heads, rep, T, keys]."""
    # Declared, since numpy's stubs give reshape to a shape of unknown length their 0-d overload.
    full: np.ndarray = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if full.shape[1] == 1:
        return full[:, :, None]
    return full.reshape(full.shape[0], full.shape[1] // rep, rep, *full.shape[2:])


def _hide_future(square: np.ndarray) -> None:
    """Set the scores of keys after each query (the strict upper triangle of the block's last columns) to -inf."""
    square += _future(square.shape[-1])


@functools.lru_cache(maxsize=4)
def _future(n: int) -> np.ndarray:
    """0 on and below the diagonal, -inf above it."""
    return np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)


def _exp_normalized(scores: np.ndarray, sinks: np.ndarray | None = None) -> np.ndarray:
    """exp(scores - row max) in place, the max taken over the row's sink too; returns the max. The caller divides
    by the row sums (plus exp(sink - max)) after the second matmul (T x D values instead of T x keys)."""
    top = scores.max(axis=-1, keepdims=True)
    if sinks is not None:
        np.maximum(top, sinks, out=top)
    scores -= top
    np.exp(scores, out=scores)
    return top


def swiglu_applies(gate: mx.array) -> bool:
    """Float32 expert activations of at least SWIGLU_ROWS rows (tokens times experts per token, counted whatever
    the MoE layer's layout). Rows of 2880 (gpt-oss-20b) take 0.34 ms in NumPy against 3.9 in MLX at 64 rows."""
    return gate.dtype == mx.float32 and gate.size >= SWIGLU_ROWS * gate.shape[-1]


def clamped_swiglu(gate: mx.array, up: mx.array, limit: float, alpha: float) -> mx.array:
    """gpt-oss's clamped SwiGLU (ops.clamped_swiglu) in NumPy, whose exp is vectorized where MLX's CPU one is
    scalar: a 512-token chunk of gpt-oss-20b's top-4 experts (5.9M values) takes 19 ms against MLX's 163 (40 from
    strided views of a fused projection's halves)."""
    mx.eval(gate, up)
    g = np.minimum(np.asarray(gate), np.float32(limit))
    u = np.clip(np.asarray(up), np.float32(-limit), np.float32(limit))
    u += 1
    out = g * np.float32(-alpha)
    with np.errstate(over="ignore"):  # exp(-alpha g) = inf for very negative g gives g / inf = -0, as it should
        np.exp(out, out=out)
    out += 1
    np.divide(g, out, out=out)  # g * sigmoid(alpha g) = g / (1 + exp(-alpha g))
    out *= u
    return mx.array(out)


def activation_applies(x: mx.array, kind: str, tokens: int | None = None) -> bool:
    """An activation NumPy has (not exact GELU: NumPy has no erf) in a prefill: `tokens` per sequence, or when
    None the T of a dense MLP's [..., T, features]. Never the rows of the array: a batched decode step has one
    row per sequence and must stay lazy in MLX, and routed experts lay out [..., k, 1, features]."""
    return kind in ("silu", "gelu_tanh") and prefill(x, x.shape[-2] if tokens is None else tokens)


def activation(x: mx.array, kind: str, up: mx.array | None = None) -> mx.array:
    """kind(x), times `up` for a gated MLP; kind is "silu" or "gelu_tanh" (GELU's tanh approximation)."""
    mx.eval(x if up is None else [x, up])
    g = np.asarray(x)
    with np.errstate(over="ignore"):  # exp(-x) = inf for very negative x gives x / inf = -0, as it should
        out = _activation(g, kind)
    if up is not None:
        out *= np.asarray(up)
    return mx.array(out)


def _activation(g: np.ndarray, kind: str) -> np.ndarray:
    if kind == "silu":
        out = np.negative(g)
        np.exp(out, out=out)
        out += 1
        np.divide(g, out, out=out)  # x * sigmoid(x) = x / (1 + exp(-x))
    else:
        # 0.5 x (1 + tanh(z)) written as x / (1 + exp(-2z)): the same function without the cancellation in
        # 1 + tanh(z) for negative z.
        out = g * g
        out *= np.float32(0.044715)
        out += 1
        out *= g
        out *= np.float32(-2 * math.sqrt(2 / math.pi))  # -2z, z = sqrt(2/pi) (x + 0.044715 x^3)
        np.exp(out, out=out)
        out += 1
        np.divide(g, out, out=out)
    return out


def scores_apply(logits: mx.array) -> bool:
    """Prompt logprobs of a prefill: rows of float32 logits, scored together (bench/cpu_prompt_logprobs.py).
    One row (a decode step's) stays in MLX, lazy, so the step pipelines."""
    return logits.ndim == 2 and prefill(logits, logits.shape[0])


def scores(logits: mx.array, targets: list[int], top_k: int) -> tuple[list[float], list[list[int]], list[list[float]]]:
    """For logits [T, V]: the log-softmax value of targets[i] in row i, and (when top_k) each row's top_k ids and
    values, best first; the same numbers generation.sampling.logprobs and top_logprobs give, as lists."""
    mx.eval(logits)
    x = np.asarray(logits)
    rows = np.arange(x.shape[0])
    top = x.max(axis=-1, keepdims=True)
    shifted = x - top
    np.exp(shifted, out=shifted)
    log_total = top[:, 0] + np.log(shifted.sum(axis=-1))  # logsumexp of each row
    chosen = x[rows, np.asarray(targets)] - log_total
    if not top_k:
        return chosen.tolist(), [[] for _ in targets], [[] for _ in targets]
    k = min(top_k, x.shape[-1])
    ids = np.argpartition(x, x.shape[-1] - k, axis=-1)[:, -k:]  # the k largest, in no order
    order = np.argsort(-np.take_along_axis(x, ids, axis=-1), axis=-1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=-1)
    values = np.take_along_axis(x, ids, axis=-1) - log_total[:, None]
    return chosen.tolist(), ids.tolist(), values.tolist()


# The additive bias of each mask byte's 8 tokens: row b holds 0 where bit i of b is set (allowed), else -inf.
_BYTE_BIAS = np.where(np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") == 1,
                      np.float32(0), np.float32(-np.inf))


def mask_bias(bitmasks: np.ndarray, shape: tuple[int, ...], rows: list[int] | None) -> np.ndarray:
    """float32 `shape` [B, ..., V]: 0 where the int32 [..., W] bitmasks allow a token, -inf where they do not;
    the masks cover every batch row, or only `rows` (the others all 0)."""
    width, words = shape[-1], bitmasks.shape[-1]
    if width > 32 * words:
        raise ValueError(f"a mask of {words} words covers {32 * words} tokens, not {width}")
    masked = np.ascontiguousarray(bitmasks, dtype="<i4")  # bytes in bit order: byte 0 holds tokens 0-7
    bias = _BYTE_BIAS[masked.view(np.uint8)].reshape(*masked.shape[:-1], 32 * words)[..., :width]
    if rows is None:
        return bias
    full = np.zeros(shape, dtype=np.float32)
    full[rows] = bias
    return full
