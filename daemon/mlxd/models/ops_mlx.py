"""The MLX backend of models/ops.py: MLX's own ops, for every device and dtype.

Attention takes MLX's fused kernel, with three exceptions: logit soft-capping (Gemma), which has no fused kernel;
one query per row with an array mask (batched decode), which MLX's CUDA backend runs unfused; and a few queries per
row on CUDA (verify steps), where the fused kernel builds a plan for every new key length. Attention sinks
(gpt-oss) go to the fused kernel as its `sinks` argument, and join the explicit paths' softmax as one more key.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxd.generation.sampling import logprobs, top_logprobs
from mlxd.models.base import DeltaHeads, ExpertQuantization, Mask
from mlxd.models.mask_buffers import MaskBuffers, rows_of

Fn = TypeVar("Fn", bound=Callable[..., Any])

_ACTIVATIONS = {"silu": nn.silu, "gelu_tanh": nn.gelu_approx, "gelu": nn.gelu}


def _gated(activation: Callable[[mx.array], mx.array]) -> Callable[[mx.array, mx.array], mx.array]:
    return lambda gate, up: activation(gate) * up


_GATED = {kind: _gated(f) for kind, f in _ACTIVATIONS.items()}

# Constrained rows of a mixed batch masked by padding the others' masks with all-allowed rows (mask_logits); False:
# only those rows gathered, masked and scattered back. By construction (3 graph nodes and a logits copy fewer); not
# measured yet: session 40's A/B (`FILL=half:schema constrained-variant`) masked every row on both sides, since
# batch_inprocess's --variant ignored --fill until session 47.
PAD_MASKED_ROWS = True

# The masks applied by one compiled select (_masked_logits) where the logits are a multiple of 32 wide (SmolLM2's,
# Llama's, Qwen's, Gemma's and gpt-oss's are), rather than bitmask_to_allowed's ops; False: those ops. Measured on
# an H100 (session 40, random 1B, constrained streams in-process, `--variant ops:...=False`): the ops ran at 0.967
# of the select at one stream, 0.978 at 16 (a 1-row step is ~1.9 ms of host work, each graph node ~10 us of it).
FUSED_MASKS = True


@dataclass(frozen=True)
class DeviceMasks:
    """Constrained rows' masks on the device (ops.upload_masks), in the layout the backend's apply_masks selects by.
    Made without building a graph, so off the worker's thread: the mask thread uploads a step's masks while the
    worker launches the forward pass (a 16-row mask of a 128k vocabulary is 256 KB: ~0.17 ms of the host on an
    H100, MLX's CUDA buffers being managed memory)."""

    array: mx.array                 # the masks' words (fused: int32 [..., W, 1]), or the NumPy backend's bias
    rows: list[int] | None          # the batch rows they mask, in order (None: every row)
    shape: tuple[int, ...]          # the logits' shape they were made for
    fused: bool = False             # for the compiled select (_masked_logits)


class MLXBackend:
    name = "mlx"

    def prefill_chunk(self) -> int:
        """Prompt tokens a prefill step takes by default (`serve --prefill-chunk auto`). 512 on Apple's GPUs and the
        CPU, as before: larger chunks not measured there (no such machine lent), where a chunk computes slower and
        a larger one holds the decoding streams up longer (CUDA's were measured: ops_cuda.CudaBackend)."""
        return 512

    def decode_block(self, owner: Any, fn: Callable[..., mx.array], x: mx.array, *more: mx.array) -> mx.array:
        """fn(x, *more) for a block of a decode step (ops.decode_block): here as written."""
        return fn(x, *more)

    def attention(self, queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: Mask,
                  softcap: float | None = None, sinks: mx.array | None = None) -> mx.array:
        if softcap is not None:
            return softcapped_attention(queries, keys, values, scale, mask, softcap, sinks)
        if _takes_grouped(queries.shape[2], mask, queries.shape[0] * queries.shape[1] * keys.shape[2]):
            return grouped_attention(queries, keys, values, scale, mask, sinks)
        if sinks is not None:  # the fused kernel wants sinks of a type that promotes to the output's
            sinks = sinks.astype(queries.dtype)
        return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask, sinks=sinks)

    def clamped_swiglu(self, gate: mx.array, up: mx.array, limit: float, alpha: float) -> mx.array:
        return fused("clamped_swiglu", clamped_swiglu)(gate, up, limit, alpha)

    def gated_activation(self, gate: mx.array, up: mx.array, kind: str, tokens: int | None = None) -> mx.array:
        return fused(kind, _GATED[kind])(gate, up)

    def activation(self, x: mx.array, kind: str, tokens: int | None = None) -> mx.array:
        return _ACTIVATIONS[kind](x)

    def gated_delta_decode(self, qkv: mx.array, a: mx.array, b: mx.array, conv_weight: mx.array,
                           conv_state: mx.array, A_log: mx.array, dt_bias: mx.array, state: mx.array,
                           heads: DeltaHeads) -> tuple[mx.array, mx.array, mx.array] | None:
        return None  # no fused kernel: the model runs models/gated_delta.py's ops

    def latent_attention(self, q_latent: mx.array, q_rot: mx.array, latent: mx.array, k_rot: mx.array,
                         scale: float, mask: Mask) -> mx.array:
        B, H, L, _ = q_latent.shape
        # Every head reads the same single latent "head": the heads are the rows of one matmul.
        scores = (q_latent.reshape(B, 1, H * L, -1) @ latent.swapaxes(-1, -2)
                  + q_rot.reshape(B, 1, H * L, -1) @ k_rot.swapaxes(-1, -2)) * scale
        if isinstance(mask, mx.array):
            if mask.dtype == mx.bool_:
                scores = mx.where(mask, scores, mx.array(-mx.inf, scores.dtype))
            else:
                scores = scores + mask.astype(scores.dtype)
        weights = mx.softmax(scores.astype(mx.float32), axis=-1).astype(latent.dtype)
        return (weights @ latent).reshape(B, H, L, -1)

    def gather_matmul(self, x: mx.array, indices: mx.array, weight: mx.array, quant: ExpertQuantization | None,
                      sorted_indices: bool = False) -> mx.array:
        if quant is None:
            return mx.gather_mm(x, weight.swapaxes(-1, -2), rhs_indices=indices, sorted_indices=sorted_indices)
        return mx.gather_qmm(x, weight, quant.scales, quant.biases, rhs_indices=indices, transpose=True,
                             group_size=quant.group_size, bits=quant.bits, mode=quant.mode,
                             sorted_indices=sorted_indices)

    def sorts_experts(self, pairs: int, weights: Callable[[], Sequence[ExpertQuantization | None]]) -> bool:
        # mlx-lm's threshold: below it (decode steps of a small batch) the argsort and the two gathers cost more
        # than the scattered reads they save.
        return pairs >= 64

    def route_experts(self, logits: mx.array, top_k: int, renormalize: bool) -> tuple[mx.array, mx.array]:
        indices = mx.argpartition(logits, kth=-top_k, axis=-1)[..., -top_k:]
        if renormalize:
            weights = mx.softmax(mx.take_along_axis(logits, indices, axis=-1), axis=-1, precise=True)
        else:
            weights = mx.take_along_axis(mx.softmax(logits, axis=-1, precise=True), indices, axis=-1)
        return indices, weights

    def route_sigmoid(self, logits: mx.array, bias: mx.array, top_k: int, normalize: bool, scaling: float,
                      n_group: int = 1, topk_group: int = 1,
                      weights_dtype: mx.Dtype = mx.float32) -> tuple[mx.array, mx.array]:
        # The element-wise ops on either side of the choice compiled (a shapeless compilation takes no slice).
        scores, unwanted = fused("sigmoid_choice", _sigmoid_choice)(logits, bias)
        if topk_group < n_group:
            unwanted = _drop_groups(unwanted, n_group, n_group - topk_group)
        indices = mx.argpartition(unwanted, kth=top_k - 1, axis=-1)[..., :top_k]
        return indices, fused(*_sigmoid_weigher(normalize, scaling))(scores, indices).astype(weights_dtype)

    def combine_experts(self, y: mx.array, weights: mx.array, plus: mx.array | None = None) -> mx.array:
        combined = (y * weights[..., None]).sum(axis=-2)
        return combined if plus is None else combined + plus

    def quantized_matmul(self, x: mx.array, weight: mx.array, scales: mx.array, biases: mx.array | None,
                         transpose: bool, group_size: int, bits: int, mode: str) -> mx.array:
        return mx.quantized_matmul(x, weight, scales, biases, transpose=transpose, group_size=group_size, bits=bits,
                                   mode=mode)

    def mask_logits(self, logits: mx.array, bitmasks: np.ndarray, rows: list[int] | None = None) -> mx.array:
        return self.apply_masks(logits, self.upload_masks(bitmasks, rows, tuple(logits.shape)))

    def upload_masks(self, bitmasks: np.ndarray, rows: list[int] | None, shape: tuple[int, ...],
                     buffers: MaskBuffers | None = None) -> DeviceMasks:
        if rows is not None and PAD_MASKED_ROWS:
            # Every row masked, the others allowing everything: the masks cover the logits whole, without the
            # copy, gather and scatter that masking some rows takes (3 graph nodes more, each step of a batch mixing
            # constrained and free rows, where a GPU's step is bound by the host); the rows' masks cost only bytes
            # (a 128k vocabulary's row is 16 KB).
            full = np.full((shape[0], *bitmasks.shape[1:]), -1, dtype=np.int32)
            full[rows] = bitmasks
            bitmasks, rows = full, None
        width = shape[-1]
        if rows is None and FUSED_MASKS and width % 32 == 0:
            # Each word of a mask beside the 32 logits it covers: the select is element-wise, one kernel.
            words = bitmasks[..., :width // 32, None]
            written = buffers.write(words) if buffers is not None else None
            return DeviceMasks(mx.array(words) if written is None else written, None, shape, fused=True)
        return DeviceMasks(mx.array(bitmasks), rows, shape)

    def apply_masks(self, logits: mx.array, masks: DeviceMasks) -> mx.array:
        if masks.fused:
            grouped = logits.reshape(*logits.shape[:-1], logits.shape[-1] // 32, 32)
            words = rows_of(masks.array, logits.shape[0])  # a MaskBuffers array may have room for more rows
            return fused("masked_logits", _masked_logits)(grouped, words, _bit_of_lane()).reshape(logits.shape)
        allowed = bitmask_to_allowed(masks.array, logits.shape[-1])
        if masks.rows is None:
            return apply_mask(logits, allowed)
        index = mx.array(masks.rows, dtype=mx.int32)
        out = mx.array(logits)
        out[index] = apply_mask(logits[index], allowed)
        return out

    def prompt_scores(self, logits: mx.array, targets: list[int],
                      top_k: int) -> tuple[list[float], list[list[int]], list[list[float]]]:
        scores = logprobs(logits)
        chosen = mx.take_along_axis(scores, mx.array(targets, dtype=mx.int32)[:, None], axis=-1)[:, 0]
        tops = top_logprobs(scores, top_k) if top_k else ()
        mx.eval(chosen, *tops)  # one evaluation, which waits without the GIL (tolist would hold it)
        # float32 [T], int32 [T, k] and float32 [T, k] read back as these lists; MLX's stub types every tolist()
        # as any nesting of any scalar.
        values = cast(list[float], chosen.tolist())
        if not tops:
            return values, [[] for _ in targets], [[] for _ in targets]
        return values, cast(list[list[int]], tops[0].tolist()), cast(list[list[float]], tops[1].tolist())


def softcapped_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: Mask,
                         softcap: float, sinks: mx.array | None = None) -> mx.array:
    """Attention with the scores soft-capped (cap * tanh(scores / cap)) before the mask, computed explicitly;
    sinks [heads], when given, join the softmax uncapped."""
    n_rep = queries.shape[1] // keys.shape[1]
    if n_rep > 1:
        keys = mx.repeat(keys, n_rep, axis=1)
        values = mx.repeat(values, n_rep, axis=1)
    scores = (queries * scale) @ keys.swapaxes(-1, -2)
    scores = mx.tanh(scores / softcap) * softcap
    if isinstance(mask, str):
        n_q, n_k = scores.shape[-2:]
        mask = mx.arange(n_k)[None, :] <= mx.arange(n_k - n_q, n_k)[:, None]
    if mask is not None and mask.dtype == mx.bool_:
        scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
    elif mask is not None:
        scores = scores + mask.astype(scores.dtype)  # additive: 0 or -inf
    if sinks is None:
        weights = mx.softmax(scores.astype(mx.float32), axis=-1)
    else:
        weights = mx.softmax(with_sinks(scores.astype(mx.float32), sinks.reshape(-1, 1, 1)), axis=-1)[..., :-1]
    return weights.astype(values.dtype) @ values


# Query lengths up to this (a verify step's 1 + drafts, a draft model's short catch-up) take grouped_attention on
# CUDA, where MLX's fused kernel for more than one query builds a cuDNN plan for each new key length: a verify
# step of an 8B model on an H200 took 50-100 ms against 4.6 ms for a plain step, every step, since the key length
# grows with each. The explicit path's scores are [B, heads, L, T]: small for a few queries.
FEW_QUERIES = 16
# So do more queries while their scores are at most this many (rows x heads x queries x keys: 512 MB of float32):
# a prompt chunk's, or a draft model's catch-up. Each new shape cost the fused kernel ~37 ms of planning on an
# H100 (bench attention_plans, session 30: 1 row x 512 queries x 700 keys, 32 heads), against 0.2 ms for the
# attention itself, and every prompt of a new length is a new shape; the explicit ops cost the same within 15 % at
# these sizes, and at 1 x 2,048 x 2,048 as much as the planned kernel (0.921 against 0.917 ms; 1.28 ms for their
# first call, the fused kernel's 36.5). 2^27 takes the whole first chunk of a prompt at CUDA's 2,048-token chunks
# (ops_cuda.CudaBackend.prefill_chunk) explicitly at 32 heads, as 2^25 took a 512-token one.
SMALL_SCORES = 1 << 27


def _takes_grouped(queries: int, mask: Mask, per_query: int) -> bool:
    """Whether attention with `queries` queries per row takes grouped_attention (see the top): one query with an
    array mask, or on CUDA a few with no mask of their own per head, or more whose scores are small (`per_query`:
    rows x heads x keys)."""
    if queries == 1:
        return isinstance(mask, mx.array)
    shared_by_heads = not isinstance(mask, mx.array) or mask.ndim < 4 or mask.shape[1] == 1
    few = queries <= FEW_QUERIES or queries * per_query <= SMALL_SCORES
    return few and shared_by_heads and _plans_per_shape()


def _plans_per_shape() -> bool:
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


def grouped_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float,
                      mask: Mask, sinks: mx.array | None = None) -> mx.array:
    """Attention computed explicitly for a few queries per row, the query heads that share a kv head as the rows
    of one matmul, so each key is read once. For one query per row with an array mask (a batch of rows of
    different lengths, or a sliding window) MLX's fused kernel on CUDA falls back to unfused ops that repeat the
    keys per query head: this is 2-3x faster at batch 16 on an H200 (docs/performance.md, 2026-11-22).
    `mask`: None, "causal" (the queries are the last L of the T keys) or an array that broadcasts against
    [B, 1, L, T] (one per row, shared by the heads)."""
    B, n_heads, L, D = queries.shape
    n_kv, T = keys.shape[1], keys.shape[2]
    group = n_heads // n_kv
    q = (queries * scale).reshape(B, n_kv, group * L, D)
    scores = (q @ keys.swapaxes(-1, -2)).reshape(B, n_kv, group, L, T)
    if isinstance(mask, str):
        mask = mx.arange(T)[None] <= (T - L + mx.arange(L))[:, None]  # [L, T]
    if mask is not None:
        mask = mask if mask.ndim < 4 else mask[:, :, None]          # [B, 1, L, T] -> [B, 1, 1, L, T]
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.array(-mx.inf, scores.dtype))
        else:
            scores = scores + mask.astype(scores.dtype)
    if sinks is None:
        weights = mx.softmax(scores, axis=-1, precise=True)
    else:
        weights = mx.softmax(with_sinks(scores, sinks.reshape(n_kv, group, 1, 1)), axis=-1, precise=True)
        weights = weights[..., :-1]
    out = weights.reshape(B, n_kv, group * L, T) @ values
    return out.reshape(B, n_heads, L, values.shape[-1])


def with_sinks(scores: mx.array, sinks: mx.array) -> mx.array:
    """`scores` [..., keys] with one more key per row holding its head's sink logit; `sinks` broadcasts against
    scores[..., :1]. A softmax over the result, its last column dropped, is attention with sinks."""
    column = mx.broadcast_to(sinks.astype(scores.dtype), (*scores.shape[:-1], 1))
    return mx.concatenate([scores, column], axis=-1)


def clamped_swiglu(gate: mx.array, up: mx.array, limit: float, alpha: float) -> mx.array:
    """gpt-oss's clamped SwiGLU (ops.clamped_swiglu) in MLX ops (the backend runs it fused)."""
    gate = mx.minimum(gate, limit)
    return (mx.clip(up, -limit, limit) + 1) * (gate * mx.sigmoid(alpha * gate))


_fused_here = threading.local()


def fused(name: str, fn: Fn) -> Fn:
    """fn mx.compile'd, shapeless (one compilation for every shape), so its element-wise ops run as one kernel: a
    decode step is bound by kernel launches, not bandwidth (docs/performance.md). Made once per thread: MLX 0.32.4
    aborts at exit ("terminate called without an active exception") once a module-level compiled function ran on
    another thread than the main one, and the worker thread is where the model runs."""
    made = getattr(_fused_here, name, None)
    if made is None:
        made = mx.compile(fn, shapeless=True)
        setattr(_fused_here, name, made)
    return cast(Fn, made)


def compiled_per_thread(owner: Any, fn: Callable[..., mx.array]) -> Callable[..., mx.array]:
    """fn mx.compile'd (per shape) for `owner` on this thread, made once and kept on the owner (so it goes with the
    model: it holds the model's weights as the trace's constants). Per thread for the reason `fused` gives."""
    made = getattr(owner, "_compiled_block", None)
    thread = threading.get_ident()
    if made is None or made[0] != thread:
        made = (thread, mx.compile(fn))
        object.__setattr__(owner, "_compiled_block", made)
    return cast(Callable[..., mx.array], made[1])


def _sigmoid_choice(logits: mx.array, bias: mx.array) -> tuple[mx.array, mx.array]:
    """The sigmoid scores, and what the choice takes the k smallest of: -(scores + bias)."""
    scores = mx.sigmoid(logits)
    return scores, -(scores + bias)


def _drop_groups(unwanted: mx.array, n_group: int, dropped: int) -> mx.array:
    """`unwanted` (-choice) [..., E] with the `dropped` groups whose two best choice scores sum lowest ruled out."""
    choice = -unwanted.reshape(*unwanted.shape[:-1], n_group, -1)
    group_scores = mx.topk(choice, min(2, choice.shape[-1]), axis=-1).sum(axis=-1)  # [..., n_group]
    worst = mx.argpartition(group_scores, kth=dropped - 1, axis=-1)[..., :dropped]
    choice = mx.put_along_axis(choice, worst[..., None], mx.array(-mx.inf, mx.float32), axis=-2)
    return -choice.reshape(unwanted.shape)


@functools.cache
def _sigmoid_weigher(normalize: bool, scaling: float) -> tuple[str, Callable[..., mx.array]]:
    """The name and function `fused` compiles for these weights: made once, not in every layer of every step."""
    return (f"sigmoid_weights_{normalize}_{scaling}",
            functools.partial(_sigmoid_weights, normalize=normalize, scaling=scaling))


def _sigmoid_weights(scores: mx.array, indices: mx.array, normalize: bool, scaling: float) -> mx.array:
    weights = mx.take_along_axis(scores, indices, axis=-1)
    if normalize:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
    return weights * scaling


@functools.cache
def _bit_of_lane() -> mx.array:
    """0..31: which bit of a mask word allows each of the 32 tokens it covers (made once)."""
    lanes = mx.arange(32, dtype=mx.int32)
    mx.eval(lanes)
    return lanes


def _masked_logits(grouped: mx.array, words: mx.array, lanes: mx.array) -> mx.array:
    """grouped logits [..., W, 32] with the tokens whose bit is clear in words [..., W, 1] at -inf: `fused`
    (shapeless), so unpacking the bits and the select run as one kernel (bitmask_to_allowed's ops are ~10 graph
    nodes, ~10 us of the host's each where a GPU's step is bound by the host)."""
    allowed = ((words >> lanes) & 1) != 0
    return mx.where(allowed, grouped, mx.array(-float("inf"), dtype=grouped.dtype))


def bitmask_to_allowed(bitmask: mx.array, width: int) -> mx.array:
    """bool[..., width] from int32[..., W] masks (bit i of word w allows token 32*w + i), with MLX ops only, so it
    runs on the device next to the logits. `width` is the logits width, at most 32*W."""
    words = bitmask.shape[-1]
    if width > 32 * words:
        raise ValueError(f"a mask of {words} words covers {32 * words} tokens, not {width}")
    bits = (bitmask[..., None] >> mx.arange(32, dtype=mx.int32)) & 1
    return bits.reshape(*bitmask.shape[:-1], 32 * words)[..., :width] != 0


def apply_mask(logits: mx.array, allowed: mx.array) -> mx.array:
    """`logits` with every disallowed entry at -inf, in the logits' own dtype (broadcasts `allowed` over rows)."""
    return mx.where(allowed, logits, mx.array(-float("inf"), dtype=logits.dtype))
