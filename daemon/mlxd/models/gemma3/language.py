"""How the VLM's images reach the gemma3 text decoder: their embeddings replace the image tokens' embeddings,
and the tokens of one image attend to each other in both directions (transformers' token_type_ids mask); the
rest stays causal and the sliding layers keep their window.
"""

from __future__ import annotations

import mlx.core as mx

from mlxd.models.base import AttentionCache, Mask
from mlxd.models.cache import RotatingKVCache
from mlxd.models.protocol import ChunkImages


def splice_images(h: mx.array, images: ChunkImages) -> mx.array:
    """The decoder input `h` [B, L, hidden] with each image's embeddings in place of its tokens' rows.

    Image features go in unscaled, after the text embeddings' sqrt(hidden) scale, as transformers'
    masked_scatter puts them (the parity fixture in tests/fixtures/parity/gemma3 depends on it).
    """
    pieces, end = [], 0
    for start, embeddings in images:
        pieces += [h[:, end:start], mx.broadcast_to(embeddings.astype(h.dtype), (h.shape[0], *embeddings.shape))]
        end = start + embeddings.shape[0]
    return mx.concatenate([*pieces, h[:, end:]], axis=1)


def _key_range(length: int, cache: AttentionCache | None) -> tuple[int, int]:
    """(absolute position of the chunk's first query, of the first key attention sees) for one layer's cache."""
    offset = 0 if cache is None else cache.offset
    if not isinstance(offset, int):  # per-row positions: a decode batch's cache, which images never reach
        raise TypeError("images reach the model only in a prefill, whose cache holds one sequence")
    if isinstance(cache, RotatingKVCache):
        return offset, offset - min(offset, cache.window)
    return offset, 0


def image_block_mask(length: int, cache: AttentionCache | None, base: Mask, images: ChunkImages) -> Mask:
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
