"""Nemotron-H's decoder: `backbone.embeddings`, one mixer per layer (`backbone.layers.N.mixer`, pre-norm, residual),
`backbone.norm_f` and an untied `lm_head`, under the published checkpoints' names (mlx-lm keeps them too).

Only the Mamba-2 and attention layers keep something per sequence: make_cache() returns one cache for each of
those, in layer order (a RecurrentCache or a KVCache), and the model hands each its own. The MLP and MoE layers
own none, so the engine's batching, chunked prefill, prefix-cache snapshots and KV budget see only the caches
that hold something.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import moe, sharding
from mlxd.models.base import AttentionCache, attention_mask, drop_unused_weights
from mlxd.models.cache import KVCache, LayerCache
from mlxd.models.nemotron_h.args import ATTENTION, MAMBA, MOE, ModelArgs
from mlxd.models.nemotron_h.layers import Block
from mlxd.models.projections import QKV, Projections, join_fused_weights
from mlxd.models.recurrent_cache import RecurrentCache

log = logging.getLogger(__name__)

LAYERS = "backbone.layers"
# Per-expert checkpoint names -> the stacked experts' (mlx-lm's SwitchMLP names).
EXPERT_PROJECTIONS = {"up_proj": "fc1", "down_proj": "fc2"}


class Backbone(nn.Module):
    def __init__(self, args: ModelArgs, fused: frozenset[str]):
        super().__init__()
        self.embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [Block(args, i, f"{LAYERS}.{i}.mixer" in fused) for i in range(args.num_hidden_layers)]
        self.norm_f = nn.RMSNorm(args.hidden_size, eps=args.layer_norm_epsilon)


class Model(nn.Module):
    # Its MoE layers route with GLM-4.7-Flash's router: the routing bias and the router's weight stay float32
    # whatever the model's dtype (loading/weights.py, float32_parameters), as glm4_moe_lite says why.
    FLOAT32_PARAMETERS = ("e_score_correction_bias", "gate.weight")

    def __init__(self, args: ModelArgs, fused: frozenset[str] = frozenset()):
        """`fused`: the groups of fusable_projections() to build as one matmul (the loader decides which)."""
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.fused = fused
        self.backbone = Backbone(args, fused)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        n = args.num_hidden_layers
        self._owners = [i for i in range(n) if args.kind(i) in (MAMBA, ATTENTION)]
        self._first_attention = next((self._owners.index(i) for i in self._owners if args.kind(i) == ATTENTION), None)

    @property
    def layers(self) -> list[Block]:
        return self.backbone.layers

    def __call__(self, inputs: mx.array, cache: Sequence[AttentionCache] | None = None, *,
                 input_embeddings: mx.array | None = None) -> mx.array:
        """`cache`: make_cache()'s list (or the batch's caches built from it), one per Mamba-2 or attention layer."""
        h = self.backbone.embeddings(inputs) if input_embeddings is None else input_embeddings
        caches: list[AttentionCache | None] = [None] * len(self.layers)
        if cache is not None:
            for owner, c in zip(self._owners, cache):
                caches[owner] = c
        # One causal mask for every attention layer (no windows), from the first one's cache.
        first = None if cache is None or self._first_attention is None else cache[self._first_attention]
        mask = None if self._first_attention is None else attention_mask(inputs.shape[1], first)
        for layer, layer_cache in zip(self.layers, caches):
            h = layer(h, mask, layer_cache)
        h = self.backbone.norm_f(h)
        if self.args.tie_word_embeddings:
            return self.backbone.embeddings.as_linear(h)
        return self.lm_head(h)

    def shard(self, group: mx.distributed.Group) -> None:
        for layer in self.layers:
            if layer.kind == MAMBA:
                layer.mixer.shard(group)
            elif layer.kind == ATTENTION:
                sharding.shard_attention(layer.mixer, group)
            else:
                sharding.shard_feed_forward(layer.mixer, group)

    def make_cache(self) -> list[LayerCache]:
        return [RecurrentCache() if self.args.kind(i) == MAMBA else KVCache() for i in self._owners]

    def fusable_projections(self) -> dict[str, Projections]:
        return {f"{LAYERS}.{i}.mixer": QKV for i in range(self.args.num_hidden_layers)
                if self.args.kind(i) == ATTENTION}

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Published names kept (`model.*`, transformers' names in memory, read as `backbone.*`); the
        multi-token-prediction head (`mtp.*`) left out; Mamba-2 tensors in llama.cpp's layout taken back
        (loading/gguf/nemotron_h.py); conv weights moved to MLX's [C, K, 1]; per-expert tensors stacked; the fused
        groups joined. Takes its own output too."""
        out, skipped = {}, 0
        for name, value in weights.items():
            if name.startswith("mtp."):
                skipped += 1
                continue
            if name.startswith("model."):
                name = "backbone." + name.removeprefix("model.")
            name, value = _mamba_layout(name, value)
            out[name] = value
        if skipped:
            log.info("skipping %d multi-token-prediction tensors (mtp.*)", skipped)
        for i in range(self.args.num_hidden_layers):
            if self.args.kind(i) == MOE:
                out = moe.stack_experts(out, f"{LAYERS}.{i}.mixer", self.args.n_routed_experts, EXPERT_PROJECTIONS)
        out = drop_unused_weights(out, self.args.tie_word_embeddings)
        return join_fused_weights(out, self.fusable_projections(), self.fused)


def _mamba_layout(name: str, value: mx.array) -> tuple[str, mx.array]:
    """A Mamba-2 tensor under our name and shape: conv weights [C, K, 1] from a checkpoint's [C, 1, K] or
    llama.cpp's [C, K]; llama.cpp's A = -exp(A_log) [H, 1] back to A_log; its [H, 1] D and its gated norm's
    [groups, I / groups] weight flat. Anything else as it is."""
    if name.endswith("conv1d.weight"):
        if value.ndim == 2:
            return name, value[:, :, None]
        return name, value if value.shape[-1] == 1 else value.moveaxis(2, 1)
    if name.endswith("mixer.A"):
        return name + "_log", mx.log(-value.astype(mx.float32)).reshape(-1).astype(value.dtype)
    if name.endswith(("mixer.D", "mixer.dt_bias", "mixer.norm.weight")) and value.ndim > 1:
        return name, value.reshape(-1)
    return name, value
