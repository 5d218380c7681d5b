"""Multi-head latent attention (DeepSeek-V2's MLA, as GLM-4.7-Flash has it), caching the compressed latent.

Per token, `kv_a_proj_with_mqa` gives a latent c (kv_lora_rank, RMS-normalised) and one rope key part k_r
(qk_rope_head_dim) shared by every head; `kv_b_proj` expands c into each head's key part k_n and value v. Scores
are q_n·k_n + q_r·k_r. The cache holds only c and k_r (a KVCache with one "head": keys = c, values = k_r), so a
token takes kv_lora_rank + qk_rope_head_dim values per layer instead of heads × (qk_head_dim + v_head_dim).

Attention from the cached latent, two exact ways (the same sums, in another order):
- several queries (prefill, a chunk): expand every cached c through kv_b_proj into per-head keys and values and
  run ordinary attention (ops.attention: the NumPy kernels on the CPU, the fused one elsewhere). That is the
  reference's own order, and a chunk's queries share the expansion's cost.
- one query per row (decode): absorb kv_b_proj into the query and the output instead: q_n·(W_k c) = (W_kᵀ q_n)·c
  and Σ p v = W_v (Σ p c). Each step then reads the cache once (latent width) instead of expanding all of it
  again, which would cost heads × (nope + v) × kv_lora_rank per cached token per step.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import ops, sharding
from mlxd.models.base import AttentionCache, Mask
from mlxd.models.glm4_moe_lite.args import ModelArgs
from mlxd.models.projections import Projections, add_linears
from mlxd.models.rope import make_rope

# transformers builds q_a_layernorm and kv_a_layernorm without the config's eps (Glm4MoeLiteRMSNorm's default);
# rms_norm_eps is for the decoder's norms only. mlx-lm uses rms_norm_eps for both (4e-5 off on the fixture).
LORA_NORM_EPS = 1e-6

# A decode batch's query absorbed (float kv_b_proj) as one product per head with the batch's rows as its rows,
# [H, B, nope] @ [H, nope, latent], instead of [B, H, 1, nope] @ [H, nope, latent]. The same sums. Why: MLX 0.32's CUDA
# matmul takes the latter as two batch dimensions of which the weight's is broadcast, so cuBLAS runs it batched per
# row (run_batched: a GEMM per row, or a pointer-setting kernel and a pointer-array GEMM), and copies the query's
# strided slice first; py-spy put 7.2 % of a 16-row GLM step's host time in such batched GEMMs (~28 us each, session
# 32). Heads first it is one strided-batched GEMM. (The output's product, [H, v, latent] transposed, is already
# one gemv: left as it is; heads first it lost 45 -> 53 us of device time on an H100, session 31.) Off: the 16-row
# step on an H200 (batch_step_profile --variant, session 33, MoE blocks not compiled) took 35.4 / 38.4 / 29.5 ms
# with it against 36.3 / 40.5 / 35.9 without, round by round: faster each time, the medians 2.5 % apart, within the
# machine's spread. To be compared again with the compiled MoE blocks on.
QUERY_HEADS_FIRST = False

# The two down-projections of the hidden state (query and latent) read the same input: one matmul when fused.
DOWN_PROJECTIONS = Projections("qkv_a_proj", ("q_a_proj", "kv_a_proj_with_mqa"))


class LatentAttention(nn.Module):
    def __init__(self, args: ModelArgs, fused: bool = False):
        """`fused`: q_a_proj and kv_a_proj_with_mqa held as one layer (DOWN_PROJECTIONS; low-rank q only)."""
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.nope, self.rope_dims, self.v_dims = args.qk_nope_head_dim, args.qk_rope_head_dim, args.v_head_dim
        self.latent_dims = args.kv_lora_rank
        dim, q_width = args.hidden_size, self.n_heads * args.qk_head_dim
        self.q_lora_rank = args.q_lora_rank
        self.fused = fused and args.q_lora_rank is not None
        kv_a_width = self.latent_dims + self.rope_dims
        if args.q_lora_rank is not None:
            add_linears(self, DOWN_PROJECTIONS, dim, (args.q_lora_rank, kv_a_width), args.attention_bias,
                        self.fused)
            self.q_a_layernorm = nn.RMSNorm(args.q_lora_rank, eps=LORA_NORM_EPS)
            self.q_b_proj = nn.Linear(args.q_lora_rank, q_width, bias=False)
        else:
            self.q_proj = nn.Linear(dim, q_width, bias=False)
            self.kv_a_proj_with_mqa = nn.Linear(dim, kv_a_width, bias=args.attention_bias)
        self.kv_a_layernorm = nn.RMSNorm(self.latent_dims, eps=LORA_NORM_EPS)
        self.kv_b_proj = nn.Linear(self.latent_dims, self.n_heads * (self.nope + self.v_dims), bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.v_dims, dim, bias=args.attention_bias)
        self.scale = args.attention_scale
        self.rope = make_rope(self.rope_dims, args.rope_parameters, traditional=args.rope_interleave)

    def shard(self, group: mx.distributed.Group) -> None:
        """This rank's heads: its rows of the query projection and of kv_b_proj, its columns of o_proj. The
        down-projections (q_a, kv_a) and so the latent stay whole on every rank."""
        sharding.shard_columns(self.q_b_proj if self.q_lora_rank is not None else self.q_proj, group)
        sharding.shard_columns(self.kv_b_proj, group)
        sharding.shard_rows(self.o_proj, group)
        self.n_heads = sharding.per_rank(self.n_heads, group, "attention heads")

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None = None) -> mx.array:
        B, L, _ = x.shape
        q, compressed = self._down_projections(x)
        q = q.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        q_nope, q_rot = q[..., : self.nope], q[..., self.nope :]
        latent = self.kv_a_layernorm(compressed[..., : self.latent_dims])[:, None]  # [B, 1, L, kv_lora_rank]
        k_rot = compressed[..., self.latent_dims :][:, None]                         # [B, 1, L, rope dims]
        offset = 0 if cache is None else cache.offset
        q_rot, k_rot = self.rope(q_rot, offset), self.rope(k_rot, offset)
        if cache is not None:
            latent, k_rot = cache.update_and_fetch(latent, k_rot)
        if L == 1:
            out = self._absorbed(q_nope, q_rot, latent, k_rot, mask)
        else:
            out = self._expanded(q_nope, q_rot, latent, k_rot, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))

    def _down_projections(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """The queries [B, L, heads * qk_head_dim] and the compressed kv [B, L, kv_lora_rank + rope dims]."""
        if self.q_lora_rank is None:
            return self.q_proj(x), self.kv_a_proj_with_mqa(x)
        if self.fused:
            q_a, compressed = mx.split(self.qkv_a_proj(x), [self.q_lora_rank], axis=-1)
        else:
            q_a, compressed = self.q_a_proj(x), self.kv_a_proj_with_mqa(x)
        return self.q_b_proj(self.q_a_layernorm(q_a)), compressed

    def _expanded(self, q_nope: mx.array, q_rot: mx.array, latent: mx.array, k_rot: mx.array,
                  mask: Mask) -> mx.array:
        """Attention with per-head keys and values expanded from the latents [B, 1, T, ·]: [B, heads, L, v]."""
        B, _, T, _ = latent.shape
        kv = self.kv_b_proj(latent[:, 0]).reshape(B, T, self.n_heads, -1).transpose(0, 2, 1, 3)
        keys = mx.concatenate(
            [kv[..., : self.nope], mx.broadcast_to(k_rot, (B, self.n_heads, T, self.rope_dims))], axis=-1)
        queries = mx.concatenate([q_nope, q_rot], axis=-1)
        return ops.attention(queries, keys, kv[..., self.nope :], self.scale, mask)

    def _absorbed(self, q_nope: mx.array, q_rot: mx.array, latent: mx.array, k_rot: mx.array,
                  mask: Mask) -> mx.array:
        """One query per row against the latents [B, 1, T, ·], kv_b_proj folded into the query and the output:
        [B, heads, 1, v]. `mask`: None, or one per row that broadcasts against [B, 1, 1, T] (a decode batch's,
        boolean or additive)."""
        q_latent = self._up_projection(q_nope, value=False)  # [B, H, 1, kv_lora_rank]
        mixed = ops.latent_attention(q_latent, q_rot, latent, k_rot, self.scale, mask)  # [B, H, 1, kv_lora_rank]
        return self._up_projection(mixed, value=True)

    def _up_projection(self, x: mx.array, value: bool) -> mx.array:
        """Per head h, x [B, H, L, ·] through head h's part of kv_b_proj: its key rows transposed (nope ->
        latent) for a query, its value rows (latent -> v) for an output. Quantized weights stay quantized."""
        rows = slice(self.nope, None) if value else slice(None, self.nope)
        layer = self.kv_b_proj

        def per_head(a: mx.array) -> mx.array:
            return a.reshape(self.n_heads, self.nope + self.v_dims, -1)[:, rows]

        if isinstance(layer, nn.QuantizedLinear):
            biases = layer.get("biases")
            return ops.quantized_matmul(x, per_head(layer.weight), per_head(layer.scales),
                                        None if biases is None else per_head(biases), value, layer.group_size,
                                        layer.bits, layer.mode)
        weight = per_head(layer.weight)  # [H, rows, kv_lora_rank]
        if value:
            return x @ weight.swapaxes(-1, -2)
        if QUERY_HEADS_FIRST and x.shape[2] == 1 and x.shape[0] > 1:
            return (x[:, :, 0].swapaxes(0, 1) @ weight).swapaxes(0, 1)[:, :, None]
        return x @ weight
