"""GLM-4.7-Flash's decoder: pre-norm layers of latent attention and an MLP (dense in the first layers, routed
experts plus shared ones after), a final norm and an untied lm_head."""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import moe, sharding
from mlxd.models.base import AttentionCache, Mask, drop_unused_weights, layer_masks
from mlxd.models.cache import KVCache, LayerCache
from mlxd.models.glm4_moe_lite.args import ModelArgs
from mlxd.models.glm4_moe_lite.attention import DOWN_PROJECTIONS, LatentAttention
from mlxd.models.glm4_moe_lite.experts import SharedExpertMoe
from mlxd.models.glm4_moe_lite.latent_weights import kv_b_from_absorbed
from mlxd.models.projections import GATE_UP, GatedMLP, Projections, join_fused_weights

EXPERT_PROJECTIONS = {name: name for name in ("gate_proj", "up_proj", "down_proj")}


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer: int, fused: frozenset[str]):
        super().__init__()
        path = f"model.layers.{layer}"
        self.self_attn = LatentAttention(args, f"{path}.self_attn" in fused)
        self.mlp: nn.Module
        if args.sparse(layer):
            self.mlp = SharedExpertMoe(args, f"{path}.mlp.switch_mlp" in fused, f"{path}.mlp.shared_experts" in fused)
        else:
            self.mlp = GatedMLP(args.hidden_size, args.intermediate_size, "silu", fused=f"{path}.mlp" in fused)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Mask, cache: AttentionCache | None = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Glm4MoeLiteModel(nn.Module):
    def __init__(self, args: ModelArgs, fused: frozenset[str]):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers: list[nn.Module] = [DecoderLayer(args, i, fused) for i in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)


class Model(nn.Module):
    # Held in float32 whatever the model's dtype (loading/weights.py, float32_parameters), as transformers and
    # mlx-lm hold it: the routing bias decides between experts whose scores differ by less than a bfloat16 step.
    # The router's weight too: transformers computes the router in float32 from it (a bfloat16 copy widens
    # exactly), and held so it is not cast again in every layer of every step.
    FLOAT32_PARAMETERS = ("e_score_correction_bias", "gate.weight")

    def __init__(self, args: ModelArgs, fused: frozenset[str] = frozenset()):
        """`fused`: the groups of fusable_projections() to build as one matmul (the loader decides which)."""
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.fused = fused
        self.model = Glm4MoeLiteModel(args, fused)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    @property
    def layers(self) -> list[nn.Module]:
        return self.model.layers

    def __call__(self, inputs: mx.array, cache: Sequence[AttentionCache] | None = None, *,
                 input_embeddings: mx.array | None = None) -> mx.array:
        h = self.model.embed_tokens(inputs) if input_embeddings is None else input_embeddings
        caches: Sequence[AttentionCache | None] = cache if cache is not None else [None] * len(self.layers)
        masks = layer_masks(inputs.shape[1], caches, [None] * len(self.layers))
        for layer, c, mask in zip(self.layers, caches, masks):
            h = layer(h, mask, c)
        h = self.model.norm(h)
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def shard(self, group: mx.distributed.Group) -> None:
        """Heads of the queries and of kv_b_proj's expansion, MLP and expert features; the latent (and so the
        cache) is every head's, replicated."""
        for layer in self.layers:
            layer.self_attn.shard(group)
            sharding.shard_feed_forward(layer.mlp, group)

    def make_cache(self) -> list[LayerCache]:
        """One KVCache per layer whose single "head" holds the normalised latent as keys [.., kv_lora_rank] and
        the roped shared key part as values [.., qk_rope_head_dim] (attention.py), so the batch cache, chunked
        prefill, prefix-cache snapshots and the KV budget (kv_budget.KvLayout) see the latent's size."""
        return [KVCache() for _ in self.layers]

    def fusable_projections(self) -> dict[str, Projections]:
        groups: dict[str, Projections] = {}
        for i in range(self.args.num_hidden_layers):
            path = f"model.layers.{i}"
            if self.args.q_lora_rank is not None:
                groups[f"{path}.self_attn"] = DOWN_PROJECTIONS
            if self.args.sparse(i):
                groups[f"{path}.mlp.switch_mlp"] = GATE_UP
                groups[f"{path}.mlp.shared_experts"] = GATE_UP
            else:
                groups[f"{path}.mlp"] = GATE_UP
        return groups

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Drops the multi-token-prediction layers published checkpoints append (model.layers.{N}.*, N past
        num_hidden_layers: transformers ignores them), stacks the per-expert tensors, rebuilds kv_b_proj where
        an mlx-lm conversion split it (latent_weights.py) and joins the fused groups."""
        n_layers = self.args.num_hidden_layers
        weights = {k: v for k, v in weights.items() if not _extra_layer(k, n_layers)}
        for i in range(n_layers):
            weights = kv_b_from_absorbed(weights, f"model.layers.{i}.self_attn", self.args)
            if self.args.sparse(i):
                weights = moe.stack_experts(weights, f"model.layers.{i}.mlp", self.args.n_routed_experts,
                                            EXPERT_PROJECTIONS)
        weights = drop_unused_weights(weights, self.args.tie_word_embeddings)
        return join_fused_weights(weights, self.fusable_projections(), self.fused)


def _extra_layer(key: str, n_layers: int) -> bool:
    parts = key.split(".")
    return len(parts) > 2 and parts[:2] == ["model", "layers"] and parts[2].isdigit() and int(parts[2]) >= n_layers
