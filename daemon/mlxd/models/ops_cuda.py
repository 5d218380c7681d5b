"""The CUDA backend of models/ops.py: MLX's ops (MLXBackend) plus kernels of our own where MLX's ops cost a
batched decode step too many graph nodes.

A decode step on a GPU is bound by host work per graph node (docs/performance.md): MLX encodes each node into a
CUDA graph on the host, several microseconds apiece. The kernels, each in its file, replace a layer's worth of
MLX ops with one or two nodes:
- cuda_delta.py: the Gated DeltaNet decode step (Qwen3.5's ~55 nodes a layer as 2; mlx-lm's fused kernel is
  Metal-only);
- cuda_attention.py: one-query attention with an array mask (a batch's rows of different lengths, windows,
  sinks), and MLA's absorbed attention over the cached latent (GLM);
- cuda_moe.py: a MoE layer's routing (softmax, or sigmoid with a bias) and the weighted
  sum of its experts;
- cuda_experts.py: the routed experts' matmuls of a decode step (MLX's computes each (token, expert) pair apart).
Each falls back to MLX's ops for shapes it does not take. The MLX ops stay the reference and what the CPU and the
other GPUs run; tests/models/test_ops_cuda.py holds each kernel to them on a CUDA device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx

from mlxd.models import cuda_experts
from mlxd.models.base import DeltaHeads, ExpertQuantization, Mask
from mlxd.models.cuda_attention import decode_attention
from mlxd.models.cuda_delta import conv_step, gated_delta_step
from mlxd.models.cuda_moe import combine_experts, route_experts, route_sigmoid
from mlxd.models.ops_mlx import MLXBackend, compiled_per_thread

# GLM-4.7-Flash's router (sigmoid scores, a bias for the choice) in one kernel (cuda_moe.py) instead of MLX's 4-5
# ops, which cost 100 us of a routed layer's ~800 at 16 rows on an H100 (bench latent_layer_parts, session 30). A
# 16-row GLM step is bound by the host (graph building and encoding, not the device), so fewer nodes is the gain: on
# an H200 the step took 29.7 ms with it against 33.1 without (bench batch_step_profile --variant, 3 interleaved
# rounds, each one faster; mlx-lm 36.5), after tests/models/test_ops_cuda.py's routing tests passed there (28).
SIGMOID_ROUTING = True

# A dense quantized layer's decode batch [B, 1, in] computed as one product of B rows ([B, in]) instead of as MLX
# takes that shape, B products of one row each (MLX 0.32.2's source: qmm_sm80's grid (1, out / 128, B) of 16-row
# tiles from 8 rows on, 15 of 16 rows padding). On an H100 at 16 rows (bench dense_rows, session 31: the same
# weights called 20 times, so from L2) GLM-4.7-Flash's layers took 2.4-4x less time so (o_proj 85.9 -> 21.6 us, the
# output layer 2,043 -> 150), and one routed layer in parts 938 -> 771 us; yet the whole 16-stream step ran 0.917x
# and 1.065x of the default in two commands (batch_inprocess --variant, 4 rounds each): not beyond the noise. Off
# until a whole step shows it (two reshapes a layer are two more graph nodes for a step bound by host work).
FLAT_ROWS = False

# A decode step's MoE blocks (ops.decode_block) traced once per batch size with mx.compile and replayed: no Python
# per op and no per-call kernel-source building (MLX's cuda_kernel builds a kernel's whole source at every call). A
# 16-row GLM-4.7-Flash step is the host's (session 32 on an H200: the graph's Python 14.0 ms, its encoding 22.5, the
# device wait 0.15), and py-spy put 16 % of it in the MoE blocks' Python. Session 33, H200: the 16-row step 36.3 ->
# 29.0 ms (batch_step_profile --variant, 3 interleaved rounds, each faster: 36.3/28.8, 40.5/29.6, 35.9/29.0; mlx-lm
# 43.7), over gRPC 16 streams 1.37 and 1.39x mlx-lm's decode in two commands (every round 1.34-1.44); the CUDA tests
# of the block, the routing and the engine's batched rows and prefix cache passed with it on.
COMPILED_BLOCKS = True


class CudaBackend(MLXBackend):
    name = "cuda"

    def prefill_chunk(self) -> int:
        # 2,048 tokens a chunk. A chunk reads every weight once, all the experts of a MoE's layers among them, and
        # fewer, larger chunks pay: H100, TTFT of 2,048-token prompts (bench prefill_chunks, medians of 3), ms at
        # 512 / 1,024 / 2,048 tokens a chunk. bfloat16, random weights (session 34): GLM-4.7-Flash's first 24 layers
        # 356 / 199 / 172 (mlx-lm, whose prefill steps take 2,048, ~175), Gemma-4-26B-A4B's first 18 layers 259 /
        # 171 / 134. 4-bit (session 35, with cuda_experts.SLICES): Llama-3-8B 336 / 297 / 312; Qwen3-30B-A3B 813 at
        # 512, 777 at 2,048; Gemma-4-26B-A4B 697 and 637; GLM-4.7-Flash 786 and 750. The streams decoding beside a
        # long prompt then wait for one such chunk a step, as vLLM's and SGLang's token budgets on a GPU (2,048 and
        # more) have them wait.
        return 2048

    def decode_block(self, owner: Any, fn: Callable[..., mx.array], x: mx.array, *more: mx.array) -> mx.array:
        if COMPILED_BLOCKS and x.ndim == 3 and x.shape[1] == 1:
            return compiled_per_thread(owner, fn)(x, *more)
        return fn(x, *more)

    def latent_attention(self, q_latent: mx.array, q_rot: mx.array, latent: mx.array, k_rot: mx.array,
                         scale: float, mask: Mask) -> mx.array:
        if q_latent.shape[2] == 1 and not isinstance(mask, str):
            B, H, _, _ = q_latent.shape
            T = latent.shape[2]
            # Each head a kv head of its own over the same cached latent (a broadcast: nothing is copied).
            keys = mx.broadcast_to(latent, (B, H, T, latent.shape[-1]))
            rope_keys = mx.broadcast_to(k_rot, (B, H, T, k_rot.shape[-1]))
            out = decode_attention(q_latent, keys, keys, scale, mask, None, q_rot, rope_keys)
            if out is not None:
                return out
        return super().latent_attention(q_latent, q_rot, latent, k_rot, scale, mask)

    def route_experts(self, logits: mx.array, top_k: int, renormalize: bool) -> tuple[mx.array, mx.array]:
        routed = route_experts(logits, top_k, renormalize)
        return routed if routed is not None else super().route_experts(logits, top_k, renormalize)

    def route_sigmoid(self, logits: mx.array, bias: mx.array, top_k: int, normalize: bool, scaling: float,
                      n_group: int = 1, topk_group: int = 1,
                      weights_dtype: mx.Dtype = mx.float32) -> tuple[mx.array, mx.array]:
        if SIGMOID_ROUTING and topk_group >= n_group:  # no group dropped (GLM-4.7-Flash: one group)
            routed = route_sigmoid(logits, bias, top_k, normalize, scaling, weights_dtype)
            if routed is not None:
                return routed
        return super().route_sigmoid(logits, bias, top_k, normalize, scaling, n_group, topk_group, weights_dtype)

    def gather_matmul(self, x: mx.array, indices: mx.array, weight: mx.array, quant: ExpertQuantization | None,
                      sorted_indices: bool = False) -> mx.array:
        out = cuda_experts.gather_matmul(x, indices, weight, quant)
        return out if out is not None else super().gather_matmul(x, indices, weight, quant, sorted_indices)

    def sorts_experts(self, pairs: int, weights: Callable[[], Sequence[ExpertQuantization | None]]) -> bool:
        if not super().sorts_experts(pairs, weights):
            return False  # unsorted for MLX's kernel too: the weights need not be asked for
        # the kernels list each expert's pairs themselves: sorted only for MLX's kernel
        return not all(cuda_experts.takes(pairs, w) for w in weights())

    def combine_experts(self, y: mx.array, weights: mx.array, plus: mx.array | None = None) -> mx.array:
        if y.dtype != weights.dtype or (plus is not None and plus.dtype != y.dtype):  # MLX's ops widen then
            return super().combine_experts(y, weights, plus)
        return combine_experts(y, weights, plus)

    def attention(self, queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: Mask,
                  softcap: float | None = None, sinks: mx.array | None = None) -> mx.array:
        # One query per row with an array mask (a batch of rows of different lengths, or a sliding window): MLX's
        # fused kernel takes no mask on CUDA, and its ops cost ~5 graph nodes a layer; this is one.
        if softcap is None and queries.shape[2] == 1 and isinstance(mask, mx.array):
            out = decode_attention(queries, keys, values, scale, mask, sinks)
            if out is not None:
                return out
        return super().attention(queries, keys, values, scale, mask, softcap, sinks)

    def quantized_matmul(self, x: mx.array, weight: mx.array, scales: mx.array, biases: mx.array | None,
                         transpose: bool, group_size: int, bits: int, mode: str) -> mx.array:
        if transpose and weight.ndim == 2:
            if FLAT_ROWS and x.ndim > 2 and x.size > x.shape[-1]:  # off: this check is all a call pays
                flat = x.reshape(-1, x.shape[-1])
                out = super().quantized_matmul(flat, weight, scales, biases, transpose, group_size, bits, mode)
                return out.reshape(*x.shape[:-1], out.shape[-1])
            return super().quantized_matmul(x, weight, scales, biases, transpose, group_size, bits, mode)
        # MLX 0.32.4 on CUDA: "[quantized_matmul] No implementation for problem shape ... transpose: false", and
        # none for weights stacked per head either (GLM's kv_b_proj split by head: "1x16x64x4, transpose: true").
        dense = mx.dequantize(weight, scales, biases, group_size, bits, mode=mode).astype(x.dtype)
        return x @ (dense.swapaxes(-1, -2) if transpose else dense)

    def gated_delta_decode(self, qkv: mx.array, a: mx.array, b: mx.array, conv_weight: mx.array,
                           conv_state: mx.array, A_log: mx.array, dt_bias: mx.array, state: mx.array,
                           heads: DeltaHeads) -> tuple[mx.array, mx.array, mx.array] | None:
        if state.dtype != mx.float32:
            return None
        mixed, conv_state = conv_step(qkv, conv_weight, conv_state)
        out, state = gated_delta_step(mixed, a, b, A_log, dt_bias, state, heads)
        return out, conv_state, state
