"""The kernels model files call, in one place: attention, MLP activations, and the engine's prompt scoring.

Every call goes to one backend, chosen once when a model is loaded (the loader calls `use(choose(...))`) from
the device and the dtype the weights are held in:
- "mlx" (ops_mlx.py): MLX's own ops, with explicit soft-capped attention and a grouped attention for one query
  per row with an array mask (batched decode on CUDA);
- "numpy" (ops_cpu_numpy.py): float32 on the CPU, where MLX computes `exp` one element at a time; prefill
  (more than one token) runs in NumPy, decode steps stay in MLX;
- "cuda" (ops_cuda.py, listed where MLX has CUDA): "mlx" plus kernels of our own for a decode step's Gated
  DeltaNet layers, where MLX's ops cost ~55 graph nodes a layer and a GPU step is bound by host work per node.
Only the worker thread, which alone runs MLX, loads a model and so switches the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import numpy as np

from mlxd.models.base import DeltaHeads, ExpertQuantization, Mask
from mlxd.models.mask_buffers import MaskBuffers
from mlxd.models.ops_cpu_numpy import NumpyBackend, numpy_blas_on_one_thread
from mlxd.models.ops_cuda import CudaBackend
from mlxd.models.ops_mlx import DeviceMasks, MLXBackend

_BACKENDS: dict[str, MLXBackend] = {"mlx": MLXBackend(), "numpy": NumpyBackend()}
if mx.cuda.is_available():
    _BACKENDS["cuda"] = CudaBackend()
BACKENDS = tuple(_BACKENDS)

_backend: MLXBackend = _BACKENDS["mlx"]


def choose(device: mx.Device, dtype: str) -> str:
    """The backend for weights held in `dtype` (a name: "float32", "bfloat16", ...) on `device`."""
    if device.type == mx.cpu:
        return "numpy" if dtype == "float32" else "mlx"
    return "cuda" if "cuda" in _BACKENDS else "mlx"


def use(name: str) -> None:
    """Send every call below to backend `name` from now on. NumPy's own BLAS then runs on one thread, beside
    the threads of MLX's (see ops_cpu_numpy.numpy_blas_on_one_thread)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown kernels {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "numpy":
        numpy_blas_on_one_thread()
    _backend = _BACKENDS[name]


def backend() -> str:
    """The name of the backend in use."""
    return _backend.name


def prefill_chunk() -> int:
    """The prompt tokens a prefill step takes by default with the backend in use (`serve --prefill-chunk auto`)."""
    return _backend.prefill_chunk()


@contextmanager
def using(name: str) -> Iterator[None]:
    """Backend `name` while inside, then the one before (tests and benchmarks that compare backends)."""
    before = backend()
    use(name)
    try:
        yield
    finally:
        use(before)


def attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: Mask,
              softcap: float | None = None, sinks: mx.array | None = None) -> mx.array:
    """softmax(scale * q k^T [soft-capped] + mask) v over [B, heads, T, D]; kv heads may be fewer (grouped).

    `sinks` [heads] (gpt-oss): one learned logit per query head that joins every softmax row as an extra key with
    no value, so the weights of the real keys sum to less than 1 (transformers' eager_attention_forward).
    """
    return _backend.attention(queries, keys, values, scale, mask, softcap, sinks)


def clamped_swiglu(gate: mx.array, up: mx.array, limit: float, alpha: float) -> mx.array:
    """gpt-oss's expert activation (transformers' GptOssExperts._apply_gate): with g = min(gate, limit) (clamped
    above only), (clip(up, -limit, limit) + 1) * g * sigmoid(alpha * g); limit 7.0 and alpha 1.702 in gpt-oss.
    `gate` and `up` are the even and odd output columns of its fused gate_up projection, already separated."""
    return _backend.clamped_swiglu(gate, up, limit, alpha)


def gated_activation(gate: mx.array, up: mx.array, kind: str, tokens: int | None = None) -> mx.array:
    """activation(gate) * up for a gated MLP; kind is "silu" (Llama, Mistral, Qwen) or "gelu_tanh" (Gemma 3).

    `tokens`: how many tokens of each sequence the forward pass computes, which tells a prefill from a decode
    step; None reads it off `gate.shape[-2]`, a dense MLP's [..., T, features]. Experts' activations, laid out
    [..., k, 1, features] by the gathered matmuls (models/moe.py), say it explicitly."""
    return _backend.gated_activation(gate, up, kind, tokens)


def activation(x: mx.array, kind: str, tokens: int | None = None) -> mx.array:
    """"silu", "gelu_tanh" (GELU's tanh approximation, gelu_pytorch_tanh) or "gelu" of x; `tokens` as above."""
    return _backend.activation(x, kind, tokens)


def gated_delta_decode(qkv: mx.array, a: mx.array, b: mx.array, conv_weight: mx.array, conv_state: mx.array,
                       A_log: mx.array, dt_bias: mx.array, state: mx.array,
                       heads: DeltaHeads) -> tuple[mx.array, mx.array, mx.array] | None:
    """One decode token per row through a Gated DeltaNet layer's conv and recurrence, fused: from the in-projected
    qkv [B, 1, C] and gate inputs a, b [B, 1, hv], the conv weight [C, K] and state [B, K-1, C], the layer's A_log
    and dt_bias [hv] and the float32 recurrent state [B, hv, dv, dk]: (the outputs [B, 1, hv, dv] in qkv's dtype,
    the new conv state, the new recurrent state). None where the backend has no fused kernel: the caller then runs
    the MLX ops of models/gated_delta.py, which this equals to float32 rounding."""
    return _backend.gated_delta_decode(qkv, a, b, conv_weight, conv_state, A_log, dt_bias, state, heads)


def latent_attention(q_latent: mx.array, q_rot: mx.array, latent: mx.array, k_rot: mx.array, scale: float,
                     mask: Mask) -> mx.array:
    """Multi-head latent attention from the cache, kv_b_proj absorbed (models/glm4_moe_lite/attention.py): queries
    q_latent [B, H, L, C] and q_rot [B, H, L, R] against the one cached "head" latent [B, 1, T, C] and k_rot
    [B, 1, T, R]; score = scale (q_latent.latent + q_rot.k_rot) (+ mask: None, or one per row that broadcasts
    against [B, 1, 1, T], boolean or additive), softmax in float32, then the weighted latents: [B, H, L, C]."""
    return _backend.latent_attention(q_latent, q_rot, latent, k_rot, scale, mask)


def route_experts(logits: mx.array, top_k: int, renormalize: bool) -> tuple[mx.array, mx.array]:
    """A MoE router's choice (models/moe.py `route`): for router logits [..., E], the k experts [..., k] with the
    largest logits (in no particular order) and their weights [..., k] in the logits' dtype: a float32 softmax over
    the k kept logits when `renormalize` (equal to renormalizing the softmax over all E), else over all E."""
    return _backend.route_experts(logits, top_k, renormalize)


def route_sigmoid(logits: mx.array, bias: mx.array, top_k: int, normalize: bool, scaling: float,
                  n_group: int = 1, topk_group: int = 1,
                  weights_dtype: mx.Dtype = mx.float32) -> tuple[mx.array, mx.array]:
    """A sigmoid router's choice (GLM-4.7-Flash, Nemotron-H, DeepSeek-V3's "noaux_tc": models/glm4_moe_lite/
    experts.py): for float32 router logits [..., E] and the choice bias [E], the k experts [..., k] whose sigmoid
    plus bias is largest (in no particular order), taken only within the `topk_group` of `n_group` equal groups
    whose two best choice scores sum highest, and their weights: each one's sigmoid, divided by the sum of the k
    (plus 1e-20) when `normalize`, times `scaling`, computed in float32 and given in `weights_dtype` (the experts'
    dtype, so that no cast follows: a graph node a layer). In MLX's ops the element-wise parts are compiled (~10
    kernels a layer unfused)."""
    return _backend.route_sigmoid(logits, bias, top_k, normalize, scaling, n_group, topk_group, weights_dtype)


def combine_experts(y: mx.array, weights: mx.array, plus: mx.array | None = None) -> mx.array:
    """The experts' outputs y [..., k, D] summed with their weights [..., k]: [..., D], and `plus` [..., D] (shared
    experts' output) added to that sum in y's dtype, as `sum + plus` would (the CUDA kernel adds it in the same
    pass: one graph node fewer a layer)."""
    return _backend.combine_experts(y, weights, plus)


def gather_matmul(x: mx.array, indices: mx.array, weight: mx.array, quant: ExpertQuantization | None,
                  sorted_indices: bool = False) -> mx.array:
    """The routed experts' matmul of models/moe.py: each row of x [..., 1, in] (one per (token, expert) pair, or
    [..., 1, 1, in] one per token, broadcast over its experts) times the transpose of its expert's matrix in
    weight [E, out, in] (packed as `quant` says, or floats when None); indices [..., k] -> [..., k, 1, out].
    `sorted_indices`: the pairs come ordered by expert (`sorts_experts`)."""
    return _backend.gather_matmul(x, indices, weight, quant, sorted_indices)


def sorts_experts(pairs: int, weights: Callable[[], Sequence[ExpertQuantization | None]]) -> bool:
    """Whether `gather_matmul` wants this many (token, expert) pairs ordered by expert first (MLX's kernels for a
    prefill chunk's many pairs), for a layer whose projections' weights `weights()` gives (each one's quantization,
    None for floats: asked for only where it decides, since building them costs host time in every layer of every
    step); the CUDA backend's own kernel takes a decode step's pairs as they come, where it decodes them all."""
    return _backend.sorts_experts(pairs, weights)


def decode_block(owner: Any, fn: Callable[..., mx.array], x: mx.array, *more: mx.array) -> mx.array:
    """fn(x, *more), a block of a layer without state (a MoE block: its router, experts and shared experts), which
    the backend may run as a graph traced once per shape (mx.compile) where a decode step is bound by the host's work
    per op: the CUDA backend with ops_cuda.COMPILED_BLOCKS, for decode steps (x [B, 1, dims]). `owner` keeps the
    trace; `more`: further arrays the block reads (Gemma 4's experts route on the residual)."""
    return _backend.decode_block(owner, fn, x, *more)


def quantized_matmul(x: mx.array, weight: mx.array, scales: mx.array, biases: mx.array | None, transpose: bool,
                     group_size: int, bits: int, mode: str) -> mx.array:
    """mx.quantized_matmul, on every backend: MLX's CUDA backend has no kernel for `transpose=False` (x @ W with W
    quantized along its rows) nor for weights stacked per head, so the CUDA backend dequantizes W for those."""
    return _backend.quantized_matmul(x, weight, scales, biases, transpose, group_size, bits, mode)


def prompt_scores(logits: mx.array, targets: list[int],
                  top_k: int) -> tuple[list[float], list[list[int]], list[list[float]]]:
    """For logits [T, V]: the log-probability of targets[i] in row i, and when top_k each row's top_k ids and
    log-probabilities, best first. Evaluates (the caller reads the lists)."""
    return _backend.prompt_scores(logits, targets, top_k)


def mask_logits(logits: mx.array, bitmasks: np.ndarray, rows: list[int] | None = None) -> mx.array:
    """logits [B, ..., V] with the tokens a constraint disallows at -inf, in the logits' dtype: `bitmasks` int32
    [..., W] (bit i of word w allows token 32*w + i; W*32 >= V) masks every row, or with `rows` only those batch
    rows, in their order (the others untouched)."""
    return _backend.mask_logits(logits, bitmasks, rows)


def upload_masks(bitmasks: np.ndarray, rows: list[int] | None, shape: tuple[int, ...],
                 buffers: MaskBuffers | None = None) -> DeviceMasks:
    """mask_logits' first half: the masks on the device, for logits of `shape`. It builds no graph, so it may run
    on another thread than the worker's (the mask thread uploads a step's masks while the worker launches).
    `buffers`: arrays to write them into without the GIL, where the backend's layout allows (mask_buffers.py)."""
    return _backend.upload_masks(bitmasks, rows, shape, buffers)


def apply_masks(logits: mx.array, masks: DeviceMasks) -> mx.array:
    """mask_logits' second half: `logits` (of the shape the masks were uploaded for) masked."""
    if tuple(logits.shape) != masks.shape:
        raise ValueError(f"masks made for logits {masks.shape}, not {tuple(logits.shape)}")
    return _backend.apply_masks(logits, masks)
