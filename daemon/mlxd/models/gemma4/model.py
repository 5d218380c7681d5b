"""Gemma 4's decoder as a text model: embeddings scaled by sqrt(hidden), per-layer embeddings (PLE) feeding every
layer, the layers, a final norm, the tied head and a final logit softcap.

KV sharing: the last `num_kv_shared_layers` layers compute no keys or values; each attends to those of an earlier
layer (TextArgs.kv_source), new ones included. Those layers own no cache: make_cache() returns one cache per layer
that computes keys and values, in layer order, and the model maps every layer to its owner's. So the engine's
batching, chunked prefill, prefix-cache snapshots and KV budget see only the caches that hold something.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import sharding
from mlxd.models.base import AttentionCache, drop_unused_weights, layer_masks
from mlxd.models.cache import LayerCache, make_layer_caches
from mlxd.models.gemma4.attention import KeysValues
from mlxd.models.gemma4.config import ModelArgs, TextArgs
from mlxd.models.gemma4.layers import DecoderLayer
from mlxd.models.projections import GATE_UP, QKV, Projections, join_fused_weights

logger = logging.getLogger(__name__)

# Checkpoint prefixes of the decoder: the published vision-language layout's, mlx-lm's conversion of it, then a
# text-only save's.
_DECODER_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
# The published checkpoints' multimodal parts, which a text model leaves out.
_TOWER_PREFIXES = ("model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio.")
LAYERS = "model.layers"


class Gemma4TextModel(nn.Module):
    def __init__(self, args: TextArgs, fused: frozenset[str]):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [DecoderLayer(args, i, frozenset(p.removeprefix(f"{LAYERS}.{i}.") for p in fused
                                                       if p.startswith(f"{LAYERS}.{i}.")))
                       for i in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        if args.hidden_size_per_layer_input:
            n, ple = args.num_hidden_layers, args.hidden_size_per_layer_input
            self.embed_tokens_per_layer = nn.Embedding(args.vocab_size_per_layer_input, n * ple)
            self.per_layer_model_projection = nn.Linear(args.hidden_size, n * ple, bias=False)
            self.per_layer_projection_norm = nn.RMSNorm(ple, eps=args.rms_norm_eps)


class Model(nn.Module):
    def __init__(self, args: ModelArgs, fused: frozenset[str] = frozenset()):
        """`fused`: the groups of fusable_projections() to build as one matmul (the loader decides which)."""
        super().__init__()
        self.args = args
        self.text = text = args.text
        self.model_type = args.model_type
        self.fused = fused
        n = text.num_hidden_layers
        self.model = Gemma4TextModel(text, fused)
        self._windows = [text.window(i) for i in range(n)]
        self._owners = [i for i in range(n) if not text.shares_kv(i)]
        # Each layer's index into make_cache()'s list: its own cache, or its kv source's.
        self._slot = [self._owners.index(text.kv_source(i)) for i in range(n)]
        self._stores = {text.kv_source(i) for i in range(n) if text.shares_kv(i)}

    @property
    def layers(self) -> list[DecoderLayer]:
        return self.model.layers

    def embed(self, inputs: mx.array) -> mx.array:
        """Embeddings times sqrt(hidden_size), the scale rounded to their dtype as transformers does;
        `input_embeddings` stand for exactly this."""
        h = self.model.embed_tokens(inputs)
        return h * mx.array(math.sqrt(self.text.hidden_size), dtype=h.dtype)

    def per_layer_inputs(self, inputs: mx.array, h: mx.array) -> mx.array:
        """[B, L, layers, ple]: the token's own per-layer embedding and a projection of the layer-0 input h (after
        its sqrt(hidden) scale), each normalized, averaged with weight 2^-1/2."""
        text, m = self.text, self.model
        shape = (*inputs.shape, text.num_hidden_layers, text.hidden_size_per_layer_input)
        own = m.embed_tokens_per_layer(inputs)
        own = (own * mx.array(math.sqrt(text.hidden_size_per_layer_input), dtype=own.dtype)).reshape(shape)
        context = m.per_layer_model_projection(h) * (text.hidden_size**-0.5)
        context = m.per_layer_projection_norm(context.reshape(shape))
        return (context + own) * (2.0**-0.5)

    def __call__(self, inputs: mx.array, cache: Sequence[AttentionCache] | None = None, *,
                 input_embeddings: mx.array | None = None) -> mx.array:
        """`cache`: make_cache()'s list (or the batch's caches built from it), one per layer that owns keys."""
        h = self.embed(inputs) if input_embeddings is None else input_embeddings
        per_layer = self.per_layer_inputs(inputs, h) if self.text.hidden_size_per_layer_input else None
        n = len(self.layers)
        caches: list[AttentionCache | None] = [None] * n if cache is None else [cache[s] for s in self._slot]
        # Every layer's tokens sit at the same positions; read them before any layer appends to its cache.
        offset = 0 if cache is None else cache[0].offset
        masks = layer_masks(inputs.shape[1], caches, self._windows)
        stored: dict[int, KeysValues] = {}
        for i, layer in enumerate(self.layers):
            source = self.text.kv_source(i)
            shared = stored[source] if source != i else None
            h, keys_values = layer(h, masks[i], caches[i] if shared is None else None, offset, shared,
                                   None if per_layer is None else per_layer[:, :, i, :])
            if i in self._stores:
                stored[i] = keys_values
        logits = self.model.embed_tokens.as_linear(self.model.norm(h))
        cap = self.text.final_logit_softcapping
        return logits if cap is None else mx.tanh(logits / cap) * cap

    def make_cache(self) -> list[LayerCache]:
        return make_layer_caches([self._windows[i] for i in self._owners])

    def shard(self, group: mx.distributed.Group) -> None:
        """Heads, MLP and expert features; a KV-shared layer reads its source layer's keys and values of this
        rank's heads (the same split); the per-layer-input branch and routers are replicated."""
        for layer in self.layers:
            sharding.shard_attention(layer.self_attn, group)
            sharding.shard_mlp(layer.mlp, group)
            if layer.has_moe:
                sharding.shard_moe(layer.moe, group)

    def fusable_projections(self) -> dict[str, Projections]:
        groups: dict[str, Projections] = {}
        for i in range(self.text.num_hidden_layers):
            path = f"{LAYERS}.{i}"
            if not (self.text.shares_kv(i) or self.text.keys_equal_values(i)):
                groups[f"{path}.self_attn"] = QKV
            groups[f"{path}.mlp"] = GATE_UP
        return groups

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        towers = [k for k in weights if k.startswith(_TOWER_PREFIXES)]
        if towers:
            logger.info("leaving out %d vision/audio tensors: mlxd serves Gemma 4 as a text model", len(towers))
        out: dict[str, mx.array] = {}
        for key, value in weights.items():
            if key in towers:
                continue
            for prefix in _DECODER_PREFIXES:
                if key.startswith(prefix):
                    key = "model." + key.removeprefix(prefix)
                    break
            out[key] = value
        out = drop_unused_weights(out, tie_word_embeddings=True)  # the head is always the embeddings
        for i in range(self.text.num_hidden_layers):
            out = _layer_weights(out, f"{LAYERS}.{i}", self.text.shares_kv(i))
        return join_fused_weights(out, self.fusable_projections(), self.fused)


def _layer_weights(weights: dict[str, mx.array], path: str, shares_kv: bool) -> dict[str, mx.array]:
    """One layer's checkpoint arrays under our names: the router and the experts' stacked `gate_up_proj` [E, 2I, H]
    (gate in the first I rows) and `down_proj` inside `moe`, and no key/value weights on a KV-shared layer (which
    transformers ignores too). Names that are ours already stay, so this may run on its own output."""
    out = dict(weights)
    if shares_kv:
        for name in ("k_proj", "v_proj", "k_norm", "v_norm"):
            for key in [k for k in out if k.startswith(f"{path}.self_attn.{name}.")]:
                del out[key]
    for key in [k for k in out if k.startswith(f"{path}.router.")]:
        out[f"{path}.moe.{key.removeprefix(path + '.')}"] = out.pop(key)
    for name in ("gate_up_proj", "down_proj"):
        stacked = out.pop(f"{path}.experts.{name}", None)
        if stacked is not None:
            out[f"{path}.moe.switch_mlp.{name}.weight"] = stacked
    # mlx-lm's conversion: the experts split into switch_glu.{gate,up,down}_proj, possibly quantized. Gate and up
    # join along their output rows, as in the published gate_up_proj (quantization groups run along the inputs,
    # so packed weights, scales and biases join the same way).
    glu = f"{path}.experts.switch_glu"
    for part in ("weight", "scales", "biases"):
        if f"{glu}.gate_proj.{part}" in out:
            out[f"{path}.moe.switch_mlp.gate_up_proj.{part}"] = mx.concatenate(
                [out.pop(f"{glu}.gate_proj.{part}"), out.pop(f"{glu}.up_proj.{part}")], axis=-2)
        if f"{glu}.down_proj.{part}" in out:
            out[f"{path}.moe.switch_mlp.down_proj.{part}"] = out.pop(f"{glu}.down_proj.{part}")
    return out
