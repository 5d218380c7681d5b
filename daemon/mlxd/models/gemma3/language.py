"""The gemma3 text decoder of the VLM: image embeddings replace the image tokens' embeddings, and the tokens
of one image attend to each other in both directions (transformers' token_type_ids mask); the rest is causal
and the sliding layers keep their window.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import mlx.core as mx

from mlxd.models import gemma3_text
from mlxd.models.base import Mask, layer_masks
from mlxd.models.cache import RotatingKVCache

# (first position within the chunk, embeddings [tokens, hidden]) for each image whose span lies in the chunk.
ChunkImages = Sequence[tuple[int, mx.array]]


def _key_range(length: int, cache: Any) -> tuple[int, int]:
    """(absolute position of the chunk's first query, of the first key attention sees) for one layer's cache."""
    offset = 0 if cache is None else cache.offset
    if isinstance(cache, RotatingKVCache):
        return offset, offset - min(offset, cache.window)
    return offset, 0


def image_block_mask(length: int, cache: Any, base: Mask, images: ChunkImages) -> Mask:
    """`base` (the layer's causal or sliding mask) or'ed with "same image" pairs inside this chunk.

    Chunked prefill never splits an image, so every pair of one image's tokens lies inside the chunk.
    """
    if not images:
        return base
    offset, key_start = _key_range(length, cache)
    q_pos = mx.arange(offset, offset + length)
    k_pos = mx.arange(key_start, offset + length)
    if base is None:
        base = mx.ones((length, k_pos.size), dtype=mx.bool_)
    elif isinstance(base, str):
        base = k_pos[None, :] <= q_pos[:, None]
    group = mx.full((length,), -1, dtype=mx.int32)
    for i, (start, embeddings) in enumerate(images):
        group[start : start + embeddings.shape[0]] = i
    key_group = mx.concatenate([mx.full((offset - key_start,), -1, dtype=mx.int32), group])
    same_image = (group[:, None] == key_group[None, :]) & (group[:, None] >= 0)
    return base | same_image


class LanguageModel(gemma3_text.Model):
    def __call__(self, inputs: mx.array, cache: list | None = None, images: ChunkImages = ()) -> mx.array:
        h = self.model.embed_tokens(inputs)
        h = h * mx.array(math.sqrt(self.args.hidden_size), dtype=h.dtype)
        for start, embeddings in images:
            # Image features go in unscaled, as transformers' masked_scatter puts them.
            h[:, start : start + embeddings.shape[0]] = embeddings.astype(h.dtype)
        cache = cache if cache is not None else [None] * len(self.layers)
        length = inputs.shape[1]
        base = layer_masks(length, cache, self._windows)
        masks: dict[int | None, Mask] = {}
        for window, c, mask in zip(self._windows, cache, base):
            if window not in masks:
                masks[window] = image_block_mask(length, c, mask, images)
        for layer, c, window in zip(self.layers, cache, self._windows):
            h = layer(h, masks[window], c)
        h = self.model.norm(h)
        logits = self.model.embed_tokens.as_linear(h) if self.args.tie_word_embeddings else self.lm_head(h)
        cap = self.args.final_logit_softcapping
        return logits if cap is None else mx.tanh(logits / cap) * cap
