"""Nemotron-H's Mamba-2 mixer (transformers' NemotronHMamba2Mixer; HYBRID_NOTES.md §6): in_proj gives the gate z,
the conv input xBC and the step sizes; a causal depthwise conv (with bias) and SiLU over xBC; the selective scan
(models/ssd.py) with a D skip per head; the output gated by silu(z) and then RMS-normalized per group; out_proj.

Its cache (models/recurrent_cache.py) holds the last K-1 conv inputs [B, K-1, conv_dim] and the scan's state
[B, H, P, N]."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import ops, sharding
from mlxd.models.gated_delta import causal_conv
from mlxd.models.nemotron_h.args import ModelArgs
from mlxd.models.recurrent_cache import RecurrentState
from mlxd.models.ssd import scan, scan_steps


class GroupGatedNorm(nn.Module):
    """y = x * silu(z), RMS-normalized over each of `groups` equal groups of channels, times w: the gate applies
    before the norm (transformers' NemotronHRMSNormGated; Qwen3.5's gated norm gates after)."""

    def __init__(self, dims: int, groups: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.groups, self.eps = groups, eps

    def __call__(self, x: mx.array, z: mx.array) -> mx.array:
        """x float32 (the scan's output), z in the model's dtype, which the result takes."""
        gated = x * ops.activation(z.astype(mx.float32), "silu")
        grouped = gated.reshape(*gated.shape[:-1], self.groups, -1)
        normed = mx.fast.rms_norm(grouped, None, self.eps).reshape(gated.shape)
        return self.weight * normed.astype(z.dtype)


class Mamba2Mixer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.heads, self.head_dim = args.mamba_num_heads, args.mamba_head_dim
        self.groups, self.n_state = args.n_groups, args.ssm_state_size
        self.chunk = args.chunk_size
        inner, conv_dim = args.mamba_intermediate, args.conv_dim
        self._split = [inner, inner + conv_dim]
        self.in_proj = nn.Linear(args.hidden_size, inner + conv_dim + self.heads, bias=args.mamba_proj_bias)
        # weight [C, K, 1] (MLX's layout); checkpoints store [C, 1, K] and sanitize moves the axes.
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, args.conv_kernel, groups=conv_dim, bias=args.use_conv_bias)
        self.dt_bias = mx.ones((self.heads,))
        self.A_log = mx.zeros((self.heads,))
        self.D = mx.ones((self.heads,))
        self.norm = GroupGatedNorm(inner, args.n_groups, args.layer_norm_epsilon)
        self.out_proj = nn.Linear(inner, args.hidden_size, bias=args.mamba_proj_bias)
        # Step sizes are clamped to the config's limits in prefill and decode alike (mlx-lm and mamba_ssm's kernels
        # do; transformers' torch prefill clamps at time_step_min instead and its decode not at all).
        self.dt_min, self.dt_max = (float(v) for v in args.time_step_limit)

    def shard(self, group: mx.distributed.Group) -> None:
        """This rank's heads and B/C groups (head h reads group h // (heads / groups), so a rank's heads read its
        own groups): their slices of in_proj's [z | x | B | C | dt], of the conv over [x | B | C], of the
        per-head parameters and of the gated norm (per group); the states then hold only these heads."""
        inner, group_width = self.heads * self.head_dim, self.groups * self.n_state
        sharding.shard_columns(self.in_proj, group, (inner, inner, group_width, group_width, self.heads))
        sharding.shard_channels(self.conv1d, ("weight", "bias"), group, (inner, group_width, group_width))
        sharding.shard_channels(self, ("dt_bias", "A_log", "D"), group)
        sharding.shard_channels(self.norm, ("weight",), group)
        sharding.shard_rows(self.out_proj, group)
        self.heads = sharding.per_rank(self.heads, group, "Mamba-2 heads")
        self.groups = self.norm.groups = sharding.per_rank(self.groups, group, "Mamba-2 groups")
        inner, conv_dim = self.heads * self.head_dim, self.conv1d.weight.shape[0]
        self._split = [inner, inner + conv_dim]

    def __call__(self, x: mx.array, cache: RecurrentState | None = None) -> mx.array:
        B, L, _ = x.shape
        z, xBC, dt = mx.split(self.in_proj(x), self._split, axis=-1)
        conv_bias = self.conv1d.bias if "bias" in self.conv1d else None
        # A verify step keeps the states after each of its tokens, for the cache to roll back to the accepted ones.
        stepwise = cache is not None and cache.stepwise(L)
        mixed, conv_state = causal_conv(xBC, self.conv1d.weight[:, :, 0], None if cache is None else cache.conv_state,
                                        conv_bias, stepwise)
        inner, group_width = self.heads * self.head_dim, self.groups * self.n_state
        xs, Bs, Cs = mx.split(mixed, [inner, inner + group_width], axis=-1)
        xs = xs.reshape(B, L, self.heads, self.head_dim)
        step = mx.logaddexp(dt.astype(mx.float32) + self.dt_bias.astype(mx.float32), 0.0)  # softplus
        step = mx.clip(step, self.dt_min, self.dt_max)
        A = -mx.exp(self.A_log.astype(mx.float32))
        Bs, Cs = Bs.reshape(B, L, self.groups, -1), Cs.reshape(B, L, self.groups, -1)
        held = None if cache is None else cache.recurrent_state
        if cache is not None and stepwise:
            y, states = scan_steps(xs, step, A, Bs, Cs, held)
            cache.advance_steps(conv_state, states)
        else:
            y, state = scan(xs, step, A, Bs, Cs, held, self.chunk)
            if cache is not None:
                cache.advance(conv_state, state, L)
        y = y + xs.astype(mx.float32) * self.D.astype(mx.float32)[:, None]
        return self.out_proj(self.norm(y.reshape(B, L, -1), z))
